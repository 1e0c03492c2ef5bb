"""An aggregation party's process: CrypTen over TCP, one round at a time.

Each party (rank 0 = the server's party, ranks 1..h = independent helpers) runs in its own
process — CrypTen and NVFlare both use torch.distributed's default process group — and the
dealer (CrypTen's trusted third party for Beaver triples, rank h+1) in another. They meet
over TCP (``tcp://HOST:PORT``, gloo). A party takes its round tasks from its controller over
a pipe; per round it

1. opens the shares encrypted to it (a site whose share does not open is dropped);
2. agrees with the other parties on the sites every party could open (all-gather of flags);
3. draws the sketch seed jointly (each party's 32 fresh bytes, hashed with the round and the
   share hashes: no site can know it when it shares);
4. checks every site's norm bound under MPC (:mod:`.bound`), revealing pass/fail only;
5. sums ``weight * share`` over passing sites locally and reveals the sum to rank 0 only.

With ``transcript`` set, everything the party receives — its decrypted shares and every
tensor CrypTen delivers to it — is saved per round (``.npz``) for the leak tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import traceback
from pathlib import Path

import numpy as np


def _setup(rank: int, parties: int, address: str) -> object:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(parties), "RENDEZVOUS": address,
                       "DISTRIBUTED_BACKEND": "gloo", "OMP_NUM_THREADS": "1"})  # fmt: skip
    import torch
    from pharmafl.sites.crypten_compat import load_crypten

    torch.set_num_threads(1)
    crypten = load_crypten()
    crypten.cfg.mpc.provider = "TTP"
    return crypten


class Transcript:
    """What a party received, per round (tests only)."""

    def __init__(self, path: Path, name: str):
        self.path, self.name, self.items, self.round = Path(path), name, {}, 0

    def add(self, label: str, value) -> None:
        import torch

        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, torch.Tensor):
                self.items[f"{len(self.items):05d}:{label}"] = v.detach().cpu().numpy().copy()

    def flush(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        np.savez(self.path / f"{self.name}-round{self.round:04d}.npz", **self.items)
        self.items = {}


def _record_communication(transcript: Transcript) -> None:
    from crypten.communicator.distributed_communicator import (
        DistributedCommunicator as DC,
    )

    for name in ("all_reduce", "reduce", "broadcast", "all_gather", "gather", "recv", "scatter"):
        original = getattr(DC, name)

        def wrapped(self, *args, _original=original, _name=name, **kwargs):
            out = _original(self, *args, **kwargs)
            if out is not None:
                transcript.add(f"comm.{_name}", out)
            return out

        setattr(DC, name, wrapped)


def dealer_main(parties: int, address: str, transcript_dir: str | None) -> None:
    """CrypTen's TTP: generates correlated randomness; sees only the shapes it is asked for."""
    crypten = _setup(parties, parties, address)
    from crypten.mpc.provider.ttp_provider import TTPServer

    if transcript_dir:
        from crypten.communicator.distributed_communicator import (
            DistributedCommunicator as DC,
        )

        log = Path(transcript_dir) / "dealer-requests.txt"
        log.parent.mkdir(parents=True, exist_ok=True)
        original = DC.recv_obj

        def recv_obj(self, *args, **kwargs):
            obj = original(self, *args, **kwargs)
            with log.open("a") as f:  # a request: a function name and shapes (torch.Size -> list)
                f.write(json.dumps(obj, default=list) + "\n")
            return obj

        DC.recv_obj = recv_obj
    del crypten
    TTPServer()


