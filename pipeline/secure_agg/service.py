"""An aggregation party as a long-lived service: ``pharmafl party serve HOME --listen HOST:PORT``.

The service holds the party's keys (its home, :mod:`.party_home`) and listens on TLS 1.3
with its card's certificate (:mod:`.wire`). A coordinator opens one connection per run and
sends, in order:

``register``  the run's terms (:func:`.checks.check_terms`, against a consortium the party
              accepted): fixed at the first registration, refused if they ever change. The
              service starts the run's MPC worker (and, at the dealer's party, the dealer)
              and answers with their mesh ports and a signed ``party_registered`` statement
              (numbered: a resumed run registers again, and each session's is its own).
``start``     every rank's mesh address: the workers join the TLS mesh (peers pinned from
              the consortium's party cards, never from this request).
``round``     per site the signed ``secure_shares`` statement, the envelope header and this
              party's ciphertext. The party records that it begins the round (fsynced;
              a round it began before, or an earlier one, is refused), checks and opens
              every envelope (:func:`.checks.open_site`), and runs the round with the
              other parties (:mod:`.party`). It answers with a signed ``party_round``
              statement (sites used, excluded and why, bound-check bits, weights, whether
              the sum was revealed and, at the server's party, the sum's hash) and — the
              server's party only — the sum.
``close``     the run's workers stop.

Every refusal is a signed ``party_refused`` statement in the answer; the coordinator puts
party statements into the ledger, and the party keeps its own copy of each in its home.
A malformed request is answered with an error and never stops the service.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import socket
import threading
import time
from pathlib import Path

import numpy as np

from pharmafl.audit.messages import canonical
from pharmafl.errors import PharmaflError
from pharmafl.pipeline.secure_agg import wire
from pharmafl.pipeline.secure_agg.checks import check_terms, layout_length, open_site
from pharmafl.pipeline.secure_agg.party_home import PartyHome, PartyRefusal
from pharmafl.sites.party_card import ranked
from pharmafl.sites.secret_sharing import ShareError

START_TIMEOUT_S = 120.0
OTHER_PARTY = "another party could not open its share"
ROUND_TIMEOUT_S = 1800.0
HANDSHAKE_TIMEOUT_S = 30.0
IDLE_TIMEOUT_S = 24 * 3600.0  # a run's connection waits through its sites' training between rounds
MAX_SESSIONS = 32


class Session:
    """One coordinator connection: at most one run, its workers, its rounds."""

    def __init__(self, service: PartyService, sock):
        self.service, self.home, self.sock = service, service.home, sock
        self.terms = self.consortium = None
        self.started = False
        self.workers: list[tuple[object, object]] = []  # (process, pipe)

    def serve(self) -> None:
        try:
            while True:
                try:
                    doc, blobs = wire.recv(self.sock)
                except wire.WireError:
                    return  # the coordinator went away (or sent garbage): end the session
                op = doc.get("op")
                if op == "close":
                    wire.send(self.sock, {"ok": True})
                    return
                ops = {"register": self.register, "start": self.start, "round": self.round}
                handler = ops.get(op) if type(op) is str else None  # a list or dict op is unhashable
                try:
                    if handler is None:
                        raise PartyRefusal(f"unknown request {op!r}; valid: register, start, round, close")
                    reply, out = handler(doc, blobs)
                except (PartyRefusal, wire.WireError, PharmaflError) as exc:
                    reply, out = self.refusal(doc, str(exc)), []
                except Exception as exc:  # noqa: BLE001 - a request must never take the service down
                    reply, out = self.refusal(doc, f"internal error: {type(exc).__name__}: {exc}"), []
                wire.send(self.sock, reply, out)
        finally:
            self.stop_workers()
            self.sock.close()

    def refusal(self, doc: dict, why: str) -> dict:
        """The refusal, with a signed ``party_refused`` statement when it concerns a run registered
        here (anyone else gets the reason unsigned: a stranger cannot make the party write)."""
        run_id = (self.terms or {}).get("run_id") or (
            (doc.get("terms") or {}).get("run_id") if type(doc.get("terms")) is dict else None
        )
        rnd = doc.get("round") if type(doc.get("round")) is int else None
        stmt = None
        try:
            if type(run_id) is str and self.home.registered(run_id):
                stmt = self.home.sign_statement(
                    run_id, rnd, "party_refused", {"request": str(doc.get("op")), "reason": why}
                )
        except (PharmaflError, ValueError):  # ValueError: NotCanonical, a round beyond 2**53
            stmt = None  # a run id that cannot name a folder: answered, not signed
        return {"ok": False, "error": why, "statement": stmt}

    # --- register ---------------------------------------------------------------------------

    def register(self, doc: dict, blobs) -> tuple[dict, list]:
        if self.terms is not None:
            raise PartyRefusal("this connection already registered a run; open a new one per run")
        terms = doc.get("terms")
        if type(terms) is not dict:
            raise PartyRefusal("register needs the run's terms")
        consortium = self.home.consortium(terms.get("roster_sha256"))
        check_terms(terms, consortium, self.home.party)
        self.home.fix_terms(terms["run_id"], terms)
        self.terms, self.consortium = terms, consortium
        order = ranked(consortium["parties"])
        rank, n = order.index(self.home.party), len(order)
        certs = {i: consortium["parties"][p]["tls_cert"].encode() for i, p in enumerate(order)}
        certs[n] = consortium["parties"][terms["dealer"]]["tls_cert"].encode()
        ports = {"party": self._spawn(rank, n, certs, self.home.party)}
        if terms["dealer"] == self.home.party:
            ports["dealer"] = self._spawn(n, n, certs, f"{self.home.party}-dealer")
        earlier = sum(st.get("type") == "party_registered" for st in self.home.statements(terms["run_id"]))
        stmt = self.home.sign_statement(
            terms["run_id"],
            None,
            "party_registered",
            {
                "terms_sha256": hashlib.sha256(canonical(terms).encode()).hexdigest(),
                "rank": rank,
                "dealer": terms["dealer"] == self.home.party,
                "registration": earlier + 1,  # a resumed run registers again: each its own statement
            },
        )
        return {"ok": True, "statement": stmt, "rank": rank, "host": self.service.host, "ports": ports}, []

    def _spawn(self, rank: int, n: int, certs: dict, name: str) -> int:
        from pharmafl.pipeline.secure_agg.party import worker_main

        mine, theirs = mp.get_context("spawn").Pipe()
        identity = (self.home.tls_cert_pem, self.home.tls_key_pem)
        transcript = str(self.service.transcript_dir) if self.service.transcript_dir else None
        p = mp.get_context("spawn").Process(
            target=worker_main,
            name=f"pharmafl-{name}",
            daemon=True,
            args=(rank, n, self.service.host, identity, certs, theirs, transcript, name),
        )
        p.start()
        self.workers.append((p, mine))
        return self._reply(mine, START_TIMEOUT_S, f"{name} to bind its mesh port")["port"]

    def _reply(self, conn, timeout: float, what: str) -> dict:
        if not conn.poll(timeout):
            raise PartyRefusal(f"timed out after {timeout:.0f} s waiting for {what}")
        try:
            msg = conn.recv()
        except EOFError:
            raise PartyRefusal(f"the worker died while {what}") from None
        if "error" in msg:
            raise PartyRefusal(msg["error"])
        return msg

    # --- start ------------------------------------------------------------------------------

    def start(self, doc: dict, blobs) -> tuple[dict, list]:
        if self.terms is None or not self.workers:
            raise PartyRefusal("start before register")
        if self.started:
            raise PartyRefusal("the parties' mesh is already started for this run")
        n = len(self.consortium["parties"])
        addresses = doc.get("addresses")
        ok = (
            type(addresses) is dict
            and sorted(addresses) == sorted(str(i) for i in range(n + 1))
            and all(
                type(a) is list
                and len(a) == 2
                and type(a[0]) is str
                and 0 < len(a[0]) < 256
                and type(a[1]) is int
                and 0 < a[1] < 65536
                for a in addresses.values()
            )
        )
        if not ok:
            raise PartyRefusal(f"start needs the mesh address [host, port] (port 1..65535) of every rank 0..{n}")
        for _, conn in self.workers:
            conn.send({"addresses": addresses, "timeout": START_TIMEOUT_S})
        try:
            for _, conn in self.workers:
                self._reply(conn, START_TIMEOUT_S + 10, "joining the parties' mesh")
        except PartyRefusal:
            self.stop_workers()  # a mesh that failed to form cannot be retried: register again
            raise
        self.started = True
        return {"ok": True}, []

    # --- round ------------------------------------------------------------------------------

    def round(self, doc: dict, blobs) -> tuple[dict, list]:
        if self.terms is None or not self.workers or not self.started:
            raise PartyRefusal("round before register and start")
        terms, r, items = self.terms, doc.get("round"), doc.get("sites")
        refused = None  # a refused round still joins the parties' agreement step, so that all abort
        if type(r) is not int or type(items) is not dict or not all(type(s) is str for s in items):
            refused, r, items = (
                "round needs round (an integer) and sites {site: {statement, header, blob}}",
                r if type(r) is int else 0,
                {},
            )
        sites = sorted(items)
        try:
            if refused is None:
                self.home.begin_round(terms["run_id"], r)
        except PartyRefusal as exc:
            refused = str(exc)
        except Exception as exc:  # noqa: BLE001 - its disk failing: refused, but still at the agreement
            refused = f"internal error: {type(exc).__name__}: {exc}"
        length = layout_length(terms["layout"])
        shares, weights, headers, excluded = {}, {}, {}, {}
        t0 = time.perf_counter()
        for site in sites if refused is None else ():
            item = items[site]
            try:
                relayed = (
                    {
                        "statement": item.get("statement"),
                        "header": wire.blob(blobs, item.get("header")),
                        "blob": wire.blob(blobs, item.get("blob")),
                    }
                    if type(item) is dict
                    else None
                )
                headers[site] = hashlib.sha256(relayed["header"]).hexdigest() if relayed else ""
                shares[site], weights[site] = open_site(
                    site, relayed, terms=terms, consortium=self.consortium, me=self.home.hpke, round=r, length=length
                )
            except (ShareError, wire.WireError, TypeError, AttributeError) as exc:
                excluded[site] = f"{self.home.party}: {exc}"
            except Exception as exc:  # noqa: BLE001 - one site's envelope must not keep this party from the agreement
                excluded[site] = f"{self.home.party}: internal error: {type(exc).__name__}: {exc}"
        checks = time.perf_counter() - t0  # signatures, labels, caps, HPKE opening, piece commitments
        task = {
            "round": r,
            "accepted": refused is None,
            "sites": sites,
            "headers": headers,
            "shares": shares,
            "weights": weights,
            "length": length,
            "min_sites": terms["min_sites"],
            "max_norm": terms["max_update_norm"],
            "slack": terms["slack"],
            "sketches": terms["sketches"],
            "buckets": terms["buckets"],
        }
        _, conn = self.workers[0]
        conn.send(task)
        res = self._reply(conn, ROUND_TIMEOUT_S, f"round {r} with the other parties")
        if refused is not None:
            raise PartyRefusal(refused)
        for site in sites:
            if site not in excluded and site not in res["usable"] and res["aborted"] is None:
                excluded[site] = OTHER_PARTY
            elif site in res["passed"] and not res["passed"][site]:
                excluded[site] = f"update over the agreed norm bound {terms['max_update_norm']} (MPC check)"
        total = res["sum"]
        weights = {s: weights[s] for s in res["usable"]}  # the sites every party opened
        payload = {
            "sites": sites,
            "excluded": excluded,
            "passed": res["passed"],
            "weights": weights,
            "sketch_seed": res["sketch_seed"],
            "revealed": res["revealed"],
            "aborted": res["aborted"],
            "min_sites": terms["min_sites"],
            "sum_sha256": hashlib.sha256(np.asarray(total, "<f8").tobytes()).hexdigest() if total is not None else None,
        }
        stmt = self.home.sign_statement(terms["run_id"], r, "party_round", payload)
        reply = {
            "ok": True,
            "statement": stmt,
            "seconds": {**res["seconds"], "checks": checks},
            "sum": 0 if total is not None else None,
        }
        return reply, ([np.asarray(total, "<f8").tobytes()] if total is not None else [])

    def stop_workers(self) -> None:
        for _, conn in self.workers:
            try:
                conn.send(None)
            except (OSError, ValueError, BrokenPipeError):
                pass
        deadline = time.monotonic() + 20
        for p, conn in self.workers:
            p.join(max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.terminate()
                p.join(5)
            conn.close()
        self.workers = []


class PartyService:
    """Accept coordinator connections on ``host:port`` (TLS with the party's certificate)."""

    def __init__(self, home: PartyHome, host: str = "127.0.0.1", port: int = 0, *, transcript_dir: Path | None = None):
        self.home, self.host, self.transcript_dir = home, host, transcript_dir
        self.context = wire.server_context(home.tls_cert_pem, home.tls_key_pem)
        self.sock = socket.create_server((host, port))
        self.port = self.sock.getsockname()[1]
        self._stopping, self._sessions, self._slots = False, 0, threading.Lock()

    def serve_forever(self) -> None:
        while not self._stopping:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(raw,), daemon=True).start()

    def _session(self, raw) -> None:
        with self._slots:
            if self._sessions >= MAX_SESSIONS:
                raw.close()  # a flood of connections cannot exhaust the party's threads
                return
            self._sessions += 1
        try:
            raw.settimeout(HANDSHAKE_TIMEOUT_S)
            try:
                sock = self.context.wrap_socket(raw, server_side=True)
            except Exception:  # noqa: BLE001 - a failed or stalled handshake is the client's problem
                raw.close()
                return
            sock.settimeout(IDLE_TIMEOUT_S)
            Session(self, sock).serve()
        finally:
            with self._slots:
                self._sessions -= 1

    def shutdown(self) -> None:
        self._stopping = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self.sock.close()
