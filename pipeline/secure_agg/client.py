"""The coordinator's side of secure aggregation: it reaches each party's service, relays, records.

The coordinator holds the parties' cards only. It opens one TLS connection per party (the
party's certificate pinned from its card, :func:`.wire.connect`), registers the run's
terms, tells every party where its peers' MPC workers listen, and per round relays to each
party the sites' signed ``secure_shares`` statements, the envelope headers and that party's
own ciphertexts — never another party's. What comes back is each party's signed statement
and, from the server's party, the sum; the coordinator checks that the parties agree and
puts their statements into the ledger.

:class:`LocalParties` starts party services on this machine, each its own process running
``pharmafl party serve`` on its own home: the simulator goes through the same services a
deployment runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pharmafl.errors import RefusedError
from pharmafl.pipeline.secure_agg import wire
from pharmafl.sites.party_card import ranked
from pharmafl.sites.secret_sharing import Envelope

CONNECT_TIMEOUT_S = 30.0
OTHER_PARTY = "another party could not open its share"


class SecureAggregationError(RefusedError):
    """The aggregation parties could not be reached, refused the run, or disagree."""


@dataclass(frozen=True)
class RoundResult:
    revealed: bool  # the parties revealed a sum (at least min_sites sites passed)
    usable: list[str]  # sites whose shares every party opened
    excluded: dict[str, str]  # site -> why it is not in the sum (as the parties signed it)
    passed: dict[str, bool]  # bound check, per usable site
    total: object  # float64 vector: sum of weight * update over passing sites (None unless revealed)
    weights: dict[str, int]  # the weights the parties took from the signed headers
    sketch_seed: str | None
    seconds: dict[str, float]
    statements: list[dict] = field(default_factory=list)  # the parties' signed statements, rank order
    aborted: str | None = None  # why the parties did not run the round at all


class AggregationService:
    """The parties of one run, reached at ``endpoints`` (party id -> (host, port))."""

    def __init__(
        self,
        parties: Mapping[str, dict],
        endpoints: Mapping[str, tuple[str, int]],
        terms: dict,
        *,
        timeout: float = CONNECT_TIMEOUT_S,
    ):
        self.names = ranked(parties)
        missing = [p for p in self.names if p not in endpoints]
        if missing:
            raise SecureAggregationError(
                f"no endpoint for parties {missing}: give secure_aggregation.endpoints "
                f"{{party: host:port}} for every party of the consortium"
            )
        self.terms, self.socks, self.statements = terms, {}, []
        try:
            for name in self.names:
                host, port = endpoints[name]
                self.socks[name] = wire.connect(host, int(port), parties[name]["tls_cert"], timeout)
                self.socks[name].settimeout(None)
            replies = self._all({"op": "register", "terms": terms})
            self.statements = [r["statement"] for r in replies.values()]
            n = len(self.names)
            addresses = {str(i): [replies[p]["host"], replies[p]["ports"]["party"]] for i, p in enumerate(self.names)}
            dealer = replies.get(terms["dealer"], {}).get("ports", {}).get("dealer")
            if dealer is None:
                raise SecureAggregationError(f"the dealer party {terms['dealer']} did not start a dealer")
            addresses[str(n)] = [replies[terms["dealer"]]["host"], dealer]
            self._all({"op": "start", "addresses": addresses})
        except (wire.WireError, OSError) as exc:
            self.close()
            raise SecureAggregationError(f"could not set the run up with the aggregation parties: {exc}") from None
        except SecureAggregationError:
            self.close()
            raise

    def _all(self, doc: dict, blobs_for=None, *, strict: bool = True) -> dict[str, dict]:
        """Send to every party first (they act together), then collect every answer; ``strict``:
        a refusal by any party raises."""
        for name in self.names:
            out, blobs = (doc, ()) if blobs_for is None else blobs_for(name)
            wire.send(self.socks[name], out, blobs)
        replies = {}
        for name in self.names:
            reply, blobs = wire.recv(self.socks[name])
            replies[name] = {**reply, "_blobs": blobs}
        refusals = [f"{n}: {r.get('error')}" for n, r in replies.items() if not r.get("ok")]
        if strict and refusals:
            self.statements += [r["statement"] for r in replies.values() if r.get("statement")]
            raise SecureAggregationError(f"{doc.get('op')} refused by the parties: " + "; ".join(refusals))
        return replies

    def run_round(self, round: int, envelopes: Mapping[str, tuple[Envelope, dict]]) -> RoundResult:
        """Relay ``envelopes`` (site -> (envelope, its signed secure_shares statement)) to the parties."""
        sites = sorted(envelopes)

        def frame(party: str):
            blobs, items = [], {}
            for site in sites:
                env, stmt = envelopes[site]
                items[site] = {"statement": stmt, "header": len(blobs), "blob": len(blobs) + 1}
                blobs += [env.header_bytes, env.blobs.get(party, b"")]
            return {"op": "round", "round": round, "sites": items}, blobs

        try:
            replies = self._all({"op": "round"}, frame, strict=False)
        except (wire.WireError, OSError) as exc:
            raise SecureAggregationError(f"round {round}: a party channel broke: {exc}") from None
        statements = [replies[p]["statement"] for p in self.names if replies[p].get("statement")]
        refusals = {p: r.get("error") for p, r in replies.items() if not r.get("ok")}
        if refusals:
            why = "; ".join(f"{p}: {e}" for p, e in refusals.items())
            return RoundResult(False, [], {}, {}, None, {}, None, {}, statements, aborted=f"refused by {why}")
        views = [replies[p]["statement"]["payload"] for p in self.names]
        first = views[0]
        for name, other in zip(self.names[1:], views[1:]):  # the parties must agree on everything public
            keys = ("passed", "sketch_seed", "revealed", "weights", "aborted")
            if any(other[k] != first[k] for k in keys):
                raise SecureAggregationError(f"round {round}: parties disagree ({self.names[0]} vs {name})")
        excluded = {}
        for view in views:  # the party that could not open a share says why; the others only that it could not
            for site, why in view["excluded"].items():
                if site not in excluded or excluded[site] == OTHER_PARTY:
                    excluded[site] = why
        total = None
        if first["revealed"]:
            server = replies[self.names[0]]
            total = np.frombuffer(wire.blob(server["_blobs"], server.get("sum")), dtype="<f8")
        usable = [s for s in sites if s in first["passed"]]
        seconds = {k: max(replies[p]["seconds"][k] for p in self.names) for k in replies[self.names[0]]["seconds"]}
        return RoundResult(
            first["revealed"],
            usable,
            excluded,
            first["passed"],
            total,
            first["weights"],
            first["sketch_seed"],
            seconds,
            statements,
            aborted=first["aborted"],
        )

    def close(self) -> None:
        for sock in self.socks.values():
            try:
                wire.send(sock, {"op": "close"})
                wire.recv(sock)
            except (wire.WireError, OSError):
                pass
            sock.close()
        self.socks = {}


class LocalParties:
    """Party services on this machine, each ``pharmafl party serve HOME`` in its own process."""

    def __init__(
        self,
        homes: Mapping[str, Path],
        *,
        host: str = "127.0.0.1",
        transcript_dir: Path | None = None,
        timeout: float = 120.0,
    ):
        self.procs, self.endpoints = [], {}
        try:
            for name, home in homes.items():
                ready = Path(home) / "serve.ready"
                ready.unlink(missing_ok=True)
                cmd = [
                    sys.executable,
                    "-m",
                    "pharmafl.pipeline.secure_agg.cli_party",
                    "serve",
                    str(home),
                    "--listen",
                    f"{host}:0",
                    "--ready-file",
                    str(ready),
                ]
                if transcript_dir is not None:
                    cmd += ["--transcript", str(transcript_dir)]
                log = open(Path(home) / "serve.log", "ab")  # noqa: SIM115 - the process owns it
                self.procs.append(
                    (
                        subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy()),
                        ready,
                        name,
                        log,
                    )
                )
            deadline = time.monotonic() + timeout
            for proc, ready, name, _ in self.procs:
                while not ready.is_file():
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise SecureAggregationError(f"party {name} did not start (see {ready.parent / 'serve.log'})")
                    time.sleep(0.05)
                host_, port = ready.read_text().split()
                self.endpoints[name] = (host_, int(port))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for proc, ready, _, log in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            ready.unlink(missing_ok=True)
            log.close()
        self.procs = []
