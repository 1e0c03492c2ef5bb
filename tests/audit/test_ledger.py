"""The ledger on SQLite: entries, registration, checkpoints, refusals, append-only database."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from pharmafl.audit.canonical import canonical_json
from pharmafl.audit.errors import LedgerError
from pharmafl.audit.keys import KeyStore, raw_public_key
from pharmafl.audit.ledger import Ledger
from pharmafl.audit.records import GENESIS_PREV_HASH
from pharmafl.audit.verify import VerificationError, verify_path

from .conftest import FAST_SCRYPT, PASSPHRASE


def test_first_entry_registers_registrar_and_actor(ledger: Ledger, keystore: KeyStore) -> None:
    entry = ledger.record("site-03", "site_update", round=1, update_hash="a" * 64)
    entries = list(ledger.entries())
    assert [(e.seq, e.actor, e.type) for e in entries] == [
        (0, "server", "actor_key"), (1, "server", "actor_key"), (2, "site-03", "site_update")]
    assert entries[0].data["actor"] == "server" and entries[1].data["actor"] == "site-03"
    assert entries[1].data["public_key"] == raw_public_key(keystore.get("site-03")).hex()
    assert entry == entries[2] and entry.data == {"round": 1, "update_hash": "a" * 64}
    assert entries[0].prev_hash == GENESIS_PREV_HASH
    assert all(b.prev_hash == a.entry_hash for a, b in zip(entries, entries[1:]))
    assert verify_path(str(ledger.storage.url.removeprefix("sqlite:///"))).startswith("OK: 3 entries")


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


@pytest.mark.parametrize(("actor", "type_", "payload", "message"), [
    ("site 03", "clip", {}, "actor id 'site 03' is not valid"),
    ("", "clip", {}, "actor id '' is not valid"),
    ("server", "round-ended", {}, "event type 'round-ended' is not valid"),
    ("server", "", {}, "event type '' is not valid"),
    ("server", "actor_key", {}, "call Ledger.register"),
    ("server", "alarm", ["not", "a", "mapping"], "payload must be a mapping"),
])
def test_invalid_input_refused(ledger: Ledger, actor, type_, payload, message) -> None:
    with pytest.raises(LedgerError, match=message):
        ledger.append(actor, type_, payload)
    assert len(ledger) == 0


def test_open_types_are_accepted(ledger: Ledger) -> None:
    entry = ledger.record("user:alice", "e_signature", report="r1.pdf", meaning="approved")
    assert entry.type == "e_signature" and entry.actor == "user:alice"


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
        with pytest.raises(LedgerError, match="key for 'server' in the key store .* is not the one registered at seq 0"):
            relabelled.record("site-01", "clip", round=2)
    assert len(ledger) == 3


def test_registrar_is_fixed_by_the_first_entry(ledger: Ledger, keystore: KeyStore) -> None:
    ledger.record("server", "run_started", seed=1)
    with pytest.raises(LedgerError, match="founded by registrar 'server'.*registrar='server'"):
        Ledger.open(ledger.storage.url, keystore, registrar="admin")


def test_timestamps_never_go_backwards(tmp_path: Path, keystore: KeyStore) -> None:
    times = iter([datetime(2025, 1, 1, 12, tzinfo=timezone.utc) - timedelta(seconds=s) for s in range(10)])
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
    cp = ledger.checkpoint("user:qa")
    assert cp.signer == "user:qa" and cp.tree_size == 3
    assert list(ledger.entries())[-1].data["actor"] == "user:qa"


def _sqlite(ledger: Ledger) -> sqlite3.Connection:
    return sqlite3.connect(ledger.storage.url.removeprefix("sqlite:///"))


@pytest.mark.parametrize("statement", [
    "UPDATE ledger_entries SET payload = '{}' WHERE seq = 1",
    "DELETE FROM ledger_entries WHERE seq = 1",
    "UPDATE ledger_checkpoints SET root_hash = 'x'",
    "DELETE FROM ledger_checkpoints",
    "INSERT OR REPLACE INTO ledger_entries SELECT * FROM ledger_entries WHERE seq = 0",
    "INSERT OR REPLACE INTO ledger_checkpoints SELECT * FROM ledger_checkpoints",
    "REPLACE INTO ledger_entries SELECT * FROM ledger_entries WHERE seq = 1",
])
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
        ledger.record("site-01", "privacy_spent", round=i, epsilon_total=0.5 * (i + 1))
    with _sqlite(ledger) as conn:
        conn.execute("DROP TRIGGER ledger_entries_no_update")
        target = conn.execute("SELECT seq, payload FROM ledger_entries WHERE type = 'privacy_spent' "
                              "ORDER BY seq LIMIT 1 OFFSET 3").fetchone()
        payload = json.loads(target[1])
        payload["epsilon_total"] = 0.1
        conn.execute("UPDATE ledger_entries SET payload = ? WHERE seq = ?",
                     (canonical_json(payload), target[0]))
    with pytest.raises(VerificationError) as err:
        verify_path(ledger.storage.url.removeprefix("sqlite:///"))
    assert err.value.seq == target[0] and "entry_hash does not match" in err.value.reason