def party_main(rank: int, parties: int, address: str, key_pem: bytes, passphrase: str | None, conn,
               transcript_dir: str | None) -> None:  # fmt: skip
    """Serve round tasks from ``conn`` until it sends ``None``."""
    try:
        crypten = _setup(rank, parties, address)
        from pharmafl.sites.secret_sharing import SERVER, PartyKey

        name = SERVER if rank == 0 else f"helper{rank}"
        key = PartyKey.from_pem(name, key_pem, passphrase)
        transcript = Transcript(Path(transcript_dir), name) if transcript_dir else None
        if transcript is not None:
            _record_communication(transcript)
        crypten.init()
        conn.send({"ready": name, "fingerprint": key.fingerprint})
    except Exception as exc:  # noqa: BLE001 - reported to the controller, which raises it
        conn.send({"error": f"party {rank} failed to start: {type(exc).__name__}: {exc}",
                   "trace": traceback.format_exc()})  # fmt: skip
        return
    try:
        while (task := conn.recv()) is not None:
            try:
                conn.send(_round(crypten, key, rank, task, transcript))
            except Exception as exc:
                conn.send({"error": f"{key.name}: round {task.get('round')}: {type(exc).__name__}: {exc}",
                           "trace": traceback.format_exc()})  # fmt: skip
                raise
    finally:
        crypten.uninit()


def _round(crypten, key, rank: int, task: dict, transcript: Transcript | None) -> dict:
    import torch
    from pharmafl.pipeline.secure_agg.bound import check_sketches, sketch, sketch_plan
    from pharmafl.sites.secret_sharing import (
        PRECISION_BITS,
        Envelope,
        ShareError,
        open_share,
    )

    comm = crypten.communicator.get()
    t0 = time.perf_counter()
    length, sites = int(task["length"]), list(task["sites"])
    if transcript is not None:
        transcript.round = int(task["round"])
    shares, unopened = {}, {}
    for site in sites:
        header, blob = task["envelopes"][site]
        try:
            shares[site] = open_share(Envelope(header, {key.name: blob}), key, length,
                                      context=task["context"], round=int(task["round"]))  # fmt: skip
        except ShareError as exc:
            unopened[site] = str(exc)
    if transcript is not None:
        for site, s in shares.items():
            transcript.add(f"share.{site}", torch.from_numpy(s))
    # 2. the sites every party opened
    mine = torch.tensor([site in shares for site in sites], dtype=torch.int64)
    agreed = torch.stack(comm.all_gather(mine)).min(dim=0).values.bool().tolist()
    usable = [s for s, ok in zip(sites, agreed) if ok]
    # 3. the joint sketch seed
    fresh = torch.from_numpy(np.frombuffer(os.urandom(32), dtype=np.int64).copy())
    parts = b"".join(t.numpy().tobytes() for t in comm.all_gather(fresh))
    digest = hashlib.sha256(parts + str(task["round"]).encode() + "".join(task["share_hashes"][s] for s in usable).encode())
    seed = digest.digest()
    t1 = time.perf_counter()
    passed: dict[str, bool] = {}
    if usable:
        plan = sketch_plan(seed, length, task["sketches"], task["buckets"])
        stacked = torch.stack([sketch(torch.from_numpy(shares[s]), plan, task["buckets"]) for s in usable])
        bits = check_sketches(crypten, stacked, task["max_norm"], task["slack"])
        passed = {s: bool(b) for s, b in zip(usable, bits.tolist())}
    t2 = time.perf_counter()
    accepted = [s for s in usable if passed[s]]
    total = None
    if accepted:
        acc = np.zeros(length, dtype=np.int64)
        with np.errstate(over="ignore"):
            for s in accepted:
                acc += np.int64(task["weights"][s]) * shares[s]
        revealed = crypten.mpc.MPCTensor.from_shares(torch.from_numpy(acc), precision=PRECISION_BITS).reveal(dst=0)
        if rank == 0:
            from pharmafl.sites.secret_sharing import decode_fixed

            total = decode_fixed(revealed.numpy())
    if transcript is not None:
        transcript.flush()
    t3 = time.perf_counter()
    return {"round": task["round"], "party": key.name, "unopened": unopened, "usable": usable, "passed": passed,
            "sum": total, "sketch_seed": seed.hex(),
            "seconds": {"open": t1 - t0, "bound_check": t2 - t1, "sum": t3 - t2}}  # fmt: skip
