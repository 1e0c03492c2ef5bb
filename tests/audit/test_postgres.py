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
from pharmafl.audit.listener import SYSTEM_ACTORS, LedgerListener
from pharmafl.audit.verify import VerificationError, verify_path
from pharmafl.pipeline.events import EventBus

from .conftest import FAST_SCRYPT, PASSPHRASE
from .test_ledger_processes import concurrent_writers, kill_mid_append
from .test_listener import play_round, start, witness_all
from .test_witness import SITES, consortium, make_witness, site_key

pytestmark = pytest.mark.postgres
ENTRIES = 21  # 2 rounds of 3 sites (site_update + clip each), witnessed: see `recorded`
CHECKPOINTS = 3
COSIGNATURES = CHECKPOINTS * len(SITES)


def connect(url: str) -> psycopg.Connection:
    return psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)


@pytest.fixture
def recorded(pg_url: str, tmp_path: Path) -> str:
    """A witnessed 2-round, 3-site run: site statements, checkpoints, the sites' cosignatures."""
    keys = KeyStore(tmp_path / "keys", PASSPHRASE, scrypt_n=FAST_SCRYPT, allowed=set(SYSTEM_ACTORS))
    pinned = consortium({site: site_key(site) for site in SITES})
    witnesses = {site: make_witness(tmp_path / "homes", site, accepted={pinned["roster_sha256"]}) for site in SITES}
    bus = EventBus([LedgerListener(Ledger.open(pg_url, keys), owns_ledger=True)])
    start(bus, pinned)
    for rnd in (1, 2):
        play_round(bus, rnd)
        assert witness_all(bus, witnesses) == {}
    bus.emit("run_ended", "server", status="completed", rounds=2, model_hash="9" * 64, metrics={})
    assert witness_all(bus, witnesses) == {}
    bus.close()
    return pg_url


def test_a_recorded_run_verifies_from_the_database_and_from_its_export(recorded: str, tmp_path: Path) -> None:
    summary = verify_path(recorded)
    assert (summary.entries, summary.checkpoints) == (ENTRIES, CHECKPOINTS)
    export(recorded, tmp_path / "bundle")
    assert verify_path(str(tmp_path / "bundle")) == summary
    with Ledger.open(recorded) as ledger:
        assert len(ledger.cosignatures()) == COSIGNATURES


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger_entries SET payload = '{}' WHERE seq = 1",
        "DELETE FROM ledger_entries WHERE seq = 20",
        "TRUNCATE ledger_entries CASCADE",
        "UPDATE ledger_checkpoints SET root_hash = repeat('0', 64)",
        "DELETE FROM ledger_checkpoints",
        "TRUNCATE ledger_checkpoints",
        "INSERT INTO ledger_entries SELECT * FROM ledger_entries WHERE seq = 0 "
        "ON CONFLICT (seq) DO UPDATE SET ts = 'x'",
        "UPDATE ledger_cosignatures SET timestamp = 1",
        "DELETE FROM ledger_cosignatures WHERE witness = 'site-02'",
        "TRUNCATE ledger_cosignatures",
        "INSERT INTO ledger_cosignatures SELECT * FROM ledger_cosignatures ON CONFLICT (tree_size, witness) "
        "DO UPDATE SET signature = repeat('0', 128)",
    ],
)
def test_database_refuses_changes_to_history(recorded: str, statement: str) -> None:
    with connect(recorded) as conn:
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            conn.execute(statement)
        assert conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0] == ENTRIES
        assert conn.execute("SELECT count(*) FROM ledger_checkpoints").fetchone()[0] == CHECKPOINTS
        assert conn.execute("SELECT count(*) FROM ledger_cosignatures").fetchone()[0] == COSIGNATURES


def test_database_refuses_an_entry_off_the_chain(recorded: str) -> None:
    with connect(recorded) as conn:
        ts = conn.execute("SELECT max(ts) FROM ledger_entries").fetchone()[0]
        with pytest.raises(psycopg.errors.IntegrityConstraintViolation, match="does not extend the chain"):
            conn.execute(
                "INSERT INTO ledger_entries VALUES (%s, %s, 'server', 'alarm', '{}', %s, %s, %s)",
                (ENTRIES, ts, "f" * 64, "e" * 64, "d" * 128),
            )
        with pytest.raises(psycopg.errors.IntegrityConstraintViolation, match="covers missing entries"):
            conn.execute("INSERT INTO ledger_checkpoints VALUES (99, %s, %s, 'server', %s)", ("0" * 64, ts, "0" * 128))
        with pytest.raises(psycopg.errors.IntegrityConstraintViolation, match="cosignature of a missing checkpoint"):
            conn.execute("INSERT INTO ledger_cosignatures VALUES (3, 'site-01', 1, %s)", ("0" * 128,))


def test_owner_who_disables_the_triggers_is_still_caught(recorded: str) -> None:
    with connect(recorded) as conn:
        seq, payload = conn.execute(
            "SELECT seq, payload FROM ledger_entries WHERE type = 'site_update' ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        edited = json.loads(payload)
        edited["accepted"] = False
        conn.execute("ALTER TABLE ledger_entries DISABLE TRIGGER ledger_entries_append_only")
        conn.execute("UPDATE ledger_entries SET payload = %s WHERE seq = %s", (canonical_json(edited), seq))
    with pytest.raises(VerificationError) as err:
        verify_path(recorded)
    assert err.value.seq == seq and "entry_hash does not match" in err.value.reason


def test_sigkill_mid_append_never_breaks_the_chain(pg_url: str, tmp_path: Path) -> None:
    kill_mid_append(pg_url, tmp_path / "keys", rounds=3)


def test_concurrent_writers_cannot_fork_the_chain(pg_url: str, tmp_path: Path) -> None:
    concurrent_writers(pg_url, tmp_path / "keys", tmp_path / "go", count=80)


def test_the_explorer_opens_a_postgresql_ledger(recorded: str) -> None:
    from pharmafl.compliance.explorer.source import open_ledger
    from pharmafl.compliance.explorer.views import Explorer

    opened = open_ledger(recorded)
    try:
        assert opened.kind == "PostgreSQL ledger" and opened.verdict.ok
        assert opened.verdict.line == verify_path(recorded).line()
        explorer = Explorer(opened)
        assert explorer.overview()["entries"] == ENTRIES
        statement = explorer.index.entries(["site_update"])[0]
        assert explorer.entry(statement.seq)["ok"] is True
    finally:
        opened.close()
