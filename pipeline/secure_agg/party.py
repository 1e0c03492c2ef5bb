"""An aggregation party's MPC worker: CrypTen over the parties' TLS mesh, one run at a time.

A party service (:mod:`.service`) starts one worker per registered run — CrypTen keeps
process-global state — and, at the dealer's party, a second one running CrypTen's trusted
third party (rank ``N``). Workers meet over :mod:`.mesh` (TLS 1.3, each peer's certificate
pinned from the consortium's party cards; no gloo, no plaintext). The service has already
checked and opened the shares; per round the worker

1. **agrees** with the other parties on the round: every party's (accepted?, round, hash
   of the relayed sites and their signed header hashes) must be equal, else all abort —
   a party that refused the round (say, a second request for it) stops the others too;
2. agrees on the sites every party could open (all-gather of flags);
3. draws the sketch seed jointly (each party's 32 fresh bytes, hashed with the round and the
   sites' header hashes: no site can know it when it shares);
4. checks every site's norm bound under MPC (:mod:`.bound`), revealing pass/fail only;
5. only if at least ``min_sites`` sites passed, sums ``weight * share`` over them locally
   and reveals the sum to rank 0 (the server's party) only.

With a transcript directory (tests) everything a party receives — its shares and every
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


def _crypten():
    os.environ["OMP_NUM_THREADS"] = "1"
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


def _record_communication(comm, transcript: Transcript) -> None:
    for name in ("all_reduce", "reduce", "broadcast", "all_gather", "gather", "recv", "scatter"):
        original = getattr(comm, name)

        def wrapped(*args, _original=original, _name=name, **kwargs):
            out = _original(*args, **kwargs)
            if out is not None:
                transcript.add(f"comm.{_name}", out)
            return out

        setattr(comm, name, wrapped)


def _log_requests(comm, log: Path) -> None:
    """Tests: the dealer writes each request it receives (a function name and shapes)."""
    original = comm.recv_obj

    def recv_obj(*args, **kwargs):
        obj = original(*args, **kwargs)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as f:
            f.write(json.dumps(obj, default=list) + "\n")
        return obj

    comm.recv_obj = recv_obj


def worker_main(
    rank: int,
    parties: int,
    host: str,
    identity: tuple[bytes, bytes],
    peer_certs: dict,
    conn,
    transcript_dir: str | None,
    name: str,
) -> None:
    """Bind, report the mesh port, join the mesh when told, then serve rounds (or deal)."""
    from pharmafl.pipeline.secure_agg import mesh
    from pharmafl.pipeline.secure_agg.crypten_link import install, tls_communicator

    dealer = rank == parties
    try:
        crypten = _crypten()
        listener = mesh.bind_listener(host)
        conn.send({"port": listener.getsockname()[1]})
        start = conn.recv()
        if start is None:
            return
        addresses = {int(r): (h, int(p)) for r, (h, p) in start["addresses"].items()}
        link = mesh.Mesh.connect(
            rank,
            addresses,
            listener,
            identity[0],
            identity[1],
            {int(r): c for r, c in peer_certs.items() if int(r) != rank},
            timeout=float(start["timeout"]),
        )
        comm = tls_communicator(crypten, link)
        transcript = Transcript(Path(transcript_dir), name) if transcript_dir and not dealer else None
        if transcript is not None:
            _record_communication(comm, transcript)
        install(crypten, comm)
        if dealer:
            from crypten.mpc.provider.ttp_provider import TTPServer

            if transcript_dir:
                _log_requests(comm, Path(transcript_dir) / "dealer-requests.txt")
            conn.send({"ready": name, "dealer": True})
            TTPServer()  # serves the parties' requests (only CrypTen's generators) until rank 0 terminates it
            return
        crypten.init()
        conn.send({"ready": name})
    except Exception as exc:  # noqa: BLE001 - reported to the service, which refuses the run
        conn.send(
            {
                "error": f"{name} (rank {rank}) failed to join the parties: {type(exc).__name__}: {exc}",
                "trace": traceback.format_exc(),
            }
        )
        return
    try:
        while (task := conn.recv()) is not None:
            try:
                conn.send(_round(crypten, comm, rank, task, transcript))
            except Exception as exc:
                conn.send(
                    {
                        "error": f"{name}: round {task.get('round')}: {type(exc).__name__}: {exc}",
                        "trace": traceback.format_exc(),
                    }
                )
                raise
    finally:
        try:
            crypten.uninit()
        except Exception:  # noqa: BLE001 - a peer already gone: nothing left to shut down
            pass


def _digest(round: int, sites: list[str], headers: dict[str, str]) -> list[int]:
    text = json.dumps([round, sites, [headers.get(s, "") for s in sites]]).encode()
    return list(np.frombuffer(hashlib.sha256(text).digest(), dtype="<i8"))


def _round(crypten, comm, rank: int, task: dict, transcript: Transcript | None) -> dict:
    import torch

    from pharmafl.pipeline.secure_agg.bound import check_sketches, sketch, sketch_plan
    from pharmafl.sites.secret_sharing import PRECISION_BITS, decode_fixed

    t0 = time.perf_counter()
    length, sites, r = int(task["length"]), list(task["sites"]), int(task["round"])
    shares, weights = task["shares"], task["weights"]
    if transcript is not None:
        transcript.round = r
        for site, s in shares.items():
            transcript.add(f"share.{site}", torch.from_numpy(s))
    # 1. the same round, the same sites and headers, accepted by every party
    mine = torch.tensor([int(bool(task["accepted"])), r, *_digest(r, sites, task["headers"])], dtype=torch.int64)
    views = torch.stack(comm.all_gather(mine))
    if not bool((views == views[0]).all()) or not bool(views[:, 0].all()):
        refused = [i for i in range(len(views)) if not views[i, 0]]
        why = (
            f"parties of rank {refused} refused round {r}"
            if refused
            else f"the parties were given different requests for round {r} (round, sites or headers differ)"
        )
        return {
            "round": r,
            "aborted": why,
            "usable": [],
            "passed": {},
            "revealed": False,
            "sum": None,
            "sketch_seed": None,
            "seconds": {"open": 0.0, "bound_check": 0.0, "sum": 0.0},
        }
    # 2. the sites every party opened
    opened = torch.tensor([site in shares for site in sites], dtype=torch.int64)
    agreed = torch.stack(comm.all_gather(opened)).min(dim=0).values.bool().tolist() if sites else []
    usable = [s for s, ok in zip(sites, agreed) if ok]
    # 3. the joint sketch seed
    fresh = torch.from_numpy(np.frombuffer(os.urandom(32), dtype=np.int64).copy())
    parts = b"".join(t.numpy().tobytes() for t in comm.all_gather(fresh))
    seed = hashlib.sha256(parts + str(r).encode() + "".join(task["headers"][s] for s in usable).encode()).digest()
    t1 = time.perf_counter()
    passed: dict[str, bool] = {}
    if usable:
        plan = sketch_plan(seed, length, task["sketches"], task["buckets"])
        stacked = torch.stack([sketch(torch.from_numpy(shares[s]), plan, task["buckets"]) for s in usable])
        bits = check_sketches(crypten, stacked, task["max_norm"], task["slack"])
        passed = {s: bool(b) for s, b in zip(usable, bits.tolist())}
    t2 = time.perf_counter()
    accepted = [s for s in usable if passed[s]]
    total, revealed = None, len(accepted) >= int(task["min_sites"])
    if revealed:  # every party knows the bits, so all take this branch together
        acc = np.zeros(length, dtype=np.int64)
        with np.errstate(over="ignore"):
            for s in accepted:
                acc += np.int64(weights[s]) * shares[s]
        out = crypten.mpc.MPCTensor.from_shares(torch.from_numpy(acc), precision=PRECISION_BITS).reveal(dst=0)
        if rank == 0:
            total = decode_fixed(out.numpy())
    if transcript is not None:
        transcript.flush()
    t3 = time.perf_counter()
    return {
        "round": r,
        "aborted": None,
        "usable": usable,
        "passed": passed,
        "revealed": revealed,
        "sum": total,
        "sketch_seed": seed.hex(),
        "seconds": {"open": t1 - t0, "bound_check": t2 - t1, "sum": t3 - t2},
    }
