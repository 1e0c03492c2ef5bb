"""The aggregation service: start the parties and the dealer, hand them a round, get the sum.

The coordinator (the server's orchestration process) never opens a share: it relays each
party's ciphertexts (:class:`~pharmafl.sites.secret_sharing.Envelope`) over a pipe to that
party's process and receives back the pass/fail bits and — from the server's own party,
rank 0 — the revealed weighted sum. Party key pairs are provisioned at preparation
(:func:`provision`), like NVFlare provisions its participants; each party process loads only
its own private key.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pharmafl.errors import PharmaflError
from pharmafl.fileio import write_bytes_atomic
from pharmafl.sites.secret_sharing import SERVER, Envelope, PartyKey

KEY_PASSPHRASE_ENV = "PHARMAFL_KEY_PASSPHRASE"  # the run's key-store passphrase also encrypts the party keys
START_TIMEOUT_S = 120.0
ROUND_TIMEOUT_S = 1800.0


class SecureAggregationError(PharmaflError):
    """The aggregation parties could not start or could not finish a round."""


def key_passphrase() -> str | None:
    """The passphrase the party keys are encrypted under at rest (none: files are mode 0600)."""
    return os.environ.get(KEY_PASSPHRASE_ENV) or None


def party_names(helpers: int) -> list[str]:
    return [SERVER, *(f"helper{j}" for j in range(1, helpers + 1))]


def provision(key_dir: Path, helpers: int, passphrase: str | None) -> dict[str, str]:
    """Create every party's X25519 key (``key_dir/<party>.pem``); return name -> public key hex.

    In production each helper generates its key at its own organisation and hands over only
    the public key; here one process writes them all, as ``nvflare provision`` does.
    """
    key_dir.mkdir(parents=True, exist_ok=True)
    public = {}
    for name in party_names(helpers):
        key = PartyKey.generate(name)
        write_bytes_atomic(key_dir / f"{name}.pem", key.private_pem(passphrase))
        os.chmod(key_dir / f"{name}.pem", 0o600)
        public[name] = key.public.hex()
    return public


def public_keys(public: Mapping[str, str]) -> list[PartyKey]:
    """Party keys (public halves) in rank order, server first."""
    names = sorted(public, key=lambda n: (n != SERVER, n))
    return [PartyKey(n, bytes.fromhex(public[n])) for n in names]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class RoundResult:
    usable: list[str]  # sites whose shares every party opened
    unopened: dict[str, str]  # site -> why a party could not open its share
    passed: dict[str, bool]  # bound check, per usable site
    total: object  # float64 vector: sum of weight * update over passing sites (None if none passed)
    sketch_seed: str
    seconds: dict[str, float]


class AggregationService:
    """The parties and the dealer as local processes meeting over TCP on ``host``."""

    def __init__(self, key_dir: Path, names: Sequence[str], passphrase: str | None, *, host: str = "127.0.0.1",
                 transcript_dir: Path | None = None):  # fmt: skip
        ctx = mp.get_context("spawn")
        from pharmafl.pipeline.secure_agg.party import dealer_main, party_main

        self.names = list(names)
        address = f"tcp://{host}:{_free_port()}"
        transcript = str(transcript_dir) if transcript_dir else None
        self.procs, self.conns = [], []
        n = len(self.names)
        for rank, name in enumerate(self.names):
            pem = (Path(key_dir) / f"{name}.pem").read_bytes()
            mine, theirs = ctx.Pipe()
            p = ctx.Process(target=party_main, args=(rank, n, address, pem, passphrase, theirs, transcript),
                            name=f"pharmafl-party-{name}", daemon=True)  # fmt: skip
            p.start()
            self.procs.append(p)
            self.conns.append(mine)
        dealer = ctx.Process(target=dealer_main, args=(n, address, transcript), name="pharmafl-dealer", daemon=True)
        dealer.start()
        self.procs.append(dealer)
        self.address = address
        self.fingerprints = {}
        for name, conn in zip(self.names, self.conns):
            msg = self._recv(conn, START_TIMEOUT_S, f"party {name} to start")
            self.fingerprints[msg["ready"]] = msg["fingerprint"]

    def _recv(self, conn, timeout: float, what: str) -> dict:
        if not conn.poll(timeout):
            self.close()
            raise SecureAggregationError(f"timed out after {timeout:.0f} s waiting for {what}")
        try:
            msg = conn.recv()
        except EOFError:
            self.close()
            raise SecureAggregationError(f"the process died while waiting for {what}") from None
        if "error" in msg:
            self.close()
            raise SecureAggregationError(f"{msg['error']}\n{msg.get('trace', '')}")
        return msg

    def run_round(self, round: int, envelopes: Mapping[str, Envelope], weights: Mapping[str, int], *,
                  context: str, length: int, max_norm: float, slack: float, sketches: int,
                  buckets: int) -> RoundResult:  # fmt: skip
        """Bound-check and sum ``envelopes`` (sorted by site) of run ``context``; each party gets
        only its own ciphertexts."""
        sites = sorted(envelopes)
        common = {"round": round, "context": context, "sites": sites, "length": length, "max_norm": max_norm, "slack": slack,
                  "sketches": sketches, "buckets": buckets, "weights": {s: int(weights[s]) for s in sites},
                  "share_hashes": {s: "".join(sorted(envelopes[s].share_hashes().values())) for s in sites}}  # fmt: skip
        for name, conn in zip(self.names, self.conns):
            mine = {s: (_header_for(envelopes[s], name), envelopes[s].blobs.get(name, b"")) for s in sites}
            conn.send({**common, "envelopes": mine})
        replies = [self._recv(conn, ROUND_TIMEOUT_S, f"party {name}, round {round}")
                   for name, conn in zip(self.names, self.conns)]  # fmt: skip
        first = replies[0]
        for other in replies[1:]:  # the parties must have agreed on everything public
            if (other["usable"], other["passed"], other["sketch_seed"]) != (first["usable"], first["passed"], first["sketch_seed"]):
                raise SecureAggregationError(f"round {round}: parties disagree ({first['party']} vs {other['party']})")
        unopened = {}
        for r in replies:
            unopened.update({s: f"{r['party']}: {why}" for s, why in r["unopened"].items()})
        seconds = {k: max(r["seconds"][k] for r in replies) for k in first["seconds"]}
        return RoundResult(first["usable"], unopened, first["passed"], first["sum"], first["sketch_seed"], seconds)

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(None)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 20
        for p in self.procs:
            p.join(max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.terminate()
                p.join(5)
        for conn in self.conns:
            conn.close()
        self.conns = []


def _header_for(env: Envelope, party: str) -> dict:
    """The header with only ``party``'s entry: a party learns nothing about the others' ciphertexts."""
    h = dict(env.header)
    h["parties"] = {party: env.header["parties"][party]} if party in env.header["parties"] else {}
    return h
