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

import hashlib
import math
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pharmafl.audit.messages import STATEMENT_FIELDS, STATEMENT_SHAPE, fits, is_hex
from pharmafl.errors import RefusedError
from pharmafl.pipeline.secure_agg import wire
from pharmafl.sites.party_card import ranked
from pharmafl.sites.secret_sharing import Envelope

CONNECT_TIMEOUT_S = 30.0
OTHER_PARTY = "another party could not open its share"
MAX_WEIGHT = 2**53  # a site's weight, its example count at most (the coordinator's MAX_EXAMPLES)


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
            self.statements = [_statement("register", p, replies[p], "party_registered", None) for p in self.names]
            n = len(self.names)
            addresses = {str(i): _address(p, replies[p], "party") for i, p in enumerate(self.names)}
            if "dealer" not in replies.get(terms["dealer"], {}).get("ports", {}):
                raise SecureAggregationError(f"the dealer party {terms['dealer']} did not start a dealer")
            addresses[str(n)] = _address(terms["dealer"], replies[terms["dealer"]], "dealer")
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
        return round_result(round, self.names, sites, replies, _length(self.terms["layout"]))

    def close(self) -> None:
        for sock in self.socks.values():
            try:
                wire.send(sock, {"op": "close"})
                wire.recv(sock)
            except (wire.WireError, OSError):
                pass
            sock.close()
        self.socks = {}


# What the coordinator reads of a party's signed party_round statement (its payload):
# field -> (is the value usable, what it must be).
ROUND_VIEW = {
    "aborted": (lambda v: v is None or type(v) is str, "null or the reason (text)"),
    "excluded": (lambda v: _by_site(v, str), "{site: reason}"),
    "passed": (lambda v: _by_site(v, bool), "{site: true or false}"),
    "revealed": (lambda v: type(v) is bool, "true or false"),
    "sketch_seed": (lambda v: v is None or type(v) is str, "null or hex text"),
    "sum_sha256": (lambda v: v is None or is_hex(v, 64), "null or 64 hex digits"),
    "weights": (
        lambda v: _by_site(v, int) and all(1 <= w <= MAX_WEIGHT for w in v.values()),
        f"{{site: an integer in 1..{MAX_WEIGHT}}}",
    ),
}


def round_result(
    round: int, names: list[str], sites: list[str], replies: Mapping[str, dict], length: int
) -> RoundResult:
    """The round as the parties' replies (party -> reply; ``names`` in rank order, the server's
    party first) report it, for a sum of ``length`` values. A reply that is malformed, or parties
    that disagree on what they sign, raise :class:`SecureAggregationError` naming the party and
    the field: a party's word is never indexed unchecked."""
    refusals = {p: replies[p].get("error") for p in names if not replies[p].get("ok")}
    statements = [
        _statement(f"round {round}", p, replies[p], "party_refused" if p in refusals else "party_round", round)
        for p in names
        if p not in refusals or replies[p].get("statement") is not None  # a refusal may come unsigned
    ]
    if refusals:
        why = "; ".join(f"{p}: {e!s:.500}" for p, e in refusals.items())
        return RoundResult(False, [], {}, {}, None, {}, None, {}, statements, aborted=f"refused by {why}")
    views = [_view(round, p, stmt["payload"]) for p, stmt in zip(names, statements)]
    first = views[0]
    for name, other in zip(names[1:], views[1:]):  # the parties must agree on everything public
        for k in ("passed", "sketch_seed", "revealed", "weights", "aborted"):
            if other[k] != first[k]:
                raise SecureAggregationError(f"round {round}: parties disagree on {k} ({names[0]} vs {name})")
    excluded = {}
    for view in views:  # the party that could not open a share says why; the others only that it could not
        for site, why in view["excluded"].items():
            if site not in excluded or excluded[site] == OTHER_PARTY:
                excluded[site] = why
    total = _sum(round, names[0], replies[names[0]], first, length) if first["revealed"] else None
    usable = [s for s in sites if s in first["passed"]]
    seconds: dict[str, float] = {}
    for p in names:
        took = replies[p].get("seconds")
        if type(took) is not dict or not all(
            type(k) is str and type(v) in (int, float) and 0 <= v < 1e9 for k, v in took.items()
        ):
            raise _malformed(f"round {round}", p, "seconds", "{step: seconds}, each a number from 0 to 1e9")
        for k, v in took.items():
            seconds[k] = max(seconds.get(k, v), v)
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


