"""Standalone verifier of pharmafl ledger bundles: ``python -m pharmafl.audit.verify BUNDLE``.

Five small modules, stdlib and ``cryptography`` only: this one (the checks), :mod:`.messages` (canonical
bytes, signed messages), :mod:`.rfc9162` (Merkle proofs), :mod:`.signature_pool` (Ed25519 on worker
processes), :mod:`.verify_bundle` (reading a bundle; ``pyarrow`` only for ``entries.parquet``); databases
are adapted outside (:mod:`.dbsource`). Each check is a method of :class:`Run` raising
:class:`VerificationError` at the first failure; docs/trust-domains.md says who signs what. Anchors
received out of band: ``--trusted-head`` (a checkpoint), ``--trusted-keys``, ``--roster`` (consortium.json).
Prints ``OK: N entries, M checkpoints (W witnessed, quorum K of S sites), head <root>`` (exit 0),
``FAIL: seq S: why`` (1) or ``ERROR: why`` (2: unreadable); with ``--json`` the :class:`Result` or the
failure as one JSON object (``{"ok": false, "seq": S, "reason": ..., "unreadable": ...}``), same exit codes.
"""

from __future__ import annotations

import argparse  # noqa: E401
import hashlib
import json
import sys
from dataclasses import asdict, dataclass

from pharmafl.audit import messages as m
from pharmafl.audit.rfc9162 import fold, push, verify_consistency, verify_inclusion  # noqa: F401 (re-exported)
from pharmafl.audit.signature_pool import Signatures, sig_ok

canonical = m.canonical


class VerificationError(Exception):
    """The ledger failed a check; ``seq`` is the first bad sequence number (None: not an entry)."""

    def __init__(self, reason: str, seq: int | None = None, *, unreadable: bool = False):
        super().__init__(reason if seq is None else f"seq {seq}: {reason}")
        self.seq, self.reason, self.unreadable = seq, reason, unreadable

    def as_dict(self) -> dict:
        return {"ok": False, "seq": self.seq, "reason": self.reason, "unreadable": self.unreadable}


@dataclass(frozen=True)
class Result:
    """What a verified ledger establishes: ``line()`` prints it as ``OK: ...``, ``as_dict()`` for JSON."""

    entries: int
    checkpoints: int
    witnessed: int  # checkpoints cosigned by at least the quorum (and at least one site)
    quorum: int
    sites: int  # pinned by run_started
    root_hash: str  # RFC 9162 Merkle root of all the entries
    run_id: str | None = None

    def line(self) -> str:
        return (
            f"OK: {self.entries} entries, {self.checkpoints} checkpoints ({self.witnessed} witnessed, quorum "
            f"{self.quorum} of {self.sites} sites), head {self.root_hash}"
        )

    def as_dict(self) -> dict:
        return {"ok": True, **asdict(self)}


def _need(ok, reason: str, seq: int | None = None, unreadable: bool = False) -> None:
    if not ok:
        raise VerificationError(reason, seq, unreadable=unreadable)


def _shape(obj, shape: dict, where: str, seq: int | None = None) -> dict:
    return (
        _need(m.fits(obj, shape), f"{where}: expected exactly the fields {', '.join(sorted(shape))}, well formed", seq)
        or obj
    )


