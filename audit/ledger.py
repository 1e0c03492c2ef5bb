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
new head and retried.

Timestamps never go backwards: an entry gets ``max(now, previous ts)``.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from hashlib import sha256
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.exc import IntegrityError, OperationalError

from pharmafl.audit.canonical import canonical_json
from pharmafl.audit.errors import LedgerError
from pharmafl.audit.keys import raw_public_key
from pharmafl.audit.merkle import CompactRange
from pharmafl.audit.records import (
    ACTOR_KEY,
    ALGORITHM,
    Checkpoint,
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


class KeySource(Protocol):
    """Where the ledger gets private keys: :class:`~pharmafl.audit.keys.KeyStore` or alike."""

    def get_or_create(self, actor: str) -> Ed25519PrivateKey: ...


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


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

    def __init__(self, storage: Storage, keys: KeySource | None = None, *,
                 registrar: str | None = None, clock: Callable[[], datetime] = utc_now):
        self.storage = storage
        self.keys = keys
        self.clock = clock
        self._view = _View()
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
    def open(cls, target: str | os.PathLike, keys: KeySource | None = None, *,
             registrar: str | None = None, clock: Callable[[], datetime] = utc_now) -> Ledger:
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

    def append_many(self, items: Iterable[tuple[str, str, Mapping[str, Any]]]) -> list[Entry]:
        """Append a batch in one transaction (the fast path); returns one entry per item."""
        prepared = [self._prepare(i, item) for i, item in enumerate(items)]
        if not prepared:
            return []
        keys = self._keys_for({actor for actor, _, _ in prepared} | {self.registrar})
        made, _ = self._write(prepared, keys)
        return [e for e in made if e.type != ACTOR_KEY]

    def register(self, actor: str) -> Entry | None:
        """Register ``actor``'s public key now (normally done before its first entry);
        returns the ``actor_key`` entry, or None if it was registered already."""
        keys = self._keys_for({check_actor(actor), self.registrar})
        made, _ = self._write([], keys, also=[actor])
        return made[-1] if made else None

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
            raise LedgerError(f"batch item {index}: 'actor_key' entries are written by the ledger itself; "
                              "call Ledger.register(actor) instead")
        if not isinstance(payload, Mapping):
            raise LedgerError(f"batch item {index} ({type_!r} by {actor!r}): payload must be a mapping "
                              f"(a JSON object), got {type(payload).__name__}")
        return actor, type_, canonical_json(payload, where=f"payload of {type_!r} by {actor!r}")

    def _keys_for(self, actors: set[str]) -> dict[str, Ed25519PrivateKey]:
        if self.keys is None:
            raise LedgerError(
                f"ledger at {describe(self.storage.url)} was opened read-only; pass "
                "keys=KeyStore(path, passphrase) to Ledger.open to append"
            )
        keys = {actor: self.keys.get_or_create(actor) for actor in sorted(actors)}
        for actor, key in keys.items():
            _check_key(actor, key, self._view.registered)
        return keys

    def _write(self, prepared: list[tuple[str, str, str]], keys: dict[str, Ed25519PrivateKey],
               also: Iterable[str] = (), checkpoint_signer: str | None = None,
               ) -> tuple[list[Entry], Checkpoint | None]:
        """One write transaction, rebuilt on the new head and retried if a writer raced us."""
        for attempt in range(MAX_ATTEMPTS):
            view = self._view.copy()
            try:
                with self.storage.write() as conn:
                    size, prev, last_ts = Storage.head(conn)
                    view.catch_up(conn, size, tree=checkpoint_signer is not None)
                    made = self._build(size, prev, last_ts, prepared, keys, also, view.registered)
                    Storage.insert_entries(conn, made)
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
            except (IntegrityError, OperationalError) as err:
                if attempt + 1 == MAX_ATTEMPTS:
                    raise LedgerError(
                        f"writing to {describe(self.storage.url)} failed {MAX_ATTEMPTS} times "
                        f"({getattr(err, 'orig', err)!r}); another writer may be holding the lock or "
                        "writing without the chain rules"
                    ) from err
                time.sleep(random.uniform(0, min(0.2, 0.002 * 2**attempt)))
        raise AssertionError("unreachable")

    def _build(self, seq: int, prev: str, last_ts: str | None, prepared: list[tuple[str, str, str]],
               keys: dict[str, Ed25519PrivateKey], also: Iterable[str],
               registered: dict[str, tuple[str, int]]) -> list[Entry]:
        """Entries for ``prepared`` on top of the head, registrations inserted where due."""
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
            if actor != self.registrar:
                ensure(self.registrar)
            public = raw_public_key(keys[actor]).hex()
            proof = keys[actor].sign(key_proof_message(actor, public)).hex()
            payload = {"actor": actor, "algorithm": ALGORITHM, "fingerprint": fingerprint(bytes.fromhex(public)),
                       "proof": proof, "public_key": public}
            registered[actor] = (public, seq)
            add(self.registrar, ACTOR_KEY, canonical_json(payload))

        for actor in also:
            ensure(actor)
        for actor, type_, payload in prepared:
            ensure(actor)
            add(actor, type_, payload)
        return made

    def _checkpoint(self, conn: Any, tree: CompactRange, last_ts: str | None, signer: str,
                    key: Ed25519PrivateKey) -> Checkpoint:
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

    def registered_keys(self) -> dict[str, dict[str, Any]]:
        """``actor -> {public_key, fingerprint, seq}`` as registered in the ledger."""
        with self.storage.read() as conn:
            self._view.catch_up(conn, Storage.head(conn)[0])
        return {actor: {"public_key": pk, "fingerprint": fingerprint(bytes.fromhex(pk)), "seq": seq}
                for actor, (pk, seq) in sorted(self._view.registered.items())}

    def close(self) -> None:
        self.storage.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Ledger({describe(self.storage.url)!r}, registrar={self.registrar!r})"


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
