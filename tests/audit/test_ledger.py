"""The ledger on SQLite: entries, registration, checkpoints, refusals, append-only database."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.exc import IntegrityError

from pharmafl.audit.canonical import canonical_json
from pharmafl.audit.errors import LedgerError
from pharmafl.audit.keys import KeyStore, raw_public_key
from pharmafl.audit.ledger import Ledger
from pharmafl.audit.records import GENESIS_PREV_HASH, fingerprint, key_proof_message
from pharmafl.audit.verify import VerificationError, verify_path

from .conftest import FAST_SCRYPT, PASSPHRASE


def test_first_entry_registers_registrar_and_actor(ledger: Ledger, keystore: KeyStore) -> None:
    entry = ledger.record("site-03", "data_access", round=1, update_hash="a" * 64)
    entries = list(ledger.entries())
    assert [(e.seq, e.actor, e.type) for e in entries] == [
        (0, "server", "actor_key"),
        (1, "server", "actor_key"),
        (2, "site-03", "data_access"),
    ]
    assert entries[0].data["actor"] == "server" and entries[1].data["actor"] == "site-03"
    assert entries[1].data["public_key"] == raw_public_key(keystore.get("site-03")).hex()
    assert entry == entries[2] and entry.data == {"round": 1, "update_hash": "a" * 64}
    assert entries[0].prev_hash == GENESIS_PREV_HASH
    assert all(b.prev_hash == a.entry_hash for a, b in zip(entries, entries[1:]))
    assert verify_path(str(ledger.storage.url.removeprefix("sqlite:///"))).line().startswith("OK: 3 entries")


def test_append_many_is_one_batch_and_registers_each_actor_once(ledger: Ledger) -> None:
    made = ledger.append_many([(f"site-0{i % 3}", "clip", {"round": 1, "i": i}) for i in range(30)])
    assert [e.data["i"] for e in made] == list(range(30))
    registrations = [e for e in ledger.entries() if e.type == "actor_key"]
    assert sorted(e.data["actor"] for e in registrations) == ["server", "site-00", "site-01", "site-02"]
    assert len(ledger) == 34


def test_bad_payload_writes_nothing_and_names_the_path(ledger: Ledger) -> None:
    ledger.record("server", "run_started", seed=1)
    before = len(ledger)
    with pytest.raises(LedgerError, match=r"payload of 'clip' by 'site-01'\['max_norm'\]: nan has no JSON form"):
        ledger.append_many([("site-01", "clip", {"round": 1}), ("site-01", "clip", {"max_norm": float("nan")})])
    assert len(ledger) == before  # not even site-01's registration or the first, valid item


@pytest.mark.parametrize(
    ("actor", "type_", "payload", "message"),
    [
        ("site 03", "clip", {}, "actor id 'site 03' is not valid"),
        ("", "clip", {}, "actor id '' is not valid"),
        ("server", "round-ended", {}, "event type 'round-ended' is not valid"),
        ("server", "", {}, "event type '' is not valid"),
        ("server", "actor_key", {}, "call Ledger.register"),
        ("server", "alarm", ["not", "a", "mapping"], "payload must be a mapping"),
    ],
)
def test_invalid_input_refused(ledger: Ledger, actor, type_, payload, message) -> None:
    with pytest.raises(LedgerError, match=message):
        ledger.append(actor, type_, payload)
    assert len(ledger) == 0


def test_open_types_are_accepted(ledger: Ledger) -> None:
    entry = ledger.record("site-01", "pharmacovigilance_note", report="r1.pdf", meaning="reviewed")
    assert entry.type == "pharmacovigilance_note" and entry.actor == "site-01"


def test_read_only_ledger_refuses_appends(ledger: Ledger) -> None:
    ledger.record("server", "run_started", seed=1)
    path = ledger.storage.url.removeprefix("sqlite:///")
    with Ledger.open(path) as read_only:
        assert len(read_only) == 2
        with pytest.raises(LedgerError, match="opened read-only; pass keys=KeyStore"):
            read_only.record("server", "alarm", kind="x")


def test_missing_ledger_without_keys_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="no ledger at .*nothing.db"):
        Ledger.open(tmp_path / "nothing.db")


def test_replaced_key_file_is_refused_before_signing(ledger: Ledger, keystore: KeyStore, tmp_path: Path) -> None:
    ledger.record("site-01", "clip", round=1)
    other = KeyStore(tmp_path / "other-keys", PASSPHRASE, scrypt_n=FAST_SCRYPT)
    with Ledger.open(ledger.storage.url, other) as relabelled:
        with pytest.raises(
            LedgerError, match="key for 'server' in the key store .* is not the one registered at seq 0"
        ):
            relabelled.record("site-01", "clip", round=2)
    assert len(ledger) == 3


def test_registrar_is_fixed_by_the_first_entry(ledger: Ledger, keystore: KeyStore) -> None:
    ledger.record("server", "run_started", seed=1)
    with pytest.raises(LedgerError, match="founded by registrar 'server'.*registrar='server'"):
        Ledger.open(ledger.storage.url, keystore, registrar="admin")


def test_timestamps_never_go_backwards(tmp_path: Path, keystore: KeyStore) -> None:
    times = iter([datetime(2025, 1, 1, 12, tzinfo=UTC) - timedelta(seconds=s) for s in range(10)])
    with Ledger.open(tmp_path / "l.db", keystore, clock=lambda: next(times)) as ledger:
        for i in range(4):
            ledger.record("server", "alarm", i=i)
        stamps = [e.ts for e in ledger.entries()]
    assert stamps == sorted(stamps) and stamps[0] == "2025-01-01T12:00:00.000000Z"


def test_naive_clock_is_refused(tmp_path: Path, keystore: KeyStore) -> None:
    with Ledger.open(tmp_path / "l.db", keystore, clock=datetime.now) as ledger:
        with pytest.raises(LedgerError, match="has no time zone"):
            ledger.record("server", "alarm")


def test_checkpoint_signs_the_head_and_is_idempotent(ledger: Ledger) -> None:
    ledger.record("server", "round_ended", round=1)
    first = ledger.checkpoint()
    assert first.tree_size == 2 and first.signer == "server"
    assert ledger.checkpoint() == first
    ledger.record("site-01", "clip", round=2)
    second = ledger.checkpoint()
    assert second.tree_size == 4 and second.ts >= first.ts
    assert [c.tree_size for c in ledger.checkpoints()] == [2, 4]


def test_checkpoint_by_another_signer_registers_it_first(ledger: Ledger) -> None:
    ledger.record("server", "round_ended", round=1)
    cp = ledger.checkpoint("access-control")
    assert cp.signer == "access-control" and cp.tree_size == 3
    assert list(ledger.entries())[-1].data["actor"] == "access-control"


def _sqlite(ledger: Ledger) -> sqlite3.Connection:
    return sqlite3.connect(ledger.storage.url.removeprefix("sqlite:///"))


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger_entries SET payload = '{}' WHERE seq = 1",
        "DELETE FROM ledger_entries WHERE seq = 1",
        "UPDATE ledger_checkpoints SET root_hash = 'x'",
        "DELETE FROM ledger_checkpoints",
        "INSERT OR REPLACE INTO ledger_entries SELECT * FROM ledger_entries WHERE seq = 0",
        "INSERT OR REPLACE INTO ledger_checkpoints SELECT * FROM ledger_checkpoints",
        "REPLACE INTO ledger_entries SELECT * FROM ledger_entries WHERE seq = 1",
    ],
)
def test_database_refuses_changes_to_history(ledger: Ledger, statement: str) -> None:
    ledger.record("server", "round_ended", round=1)
    ledger.checkpoint()
    before = ([e.entry_hash for e in ledger.entries()], ledger.checkpoints())
    with _sqlite(ledger) as conn, pytest.raises(sqlite3.IntegrityError, match="pharmafl ledger"):
        conn.execute(statement)
    assert ([e.entry_hash for e in ledger.entries()], ledger.checkpoints()) == before


def test_database_refuses_an_entry_off_the_chain(ledger: Ledger) -> None:
    head = ledger.record("server", "round_ended", round=1)
    forged = (head.seq + 1, head.ts, "server", "alarm", "{}", "f" * 64, "e" * 64, "d" * 128)
    with _sqlite(ledger) as conn, pytest.raises(sqlite3.IntegrityError, match="does not extend the chain"):
        conn.execute("INSERT INTO ledger_entries VALUES (?, ?, ?, ?, ?, ?, ?, ?)", forged)


def test_owner_who_drops_the_triggers_is_still_caught(ledger: Ledger) -> None:
    for i in range(5):
        ledger.record("server", "privacy_spent", party="server", round=i, epsilon_total=0.5 * (i + 1))
    with _sqlite(ledger) as conn:
        conn.execute("DROP TRIGGER ledger_entries_no_update")
        target = conn.execute(
            "SELECT seq, payload FROM ledger_entries WHERE type = 'privacy_spent' ORDER BY seq LIMIT 1 OFFSET 3"
        ).fetchone()
        payload = json.loads(target[1])
        payload["epsilon_total"] = 0.1
        conn.execute("UPDATE ledger_entries SET payload = ? WHERE seq = ?", (canonical_json(payload), target[0]))
    with pytest.raises(VerificationError) as err:
        verify_path(ledger.storage.url.removeprefix("sqlite:///"))
    assert err.value.seq == target[0] and "entry_hash does not match" in err.value.reason


# -- user keys: enrolled by their owner, never registered by the registrar -----------------


class _WithUsers:
    """A key source: the system key store plus keys only their users hold (unlocked)."""

    def __init__(self, system: KeyStore, users: dict[str, Ed25519PrivateKey]):
        self.system, self.users = system, users

    def get_or_create(self, actor: str) -> Ed25519PrivateKey:
        return self.users[actor] if actor in self.users else self.system.get_or_create(actor)


@pytest.mark.parametrize(
    "attempt",
    [
        lambda ledger: ledger.record("user:mallory", "e_signature", report="r1.pdf", meaning="approved"),
        lambda ledger: ledger.register("user:mallory"),
        lambda ledger: ledger.checkpoint("user:mallory"),
    ],
)
def test_registrar_cannot_register_a_user_key(ledger: Ledger, keystore: KeyStore, attempt) -> None:
    ledger.record("server", "run_started", seed=1)
    with pytest.raises(LedgerError, match="registrar never registers a user key.*Ledger.enrol"):
        attempt(ledger)
    assert len(ledger) == 2 and "user:mallory" not in ledger.registered_keys()
    assert keystore.actors() == ["server"]  # and no key file was made for her


def test_enrolment_is_signed_by_the_users_own_key(ledger: Ledger, keystore: KeyStore) -> None:
    alice = Ed25519PrivateKey.generate()
    public = raw_public_key(alice)
    entry = ledger.enrol("user:alice", alice, {"code_commitment": "c" * 64, "proof": "p" * 64})
    assert (entry.seq, entry.actor, entry.type) == (1, "user:alice", "actor_key")  # after the registrar's own
    assert entry.data == {
        "actor": "user:alice",
        "algorithm": "Ed25519",
        "enrolment": {"code_commitment": "c" * 64, "proof": "p" * 64},
        "fingerprint": fingerprint(public),
        "proof": entry.data["proof"],
        "public_key": public.hex(),
    }
    alice.public_key().verify(bytes.fromhex(entry.signature), bytes.fromhex(entry.entry_hash))  # self-signed
    alice.public_key().verify(bytes.fromhex(entry.data["proof"]), key_proof_message("user:alice", public.hex()))
    assert ledger.registered_keys()["user:alice"]["public_key"] == public.hex()
    assert keystore.actors() == ["server"]  # the registrar's store never saw her key
    with Ledger.open(ledger.storage.url, _WithUsers(keystore, {"user:alice": alice})) as hers:
        signed = hers.record("user:alice", "e_signature", report="r1.pdf", meaning="approved")
    alice.public_key().verify(bytes.fromhex(signed.signature), bytes.fromhex(signed.entry_hash))


def test_enrolment_is_once_per_actor(ledger: Ledger) -> None:
    ledger.enrol("user:alice", Ed25519PrivateKey.generate(), {})
    ledger.record("site-01", "clip", round=1)
    before = len(ledger)
    for actor in ("user:alice", "site-01"):
        with pytest.raises(LedgerError, match=f"'{actor}' is already registered .*at seq"):
            ledger.enrol(actor, Ed25519PrivateKey.generate(), {})
    with pytest.raises(LedgerError, match="registrar"):
        ledger.enrol("server", Ed25519PrivateKey.generate(), {})
    assert len(ledger) == before


# -- on_commit: the caller's rows in the same transaction -----------------------------------


def _side_table(ledger: Ledger) -> None:
    with ledger.storage.write() as conn:
        conn.exec_driver_sql("CREATE TABLE users_t (actor TEXT PRIMARY KEY, seq INTEGER)")


def _rows(ledger: Ledger) -> list[tuple]:
    with ledger.storage.read() as conn:
        return [tuple(r) for r in conn.exec_driver_sql("SELECT actor, seq FROM users_t ORDER BY seq")]


def test_on_commit_writes_in_the_same_transaction(ledger: Ledger) -> None:
    ledger.record("server", "run_started", seed=1)
    _side_table(ledger)
    seen = []

    def hook(conn, entries) -> None:
        seen.append([(e.seq, e.type) for e in entries])
        for e in entries:
            conn.exec_driver_sql("INSERT INTO users_t VALUES (?, ?)", (e.actor + "/" + e.type, e.seq))

    made = ledger.append_many(
        [("server", "user_created", {"user": "bob"}), ("site-01", "clip", {"round": 1})], on_commit=hook
    )
    assert seen == [[(e.seq, e.type) for e in made]] and [e.type for e in made] == ["user_created", "clip"]
    enrolled = ledger.enrol("user:bob", Ed25519PrivateKey.generate(), {}, on_commit=hook)
    assert _rows(ledger) == [
        ("server/user_created", made[0].seq),
        ("site-01/clip", made[1].seq),
        ("user:bob/actor_key", enrolled.seq),
    ]


@pytest.mark.parametrize(
    "failure",
    [RuntimeError("users table is full"), IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed"))],
)
def test_on_commit_raising_writes_nothing(ledger: Ledger, keystore: KeyStore, failure: Exception) -> None:
    ledger.record("server", "run_started", seed=1)
    _side_table(ledger)
    calls = []

    def hook(conn, entries) -> None:
        calls.append(len(entries))
        conn.exec_driver_sql("INSERT INTO users_t VALUES ('half', 1)")
        raise failure

    before = ([e.entry_hash for e in ledger.entries()], ledger.registered_keys())
    with pytest.raises(type(failure)) as err:
        ledger.append_many([("site-02", "clip", {"round": 1})], on_commit=hook)
    assert err.value is failure and calls == [1]  # not retried like a lost race
    with pytest.raises(type(failure)):
        ledger.enrol("user:carol", Ed25519PrivateKey.generate(), {}, on_commit=hook)
    assert ([e.entry_hash for e in ledger.entries()], ledger.registered_keys()) == before
    assert _rows(ledger) == []
    assert ledger.record("site-02", "clip", round=2).seq == 3  # carries on at seq 2: registration, entry


# -- the database file ------------------------------------------------------------------------


def test_a_new_ledger_database_is_private(tmp_path: Path, keystore: KeyStore) -> None:
    old = os.umask(0o022)
    try:
        with Ledger.open(tmp_path / "run" / "ledger.db", keystore) as ledger:
            ledger.record("server", "run_started", seed=1)
            files = [tmp_path / "run" / name for name in ("ledger.db", "ledger.db-wal", "ledger.db-shm")]
            assert all(f.exists() for f in files)
            assert {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in files} == {f.name: "0o600" for f in files}
    finally:
        os.umask(old)