class Run:
    """What the entries establish (keys, pinned sites, statements seen); the summary once verified."""

    def __init__(self, trusted_keys: dict | None = None, roster: str | None = None, jobs: int | None = None):
        self.trusted_keys, self.roster, self.keys, self.sites, self.parties = trusted_keys, roster, {}, {}, {}
        self.registrar = self.run_id = self.started = self.ended = None
        self.resumed, self.final = [], False  # seqs of run_resumed entries; the last run_ended says "completed"
        self.entries, self.checkpoints, self.witnessed, self.quorum, self.jobs, self.seen = 0, 0, 0, 0, jobs, set()
        self.sigs, self.root = Signatures(jobs), ""

    def result(self) -> Result:
        return Result(
            self.entries, self.checkpoints, self.witnessed, self.quorum, len(self.sites), self.root, self.run_id
        )

    def entry(self, i: int, row: tuple, prev: str, last_ts: str) -> dict:
        """Sequence, shape, time order, chain link, canonical payload and hash of one entry row."""
        seq, ts, actor, type_, payload, prev_hash, entry_hash, sig = row[:8]
        _need(
            type(seq) is int and seq == i,
            f"found sequence number {seq!r} where {i} belongs: an entry was deleted, inserted or moved",
            i,
        )
        _need(
            m.CHECKPOINT_SHAPE["ts"](ts)
            and m.KEY_SHAPE["actor"](actor)
            and type(type_) is str
            and type_.isascii()
            and type_.isidentifier()
            and m.is_hex(prev_hash, 64)
            and m.is_hex(entry_hash, 64)
            and m.is_hex(sig, 128)
            and type(payload) is str,
            "malformed field (ts: RFC 3339 UTC with µs and Z; hashes: lowercase hex)",
            i,
        )
        _need(ts >= last_ts, f"timestamp {ts} is earlier than the previous entry's {last_ts}", i)
        _need(prev_hash == prev, "prev_hash is not the previous entry's entry_hash: the chain breaks here", i)
        try:  # a bundle row carries its payload parsed from a line found canonical already
            data = row[8] if len(row) > 8 else json.loads(payload)
            _need(type(data) is dict and (len(row) > 8 or canonical(data) == payload), "")
        except (ValueError, RecursionError, VerificationError):
            raise VerificationError("payload is not an RFC 8785 canonical JSON object", i) from None
        _need(
            hashlib.sha256(m.entry_message(seq, ts, actor, type_, payload, prev_hash)).hexdigest() == entry_hash,
            "entry_hash does not match the entry's contents: the entry was altered",
            i,
        )
        return data

    def registration(self, i: int, actor: str, data: dict) -> None:
        """``actor_key``: by the registrar (a ``user:*`` key: her own enrolment), once, with proof of possession."""
        who = data.get("actor")
        user = type(who) is str and who.startswith("user:")
        _shape(data, {**m.KEY_SHAPE, "enrolment": lambda v: type(v) is dict} if user else m.KEY_SHAPE, "actor_key", i)
        _need(who not in self.keys, f"{who!r} is registered again (first at seq {self.keys.get(who, (0, 0))[1]})", i)
        self.registrar, raw = actor if i == 0 else self.registrar, bytes.fromhex(data["public_key"])
        _need(
            actor == who if user else actor == self.registrar and (i > 0 or who == actor),
            f"actor_key for {who!r} "
            f"written by {actor!r}: only the registrar {self.registrar!r} registers actors, a user only herself",
            i,
        )
        _need(
            data["fingerprint"] == m.sha256_hex(raw)
            and sig_ok(raw, bytes.fromhex(data["proof"]), m.key_proof_message(who, data["public_key"])),
            f"actor_key for {who!r}: wrong fingerprint or proof",
            i,
        )
        _need(
            self.trusted_keys is None or (self.trusted_keys.get(who) or {}).get("public_key") == data["public_key"],
            f"the key registered for {who!r} is not the one in the trusted key bundle",
            i,
        )
        _need(self.sites.get(who, raw) == raw, f"actor_key for {who!r} is not the key of its pinned site card", i)
        self.keys[who] = (raw, i)

    def run_started(self, i: int, data: dict) -> None:
        """The consortium: roster hash, each card's fingerprint and self-signature; one run per ledger."""
        _need(self.started is None, f"a second run_started (the first at seq {self.started}): one ledger, one run", i)
        cons, self.run_id, self.started = data.get("consortium"), data.get("run_id"), i
        _need(
            type(self.run_id) is str
            and type(cons) is dict
            and sorted(set(cons) - {"parties"}) == ["cards", "roster_sha256"]
            and type(cons["cards"]) is dict
            and cons["cards"]
            and type(cons.get("parties", {})) is dict,
            "run_started must carry run_id and consortium {cards, [parties,] roster_sha256}",
            i,
        )
        roster = cons["roster_sha256"]
        _need(roster == m.roster_sha256(cons["cards"], cons.get("parties")), "run_started: wrong roster_sha256", i)
        _need(self.roster in (None, roster), f"run_started pins another roster than the trusted {self.roster}", i)
        for kind, cards, fmt, message, into in (
            ("site", cons["cards"], m.CARD_FORMAT, m.card_message, self.sites),
            ("party", cons.get("parties", {}), m.PARTY_CARD_FORMAT, m.party_card_message, self.parties),
        ):
            for name, card in cards.items():
                pk, sig = (card.get("public_key"), card.get("signature")) if type(card) is dict else (None, None)
                raw = bytes.fromhex(pk) if m.is_hex(pk, 64) else b""
                _need(
                    raw
                    and m.is_hex(sig, 128)
                    and card.get(kind) == name
                    and card.get("format") == fmt
                    and card.get("fingerprint") == m.sha256_hex(raw)
                    and sig_ok(raw, bytes.fromhex(sig), message(card))
                    and self.keys.get(name, (raw,))[0] == raw
                    and name not in self.sites,
                    f"run_started: the card of "
                    f"{name!r} ({kind}) is malformed, its fingerprint or self-signature does not verify, or its "
                    "id or key is taken",
                    i,
                )
                into[name] = raw
        _need(
            len(set(k := [*self.sites.values(), *self.parties.values()])) == len(k),
            "run_started: two sites or parties share one key",
            i,
        )

    def session(self, i: int, type_: str, data: dict) -> None:
        """One run, several sessions: each ends at most once; a completed run is never resumed."""
        resumed = type_ == "run_resumed"
        _need(self.started is not None, "run_resumed before run_started", i)
        _need(not resumed or data.get("run_id") == self.run_id, "run_resumed names another run than run_started", i)
        _need(not (resumed and self.final), f"run_resumed after the run completed (seq {self.ended})", i)
        _need(resumed or self.ended is None, f"a second run_ended in one session (the first at seq {self.ended})", i)
        self.resumed += [i] if resumed else []
        self.ended, self.final = (None, False) if resumed else (i, data.get("status") == "completed")

    def statement(self, i: int, type_: str, data: dict) -> None:
        """A site's (or aggregation party's) signed statement, embedded verbatim; its signature goes to the workers."""
        st = data.get("statement")
        if st is None and type_ == "privacy_spent" and data.get("party") == "server":
            return  # the coordinator's own client-level accounting
        signers, who = (self.parties, "party") if type_ in m.PARTY_STATEMENT_TYPES else (self.sites, "site")
        site, rnd = _shape(st, m.STATEMENT_SHAPE, f"{type_} entry: its {who} statement", i)["site"], st["round"]
        _need(site in signers, f"statement by {site!r}, which is not a {who} pinned by run_started", i)
        _need(
            (st["type"], st["run_id"]) == (type_, self.run_id),
            f"a {st['type']} statement of run {st['run_id']!r} in a {type_} entry of run {self.run_id!r}",
            i,
        )
        _need(st["payload_sha256"] == m.sha256_hex(canonical(st["payload"])), "payload_sha256 wrong: altered", i)
        seen = (site, type_, rnd, st["payload_sha256"] if type_ in m.REPEATABLE else "")  # e.g. refusals
        _need(seen not in self.seen, f"{site}'s {type_} statement of round {rnd} again: replayed", i)
        self.seen.add(seen)
        self.sigs.add(
            i,
            signers[site],
            bytes.fromhex(st["signature"]),
            m.statement_message(self.run_id, rnd, site, type_, st["payload_sha256"]),
            f"{site}'s statement signature does not verify under its pinned key",
        )

    def checkpoint(self, cp, name: str, stop: int, roots: dict, previous: tuple | None) -> None:
        """Coverage, signer, signature, order and Merkle root of one signed tree head."""
        size, n = cp.get("tree_size") if type(cp) is dict else None, self.entries
        last = size - 1 if type(size) is int and size > 0 else 0
        name = f"{_shape(cp, m.CHECKPOINT_SHAPE, name, last) and name} (tree size {size})"
        _need(
            size <= n,
            f"{name} covers seq {size - 1}, but the ledger ends at {n} entries: entries {n}..{size - 1} "
            "are missing (truncated)",
            n,
        )
        if size > stop:
            return  # an earlier failure already lies inside this prefix
        key, seq = self.keys.get(cp["signer"], (b"", size))
        _need(seq < size, f"{name}: signer {cp['signer']!r} is not registered within the entries it covers", last)
        if not sig_ok(
            key, bytes.fromhex(cp["signature"]), m.checkpoint_message(size, cp["root_hash"], cp["ts"], cp["signer"])
        ):
            _need(
                previous,
                f"{name} does not verify under the key registered here: the chain was rewritten under "
                "new keys, or the trusted head is not genuine",
                seq,
            )  # a head we trust: the registration lies
            _need(False, f"{name}: signature does not verify under {cp['signer']!r}'s registered key", last)
        _need(not previous or (size > previous[0] and cp["ts"] >= previous[1]), f"{name}: out of order", last)
        _need(cp["ts"] >= roots[size][1], f"{name}: signed at {cp['ts']}, before the last entry it covers", last)
        _need(
            roots[size][0].hex() == cp["root_hash"],
            f"{name}: root {cp['root_hash'][:16]}... disagrees with the "
            f"Merkle root of entries 0..{size - 1} ({roots[size][0].hex()[:16]}...)",
            last,
        )

    def witnesses(self, cps: list[dict], cosigs: list, open_tail: bool = False) -> int:
        """Cosignatures valid, by pinned sites; a quorum on the run's checkpoints, which cover the run
        (but the last of a session that crashed; ``open_tail``: the ledger of an interrupted run)."""
        roots, count, sigs = {cp["tree_size"]: cp["root_hash"] for cp in cps}, {}, Signatures(self.jobs)
        for j, c in enumerate(cosigs):
            size, who = _shape(c, m.COSIGNATURE_SHAPE, f"cosignature {j}")["tree_size"], c["witness"]
            _need(
                size in roots and who in self.sites,
                f"cosignature {j}: {who!r} cosigned tree size {size}, but only "
                "a pinned site cosigns, and only a checkpoint of this ledger",
                size - 1 if size in roots else None,
            )
            body = m.checkpoint_body(m.origin_of(self.run_id), size, roots[size])
            sigs.add(
                size - 1,
                self.sites[who],
                bytes.fromhex(c["signature"]),
                m.cosignature_message(body, c["timestamp"]),
                f"cosignature {j}: {who}'s cosignature of tree size {size} does not verify (pinned key)",
            )
            count.setdefault(size, set()).add(who)
        for seq, why in sigs.failures():
            raise VerificationError(why, seq)
        covered, sizes = self.entries if self.started is None else self.started, [*roots, self.entries + 1]
        breaks = self.resumed + [self.entries] * open_tail  # where a session ended unwitnessed (a crash)
        for j, size in enumerate(sizes[:-1]):  # by size: from the first after run_started to the last run_ended
            if self.started is not None and size > self.started and (self.ended is None or covered <= self.ended):
                quorate = len(count.get(size, ())) >= self.quorum
                _need(
                    quorate or any(size <= q < sizes[j + 1] for q in breaks),
                    f"checkpoint (tree size {size}) is cosigned by "
                    f"{len(count.get(size, ()))} pinned sites; the witness policy needs {self.quorum}",
                    size - 1,
                )
                covered = size if quorate else covered
        last = self.entries - 1 if self.ended is None else self.ended
        _need(
            open_tail or covered > last,
            f"entries {covered}..{last} of the run lie under no witnessed checkpoint",
            covered,
        )
        return sum(len(count.get(size, ())) >= max(self.quorum, 1) for size in roots)


