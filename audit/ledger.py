"""The ledger: append signed, hash-chained entries; write signed Merkle checkpoints.

Usage::

    from pharmafl.audit import KeyStore, Ledger
    keys = KeyStore("runs/r1/keys", passphrase)
    with Ledger.open("runs/r1/ledger.db", keys) as ledger:
        ledger.record("user:alice", "e_signature", report="r1.pdf", meaning="approved")
        ledger.checkpoint()

An append is one database transaction. It reads the chain head under the write lock,
registers any actor that has no ``actor_key`` entry yet (signed by the registrar, the
actor of entry 0, with the new key's proof of possession), builds each entry on the
previous one (:mod:`pharmafl.audit.records`), signs it with the actor's key and inserts it.
Either every entry of the call is committed or none is; payloads are validated before the
transaction starts, so a bad payload writes nothing. If another writer wins the race for
a sequence number, the unique key refuses the insert and the append is rebuilt on the
new head and retried. ``on_commit(conn, entries)`` lets a caller write its own rows in
the same transaction (the users table of :mod:`pharmafl.compliance`): if it raises,
nothing is written.

The registrar never registers a ``user:*`` key: a user enrols herself
(:meth:`Ledger.enrol`), with an ``actor_key`` entry signed by her own key.

Witnesses (the sites, :mod:`pharmafl.audit.witness`) cosign checkpoints:
:meth:`Ledger.witness_request` builds what a witness needs, :meth:`Ledger.add_cosignatures`
checks and stores what it answers (``ledger_cosignatures``).

Timestamps never go backwards: an entry gets ``max(now, previous ts)``.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from hashlib import sha256
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy.exc import IntegrityError, OperationalError

from pharmafl.audit.canonical import canonical_json
from pharmafl.audit.errors import LedgerError
from pharmafl.audit.keys import raw_public_key
from pharmafl.audit.merkle import CompactRange, MerkleTree
from pharmafl.audit.messages import checkpoint_body, cosignature_message
from pharmafl.audit.records import (
    ACTOR_KEY,
    ALGORITHM,
    Checkpoint,
    Cosignature,
    Entry,
    check_actor,
    check_type,
    checkpoint_message,
    entry_message,
    fingerprint,
    format_ts,
    key_proof_message,
)
from pharmafl.audit.storage import Storage, describe, refuse_missing, resolve_target

MAX_ATTEMPTS = 50
DEFAULT_REGISTRAR = "server"
USER_PREFIX = "user:"
_SIGNATURE_HEX = re.compile(r"[0-9a-f]{128}")

OnCommit = Callable[[Any, list[Entry]], None]
"""``on_commit(conn, entries)``: runs inside the write transaction, after ``entries`` are
inserted; raising rolls everything back. It runs again if the transaction is retried."""


class KeySource(Protocol):
    """Where the ledger gets private keys: :class:`~pharmafl.audit.keys.KeyStore` or alike."""

    def get_or_create(self, actor: str) -> Ed25519PrivateKey: ...


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class _View:
    """What this process knows of the committed ledger; copied per transaction, kept on commit."""

    registered: dict[str, tuple[str, int]] = field(default_factory=dict)  # actor -> (key hex, seq)
    known: int = 0  # registrations are known for entries [0, known)
    tree: CompactRange = field(default_factory=CompactRange)  # leaves [0, tree.size)

    def copy(self) -> _View:
        return _View(dict(self.registered), self.known, self.tree.copy())

    def catch_up(self, conn: Any, size: int, *, tree: bool = False) -> None:
        if self.known < size:
            for entry in Storage.entries(conn, self.known, size, type_=ACTOR_KEY):
                data = entry.data
                self.registered.setdefault(data["actor"], (data["public_key"], entry.seq))
            self.known = size
        if tree and self.tree.size < size:
            for entry in Storage.entries(conn, self.tree.size, size):
                self.tree.append(entry.leaf_hash())


class Ledger:
    """An append-only, signed, hash-chained ledger in SQLite or PostgreSQL.

    Open it with :meth:`open`; without ``keys`` it is read-only.
    """

    def __init__(
        self,
        storage: Storage,
        keys: KeySource | None = None,
        *,
        registrar: str | None = None,
        clock: Callable[[], datetime] = utc_now,
    ):
        self.storage = storage
        self.keys = keys
        self.clock = clock
        self._view = _View()
        self._merkle = MerkleTree()  # leaves of committed entries, for witness requests
        with storage.read() as conn:
            self._view.catch_up(conn, Storage.head(conn)[0])
        founder = next((a for a, (_, seq) in self._view.registered.items() if seq == 0), None)
        if registrar is not None and founder is not None and registrar != founder:
            raise LedgerError(
                f"ledger at {describe(storage.url)} was founded by registrar {founder!r}, not "
                f"{registrar!r}; open it with registrar={founder!r} (or leave registrar unset)"
            )
        self.registrar = check_actor(founder or registrar or DEFAULT_REGISTRAR)

    @classmethod
    def open(
        cls,
        target: str | os.PathLike,
        keys: KeySource | None = None,
        *,
        registrar: str | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> Ledger:
        """Open the ledger at a SQLite path, a run directory (``ledger.db``) or a database URL.

        With ``keys`` the tables are created if missing and the ledger accepts appends;
        without, it must already exist and is read-only. ``registrar`` (default
        ``"server"``) names the actor that founds a new ledger and registers the others.
        """
        storage = Storage(resolve_target(target))
        if keys is None:
            refuse_missing(storage)
        else:
            storage.create_schema()
        return cls(storage, keys, registrar=registrar, clock=clock)

    # -- writing -----------------------------------------------------------------------

    def append(self, actor: str, type: str, payload: Mapping[str, Any]) -> Entry:
        """Append one entry signed by ``actor``; returns it as stored."""
        return self.append_many([(actor, type, payload)])[0]

    def record(self, actor: str, type: str, /, **payload: Any) -> Entry:
        """``append(actor, type, payload)`` with the payload as keyword arguments."""
        return self.append(actor, type, payload)

    def append_many(
        self, items: Iterable[tuple[str, str, Mapping[str, Any]]], *, on_commit: OnCommit | None = None
    ) -> list[Entry]:
        """Append a batch in one transaction (the fast path); returns one entry per item.

        ``on_commit(conn, entries)`` (see :data:`OnCommit`) writes the caller's own rows in
        the same transaction; if it raises, nothing is written and its error propagates.
        """
        prepared = [self._prepare(i, item) for i, item in enumerate(items)]
        if not prepared:
            return []
        keys = self._keys_for({actor for actor, _, _ in prepared} | {self.registrar})
        made, _ = self._write(prepared, keys, on_commit=on_commit)
        return [e for e in made if e.type != ACTOR_KEY]

    def register(self, actor: str) -> Entry | None:
        """Register ``actor``'s public key now (normally done before its first entry);
        returns the ``actor_key`` entry, or None if it was registered already.
        A ``user:*`` actor is refused: users enrol themselves (:meth:`enrol`)."""
        keys = self._keys_for({check_actor(actor), self.registrar})
        made, _ = self._write([], keys, also=[actor])
        return made[-1] if made else None

    def enrol(
        self, actor: str, key: Ed25519PrivateKey, enrolment: Mapping[str, Any], *, on_commit: OnCommit | None = None
    ) -> Entry:
        """Register ``actor``'s own key with an ``actor_key`` entry signed by that key.

        The payload is ``{actor, algorithm, enrolment, fingerprint, proof, public_key}``:
        ``proof`` is the key's proof of possession (``key_proof_message``) and
        ``enrolment`` what the caller binds the registration to (e.g. the proof over the
        one-time code an admin committed to). Refuses an actor already registered.
        ``on_commit`` as in :meth:`append_many`. Returns the entry.
        """
        if check_actor(actor) == self.registrar:
            raise LedgerError(
                f"{actor!r} is this ledger's registrar, which registers itself at entry 0; "
                "enrol users and other actors under their own ids"
            )
        if not isinstance(key, Ed25519PrivateKey):
            raise LedgerError(f"enrolment of {actor!r}: key must be an Ed25519PrivateKey, got {type(key).__name__}")
        if not isinstance(enrolment, Mapping):
            raise LedgerError(
                f"enrolment of {actor!r}: enrolment must be a mapping (a JSON object), got {type(enrolment).__name__}"
            )
        public = raw_public_key(key).hex()
        payload = {
            "actor": actor,
            "algorithm": ALGORITHM,
            "enrolment": dict(enrolment),
            "fingerprint": fingerprint(bytes.fromhex(public)),
            "proof": key.sign(key_proof_message(actor, public)).hex(),
            "public_key": public,
        }
        text = canonical_json(payload, where=f"enrolment of {actor!r}")
        keys = self._keys_for({self.registrar})
        keys[actor] = key
        made, _ = self._write([], keys, enrol=(actor, text), on_commit=on_commit)
        return made[-1]

    def checkpoint(self, signer: str | None = None) -> Checkpoint:
        """Sign and store the tree head over every entry so far; returns it.

        Registers ``signer`` (default: the registrar) first if needed. If the head is
        already checkpointed, returns that checkpoint.
        """
        signer = check_actor(signer or self.registrar)
        keys = self._keys_for({signer, self.registrar})
        _, cp = self._write([], keys, also=[signer], checkpoint_signer=signer)
        return cp

    def _prepare(self, index: int, item: Any) -> tuple[str, str, str]:
        try:
            actor, type_, payload = item
        except (TypeError, ValueError):
            raise LedgerError(f"batch item {index}: expected (actor, type, payload), got {item!r:.80}") from None
        check_actor(actor)
        if check_type(type_) == ACTOR_KEY:
            raise LedgerError(
                f"batch item {index}: 'actor_key' entries are written by the ledger itself; "
                "call Ledger.register(actor) instead"
            )
        if not isinstance(payload, Mapping):
            raise LedgerError(
                f"batch item {index} ({type_!r} by {actor!r}): payload must be a mapping "
                f"(a JSON object), got {type(payload).__name__}"
            )
        return actor, type_, canonical_json(payload, where=f"payload of {type_!r} by {actor!r}")

    def _writable(self) -> None:
        if self.keys is None:
            raise LedgerError(
                f"ledger at {describe(self.storage.url)} was opened read-only; pass "
                "keys=KeyStore(path, passphrase) to Ledger.open to append"
            )

    def _keys_for(self, actors: set[str]) -> dict[str, Ed25519PrivateKey]:
        self._writable()
        users = {a for a in actors if a.startswith(USER_PREFIX) and a not in self._view.registered}
        if users:
            with self.storage.read() as conn:
                self._view.catch_up(conn, Storage.head(conn)[0])
            missing = sorted(users - self._view.registered.keys())
            if missing:
                raise _user_not_enrolled(missing[0])
        keys = {actor: self.keys.get_or_create(actor) for actor in sorted(actors)}
        for actor, key in keys.items():
            _check_key(actor, key, self._view.registered)
        return keys

    def _write(
        self,
        prepared: list[tuple[str, str, str]],
        keys: dict[str, Ed25519PrivateKey],
        also: Iterable[str] = (),
        checkpoint_signer: str | None = None,
        *,
        enrol: tuple[str, str] | None = None,
        on_commit: OnCommit | None = None,
    ) -> tuple[list[Entry], Checkpoint | None]:
        """One write transaction, rebuilt on the new head and retried if a writer raced us."""
        for attempt in range(MAX_ATTEMPTS):
            view = self._view.copy()
            try:
                with self.storage.write() as conn:
                    size, prev, last_ts = Storage.head(conn)
                    view.catch_up(conn, size, tree=checkpoint_signer is not None)
                    made = self._build(size, prev, last_ts, prepared, keys, also, view.registered, enrol)
                    Storage.insert_entries(conn, made)
                    if on_commit is not None:
                        _run_hook(on_commit, conn, made[-1:] if enrol else [e for e in made if e.type != ACTOR_KEY])
                    if view.tree.size == size:
                        for entry in made:
                            view.tree.append(entry.leaf_hash())
                    view.known = size + len(made)
                    cp = None
                    if checkpoint_signer is not None:
                        last = made[-1].ts if made else last_ts
                        cp = self._checkpoint(conn, view.tree, last, checkpoint_signer, keys[checkpoint_signer])
                self._view = view
                return made, cp
            except _HookFailed as failed:
                raise failed.error from None
            except (IntegrityError, OperationalError) as err:
                if attempt + 1 == MAX_ATTEMPTS:
                    raise LedgerError(
                        f"writing to {describe(self.storage.url)} failed {MAX_ATTEMPTS} times "
                        f"({getattr(err, 'orig', err)!r}); another writer may be holding the lock or "
                        "writing without the chain rules"
                    ) from err
                time.sleep(random.uniform(0, min(0.2, 0.002 * 2**attempt)))
        raise AssertionError("unreachable")

    def _build(
        self,
        seq: int,
        prev: str,
        last_ts: str | None,
        prepared: list[tuple[str, str, str]],
        keys: dict[str, Ed25519PrivateKey],
        also: Iterable[str],
        registered: dict[str, tuple[str, int]],
        enrol: tuple[str, str] | None = None,
    ) -> list[Entry]:
        """Entries for ``prepared`` on top of the head, registrations inserted where due;
        with ``enrol=(actor, payload)``, that actor's self-signed ``actor_key`` entry."""
        now = format_ts(self.clock())
        ts = now if last_ts is None or now > last_ts else last_ts
        made: list[Entry] = []

        def add(actor: str, type_: str, payload: str) -> None:
            nonlocal seq, prev
            entry_hash = sha256(entry_message(seq, ts, actor, type_, payload, prev)).hexdigest()
            signature = keys[actor].sign(bytes.fromhex(entry_hash)).hex()
            made.append(Entry(seq, ts, actor, type_, payload, prev, entry_hash, signature))
            seq, prev = seq + 1, entry_hash

        def ensure(actor: str) -> None:
            if actor in registered:
                return _check_key(actor, keys[actor], registered)
            if actor.startswith(USER_PREFIX):
                raise _user_not_enrolled(actor)
            if actor != self.registrar:
                ensure(self.registrar)
            public = raw_public_key(keys[actor]).hex()
            proof = keys[actor].sign(key_proof_message(actor, public)).hex()
            payload = {
                "actor": actor,
                "algorithm": ALGORITHM,
                "fingerprint": fingerprint(bytes.fromhex(public)),
                "proof": proof,
                "public_key": public,
            }
            registered[actor] = (public, seq)
            add(self.registrar, ACTOR_KEY, canonical_json(payload))

        if enrol is not None:
            actor, payload = enrol
            if actor in registered:
                raise LedgerError(
                    f"{actor!r} is already registered (actor_key at seq {registered[actor][1]}); an actor's key "
                    "is registered once: enrol under a new actor id"
                )
            if actor != self.registrar:
                ensure(self.registrar)
            registered[actor] = (json.loads(payload)["public_key"], seq)
            add(actor, ACTOR_KEY, payload)
        for actor in also:
            ensure(actor)
        for actor, type_, payload in prepared:
            ensure(actor)
            add(actor, type_, payload)
        return made

    def _checkpoint(
        self, conn: Any, tree: CompactRange, last_ts: str | None, signer: str, key: Ed25519PrivateKey
    ) -> Checkpoint:
        existing = Storage.checkpoints(conn)
        if existing and existing[-1].tree_size == tree.size:
            return existing[-1]
        ts = max([format_ts(self.clock())] + ([last_ts] if last_ts else []) + [c.ts for c in existing[-1:]])
        root = tree.root().hex()
        cp = Checkpoint(tree.size, root, ts, signer, key.sign(checkpoint_message(tree.size, root, ts, signer)).hex())
        Storage.insert_checkpoint(conn, cp)
        return cp

    # -- reading -----------------------------------------------------------------------

    def __len__(self) -> int:
        with self.storage.read() as conn:
            return Storage.head(conn)[0]

    def entries(self, start: int = 0, stop: int | None = None) -> Iterator[Entry]:
        """Entries with ``start <= seq < stop`` in order, from one consistent snapshot."""
        with self.storage.read() as conn:
            yield from Storage.entries(conn, start, stop)

    def checkpoints(self) -> list[Checkpoint]:
        """Every signed tree head, by tree size."""
        with self.storage.read() as conn:
            return Storage.checkpoints(conn)

    def cosignatures(self) -> list[Cosignature]:
        """Every stored witness cosignature, by ``(tree_size, witness)``."""
        with self.storage.read() as conn:
            return Storage.cosignatures(conn)

    def add_cosignatures(
        self, items: Iterable[Mapping[str, Any]], *, witness_keys: Mapping[str, bytes], origin: str
    ) -> dict[str, str]:
        """Check witnesses' answers and store the valid ones, in one transaction.

        Each item is ``{"witness", "tree_size", "timestamp", "signature"}`` (what
        :meth:`pharmafl.audit.witness.Witness.add_checkpoint` returns): an Ed25519
        ``cosignature/v1`` signature (hex) by ``witness_keys[witness]`` (raw 32 bytes) over
        the C2SP body of the stored checkpoint of that size under ``origin``. A cosignature
        already stored identically is accepted again (idempotent). Returns
        ``{witness: reason}`` for every refused item (the first reason per witness); those
        are not stored.
        """
        self._writable()
        with self.storage.write() as conn:
            roots = {cp.tree_size: cp.root_hash for cp in Storage.checkpoints(conn)}
            stored = {(c.tree_size, c.witness): c for c in Storage.cosignatures(conn)}
            refused: dict[str, str] = {}
            fresh: list[Cosignature] = []
            for item in items:
                witness = item.get("witness") if isinstance(item, Mapping) else None
                name = witness if isinstance(witness, str) else repr(witness)
                try:
                    cosig = _check_cosignature(item, witness_keys, origin, roots)
                except LedgerError as err:
                    refused.setdefault(name, str(err))
                    continue
                have = stored.get((cosig.tree_size, cosig.witness))
                if have is not None and have != cosig:
                    refused.setdefault(
                        name,
                        f"{name} already has a different cosignature of tree size "
                        f"{cosig.tree_size} in the ledger (timestamp {have.timestamp})",
                    )
                elif have is None:
                    stored[(cosig.tree_size, cosig.witness)] = cosig
                    fresh.append(cosig)
            Storage.insert_cosignatures(conn, fresh)
        return refused

    def witness_request(
        self, old_size: int, *, origin: str, log_signer: str, anchor_seq: int | None, alternatives: Iterable[int] = ()
    ) -> dict[str, Any]:
        """What a witness needs to cosign the latest checkpoint (docs/trust-domains.md).

        ``{"origin", "checkpoint", "log_key", "old_size", "proof"}``: the checkpoint as
        exported, the hex public key registered for ``log_signer`` (who must have signed
        it), and the RFC 9162 consistency proof from ``old_size`` (hex; empty for 0 or the
        same size). With ``anchor_seq`` also ``"anchor": {"entry", "proof"}``: that entry in
        export form and its inclusion proof in the checkpoint's tree (a witness's first
        request for an origin carries the ``run_started`` entry). ``alternatives``: later sizes
        the witness may have cosigned without the log holding its answer (it was lost: the
        coordinator crashed, or the disk was full); each gets its proof in ``"alternatives"``,
        and the witness extends from the one it is at.
        """
        with self.storage.read() as conn:
            checkpoints = Storage.checkpoints(conn)
            if not checkpoints:
                raise LedgerError(f"{self!r} has no checkpoint to witness yet; call checkpoint() first")
            cp = checkpoints[-1]
            if cp.signer != log_signer:
                raise LedgerError(
                    f"the latest checkpoint (tree size {cp.tree_size}) is signed by {cp.signer!r}, "
                    f"not the log signer {log_signer!r}; witnesses cosign only the log's checkpoints"
                )
            self._view.catch_up(conn, cp.tree_size)
            if log_signer not in self._view.registered:
                raise LedgerError(f"log signer {log_signer!r} has no registered key in {self!r}")
            if isinstance(old_size, bool) or not isinstance(old_size, int) or not 0 <= old_size <= cp.tree_size:
                raise LedgerError(
                    f"old_size {old_size!r} must be an int within 0..{cp.tree_size} "
                    "(the size the witness last cosigned)"
                )
            if anchor_seq is not None and (
                isinstance(anchor_seq, bool) or not isinstance(anchor_seq, int) or not 0 <= anchor_seq < cp.tree_size
            ):
                raise LedgerError(
                    f"anchor_seq {anchor_seq!r} must be an entry under the checkpoint (0..{cp.tree_size - 1})"
                )
            for entry in Storage.entries(conn, len(self._merkle), cp.tree_size):
                self._merkle.append(entry.leaf_hash())
            anchor = None if anchor_seq is None else next(Storage.entries(conn, anchor_seq, anchor_seq + 1))
        if self._merkle.root(cp.tree_size).hex() != cp.root_hash:
            raise LedgerError(
                f"the entries of {self!r} no longer hash to the root of checkpoint "
                f"{cp.tree_size}; the ledger was altered: run `pharmafl ledger verify`"
            )
        request: dict[str, Any] = {
            "origin": origin,
            "checkpoint": json.loads(cp.to_json_line()),
            "log_key": self._view.registered[log_signer][0],
            "old_size": old_size,
            "proof": [h.hex() for h in self._merkle.consistency_proof(old_size, cp.tree_size)],
        }
        if anchor is not None:
            request["anchor"] = {
                "entry": json.loads(anchor.to_json_line()),
                "proof": [h.hex() for h in self._merkle.inclusion_proof(anchor_seq, cp.tree_size)],
            }
        others = sorted({n for n in alternatives if isinstance(n, int) and old_size < n < cp.tree_size})
        if others:
            request["alternatives"] = [
                {"old_size": n, "proof": [h.hex() for h in self._merkle.consistency_proof(n, cp.tree_size)]}
                for n in others
            ]
        return request

    def registered_keys(self) -> dict[str, dict[str, Any]]:
        """``actor -> {public_key, fingerprint, seq}`` as registered in the ledger."""
        with self.storage.read() as conn:
            self._view.catch_up(conn, Storage.head(conn)[0])
        return {
            actor: {"public_key": pk, "fingerprint": fingerprint(bytes.fromhex(pk)), "seq": seq}
            for actor, (pk, seq) in sorted(self._view.registered.items())
        }

    def close(self) -> None:
        self.storage.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Ledger({describe(self.storage.url)!r}, registrar={self.registrar!r})"


