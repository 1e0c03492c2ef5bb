"""The production back end: the same ledger on a real PostgreSQL server.

Needs ``PHARMAFL_TEST_PG_URL`` (CI sets it via ``.ci/start-postgres.sh``); each test gets a
fresh schema. Skipped without it, unless ``PHARMAFL_REQUIRE_PG=1``, where it fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from pharmafl.audit.bundle import export
from pharmafl.audit.canonical import canonical_json
from pharmafl.audit.keys import KeyStore
from pharmafl.audit.ledger import Ledger
from pharmafl.audit.listener import LedgerListener
from pharmafl.audit.verify import VerificationError, verify_path

from .conftest import record_rounds
from .test_ledger_processes import concurrent_writers, kill_mid_append

pytestmark = pytest.mark.postgres


def connect(url: str) -> psycopg.Connection:
    return psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)


@pytest.fixture
def recorded(pg_url: str, keystore: KeyStore) -> str:
    listener = LedgerListener(Ledger.open(pg_url, keystore), owns_ledger=True)
    record_rounds(listener)
    listener.close()
    return pg_url


def test_a_recorded_run_verifies_from_the_database_and_from_its_export(recorded: str, tmp_path: Path) -> None:
    summary = verify_path(recorded)
    assert summary.startswith("OK: 24 entries, 3 checkpoints, head ")
    export(recorded, tmp_path / "bundle")
    assert verify_path(str(tmp_path / "bundle")) == summary


@pytest.mark.parametrize("statement", [
    "UPDATE ledger_entries SET payload = '{}' WHERE seq = 1",
    "DELETE FROM ledger_entries WHERE seq = 23",
    "TRUNCATE ledger_entries CASCADE",
    "UPDATE ledger_checkpoints SET root_hash = repeat('0', 64)",
    "DELETE FROM ledger_checkpoints",
    "TRUNCATE ledger_checkpoints",
    "INSERT INTO ledger_entries SELECT * FROM ledger_entries WHERE seq = 0 ON CONFLICT (seq) DO UPDATE SET ts = 'x'",
])
def test_database_refuses_changes_to_history(recorded: str, statement: str) -> None:
    with connect(recorded) as conn:
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            conn.execute(statement)
        assert conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0] == 24
        assert conn.execute("SELECT count(*) FROM ledger_checkpoints").fetchone()[0] == 3


def test_database_refuses_an_entry_off_the_chain(recorded: str) -> None:
    with connect(recorded) as conn:
        ts = conn.execute("SELECT max(ts) FROM ledger_entries").fetchone()[0]
        with pytest.raises(psycopg.errors.IntegrityConstraintViolation, match="does not extend the chain"):
            conn.execute("INSERT INTO ledger_entries VALUES (24, %s, 'server', 'alarm', '{}', %s, %s, %s)",
                         (ts, "f" * 64, "e" * 64, "d" * 128))
        with pytest.raises(psycopg.errors.IntegrityConstraintViolation, match="covers missing entries"):
            conn.execute("INSERT INTO ledger_checkpoints VALUES (99, %s, %s, 'server', %s)", ("0" * 64, ts, "0" * 128))


def test_owner_who_disables_the_triggers_is_still_caught(recorded: str) -> None:
    with connect(recorded) as conn:
        seq, payload = conn.execute("SELECT seq, payload FROM ledger_entries WHERE type = 'privacy_spent' "
                                    "ORDER BY seq DESC LIMIT 1").fetchone()
        edited = json.loads(payload)
        edited["epsilon_total"] = 0.01
        conn.execute("ALTER TABLE ledger_entries DISABLE TRIGGER ledger_entries_append_only")
        conn.execute("UPDATE ledger_entries SET payload = %s WHERE seq = %s",
                     (canonical_json(edited), seq))
    with pytest.raises(VerificationError) as err:
        verify_path(recorded)
    assert err.value.seq == seq and "entry_hash does not match" in err.value.reason


def test_sigkill_mid_append_never_breaks_the_chain(pg_url: str, tmp_path: Path) -> None:
    kill_mid_append(pg_url, tmp_path / "keys", rounds=3)


def test_concurrent_writers_cannot_fork_the_chain(pg_url: str, tmp_path: Path) -> None:
    concurrent_writers(pg_url, tmp_path / "keys", tmp_path / "go", count=80)