def verify(
    entries,
    checkpoints: list,
    cosignatures: list = (),
    *,
    trusted_head=None,
    has_head: bool = False,
    trusted_keys: dict | None = None,
    roster: str | None = None,
    witnesses: int | None = None,
    jobs: int | None = None,
    open_tail: bool = False,
) -> Run:
    """Check entry rows ``(seq, ts, actor, type, payload text, prev_hash, entry_hash, signature)``, checkpoint
    and cosignature dicts; ``has_head``: a trusted head was given (so that ``null`` there fails). The summary
    of a ledger that verifies is ``run.result()``; ``open_tail``: the run was interrupted, its entries after the
    last witnessed checkpoint await the witnesses of the session that resumes it."""
    run, failures, roots, stack, prev, last_ts = Run(trusted_keys, roster, jobs), [], {}, [], m.GENESIS, ""
    want = {c["tree_size"] for c in [*checkpoints, trusted_head] if type(c) is dict and type(c.get("tree_size")) is int}
    try:
        for i, row in enumerate(entries):
            data, actor, type_ = run.entry(i, row, prev, last_ts), row[2], row[3]
            _need(i or type_ == "actor_key", "entry 0 must be the registrar's own actor_key entry", i)
            if type_ == "actor_key":
                run.registration(i, actor, data)
            elif type_ == "run_started":
                run.run_started(i, data)
            elif type_ in m.STATEMENT_TYPES or type_ in m.PARTY_STATEMENT_TYPES:
                run.statement(i, type_, data)
            elif type_ == "run_resumed" or type_ == "run_ended" and run.started is not None:
                run.session(i, type_, data)
            _need(actor in run.keys, f"actor {actor!r} has no actor_key entry before this one", i)
            leaf = bytes.fromhex(row[6] + row[7])
            run.sigs.add(
                i,
                run.keys[actor][0],
                leaf[32:],
                leaf[:32],
                "signature does not verify under the actor's registered key",
            )
            push(stack, hashlib.sha256(b"\x00" + leaf).digest())
            if i + 1 in want:
                roots[i + 1] = (fold(stack), row[1])
            prev, last_ts, run.entries = row[6], row[1], i + 1
    except VerificationError as err:
        failures.append(err)
    finally:
        failures += [VerificationError(why, seq) for seq, why in run.sigs.failures()]
    stop, previous = min([f.seq for f in failures] + [run.entries]), (0, "")
    for j, cp in enumerate([*checkpoints, trusted_head] if has_head else checkpoints):
        try:
            head = j == len(checkpoints)
            run.checkpoint(cp, "trusted head" if head else f"checkpoint {j}", stop, roots, None if head else previous)
        except VerificationError as err:
            failures.append(err)
            break
        previous = (cp["tree_size"], cp["ts"])
    if failures:
        raise min(failures, key=lambda f: f.seq)
    run.quorum = (len(run.sites) // 2 + 1 if run.sites else 0) if witnesses is None else witnesses
    run.witnessed, run.checkpoints, run.root = (
        run.witnesses(checkpoints, cosignatures, open_tail),
        len(checkpoints),
        fold(stack).hex(),
    )
    return run


def verify_path(path, **anchors) -> Result:
    """Verify the bundle at ``path`` with :func:`.verify_bundle.verify_bundle`'s anchors and policy."""
    from pharmafl.audit.verify_bundle import verify_bundle  # reading the files; packaging checks

    return verify_bundle(path, **anchors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pharmafl.audit.verify", description=__doc__.split("\n")[0])
    parser.add_argument("path", help="an exported bundle directory (with the full install, also a database)")
    for flag, kind in (
        ("--trusted-head", {"help": "a checkpoint received out of band"}),
        ("--trusted-keys", {"help": "a keys.json (or bundle) received out of band"}),
        ("--roster", {"help": "the consortium.json the sites agreed to"}),
        ("--witnesses", {"type": int, "help": "cosignatures each checkpoint of the run needs (default: most)"}),
        ("--jobs", {"type": int, "help": "processes for signature checks (default: all cores)"}),
        ("--json", {"action": "store_true", "help": "print the result (or the failure) as one JSON object"}),
    ):
        parser.add_argument(flag, **kind)
    args = vars(parser.parse_args(argv))
    as_json = args.pop("json")
    try:
        result = verify_path(args.pop("path"), **args)
        return print(json.dumps(result.as_dict()) if as_json else result.line()) or 0
    except VerificationError as err:
        return print(json.dumps(err.as_dict()) if as_json else f"{'ERROR' if err.unreadable else 'FAIL'}: {err}") or (
            2 if err.unreadable else 1
        )


if __name__ == "__main__":  # run the package's copy of this module, whose errors dbsource raises too
    from pharmafl.audit.verify import main as package_main

    sys.exit(package_main())