class _HookFailed(Exception):
    """Internal: carries an ``on_commit`` error past the retry loop (never retried)."""

    def __init__(self, error: BaseException):
        self.error = error


def _run_hook(on_commit: OnCommit, conn: Any, entries: list[Entry]) -> None:
    try:
        on_commit(conn, entries)
    except Exception as err:  # noqa: BLE001 - re-raised unchanged by _write after the rollback
        raise _HookFailed(err) from err


def _user_not_enrolled(actor: str) -> LedgerError:
    return LedgerError(
        f"{actor!r} has no registered key and the registrar never registers a user key: the user enrols "
        "her own key first with Ledger.enrol(actor, key, enrolment)"
    )


def _check_cosignature(
    item: Any, witness_keys: Mapping[str, bytes], origin: str, roots: Mapping[int, str]
) -> Cosignature:
    """The item as a :class:`Cosignature` if it verifies; :class:`LedgerError` saying why not."""
    if not isinstance(item, Mapping) or set(item) != {"witness", "tree_size", "timestamp", "signature"}:
        got = sorted(item) if isinstance(item, Mapping) else type(item).__name__
        raise LedgerError(f"a cosignature is {{witness, tree_size, timestamp, signature}}, got {got}")
    witness, size, stamp, signature = (item[k] for k in ("witness", "tree_size", "timestamp", "signature"))
    if not isinstance(witness, str) or witness not in witness_keys:
        raise LedgerError(f"witness {witness!r} is not pinned for this log (pinned: {', '.join(sorted(witness_keys))})")
    if isinstance(size, bool) or not isinstance(size, int) or size not in roots:
        raise LedgerError(f"{witness} cosigned tree size {size!r}, which is not a checkpoint of this ledger")
    if isinstance(stamp, bool) or not isinstance(stamp, int) or not 0 <= stamp < 2**63:
        raise LedgerError(f"{witness}: timestamp {stamp!r} is not a UNIX time in seconds (0 <= t < 2**63)")
    if not isinstance(signature, str) or not _SIGNATURE_HEX.fullmatch(signature):
        raise LedgerError(f"{witness}: signature must be 128 lowercase hex digits (Ed25519)")
    message = cosignature_message(checkpoint_body(origin, size, roots[size]), stamp)
    try:
        Ed25519PublicKey.from_public_bytes(bytes(witness_keys[witness])).verify(bytes.fromhex(signature), message)
    except (InvalidSignature, ValueError):
        raise LedgerError(
            f"{witness}: cosignature of tree size {size} does not verify under its pinned key for origin {origin!r}"
        ) from None
    return Cosignature(size, witness, stamp, signature)


def _check_key(actor: str, key: Ed25519PrivateKey, registered: dict[str, tuple[str, int]]) -> None:
    if actor in registered and registered[actor][0] != raw_public_key(key).hex():
        raise _key_mismatch(actor, key, registered[actor])


def _key_mismatch(actor: str, key: Ed25519PrivateKey, registered: tuple[str, int]) -> LedgerError:
    have = fingerprint(raw_public_key(key))
    want = fingerprint(bytes.fromhex(registered[0]))
    return LedgerError(
        f"the key for {actor!r} in the key store (fingerprint {have[:16]}...) is not the one registered "
        f"at seq {registered[1]} (fingerprint {want[:16]}...); restore the original key file, or record "
        "under a new actor id (an actor's key is registered once)"
    )