def _malformed(what: str, party: str, field: str, expected: str) -> SecureAggregationError:
    return SecureAggregationError(f"{what}: party {party} sent a malformed reply: {field} must be {expected}")


def _statement(what: str, party: str, reply: dict, type_: str, round: int | None) -> dict:
    """``party``'s statement in ``reply``: shaped as a statement and labelled as its own ``type_``
    one (its signature is the coordinator's to check, against the party's card)."""
    stmt = reply.get("statement")
    if not fits(stmt, STATEMENT_SHAPE):
        raise _malformed(what, party, "statement", f"a statement with the fields {', '.join(STATEMENT_FIELDS)}")
    if (stmt["site"], stmt["type"], stmt["round"]) != (party, type_, round):
        raise _malformed(
            what,
            party,
            "statement",
            f"its own {type_} statement of round {round}, not {stmt['site']!r:.60}'s {stmt['type']!r:.40} "
            f"of round {stmt['round']}",
        )
    return stmt


def _view(round: int, party: str, payload: dict) -> dict:
    """The public outcome ``party`` signed for ``round``, every field of the type the coordinator reads."""
    for k, (ok, expected) in ROUND_VIEW.items():
        if k not in payload or not ok(payload[k]):
            raise _malformed(f"round {round}", party, f"statement.payload.{k}", expected)
    if not set(payload["passed"]) <= set(payload["weights"]):
        raise _malformed(f"round {round}", party, "statement.payload.weights", "a weight for every site in passed")
    return payload


def _sum(round: int, party: str, reply: dict, view: dict, length: int) -> np.ndarray:
    """The revealed sum from the server's party: ``length`` finite doubles hashing to the
    ``sum_sha256`` it signed."""
    try:
        data = wire.blob(reply["_blobs"], reply.get("sum"))
    except wire.WireError as exc:
        raise _malformed(f"round {round}", party, "sum", f"the index of the sum's binary part ({exc})") from None
    if len(data) != 8 * length:
        raise _malformed(
            f"round {round}", party, "sum", f"{length} doubles ({8 * length} bytes), not {len(data)} bytes"
        )
    if hashlib.sha256(data).hexdigest() != view["sum_sha256"]:
        raise _malformed(f"round {round}", party, "sum", "the bytes whose hash its statement signs (sum_sha256)")
    total = np.frombuffer(data, dtype="<f8")
    if not np.all(np.isfinite(total)):
        raise _malformed(f"round {round}", party, "sum", "finite numbers (it holds NaN or infinity)")
    return total


def _by_site(v, kind: type) -> bool:
    """``v`` is {site id: a value of exactly type ``kind``}."""
    return type(v) is dict and all(type(k) is str and type(x) is kind for k, x in v.items())


def _address(party: str, reply: dict, port: str) -> list:
    """[host, port] of ``party``'s ``port`` (its MPC worker or the dealer) from its registration."""
    host, ports = reply.get("host"), reply.get("ports")
    p = ports.get(port) if type(ports) is dict else None
    if type(host) is not str or not 0 < len(host) < 256 or type(p) is not int or not 0 < p < 65536:
        raise _malformed("register", party, f"host and ports.{port}", "a host name and a port in 1..65535")
    return [host, p]


def _length(layout) -> int:
    """Values in an update of ``layout`` ([[name, shape], ...], the run's terms)."""
    return sum(math.prod(shape) for _, shape in layout)


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
                        subprocess.Popen(
                            cmd,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            env=os.environ.copy(),
                            preexec_fn=_die_with_parent,
                        ),
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


def _die_with_parent() -> None:
    """In a simulated party's process, before it runs: end it (SIGTERM) when the coordinator that
    started it dies, even by SIGKILL, so a killed run leaves no party services behind (Linux)."""
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the services end at their idle timeout instead
        pass
