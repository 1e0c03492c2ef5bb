"""The standalone verifier: output, exit codes, inputs, trust anchors, databases via dbsource, parallel checks."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from pharmafl.audit import dbsource
from pharmafl.audit.bundle import ExportRefused, export
from pharmafl.audit.keys import KeyStore
from pharmafl.audit.ledger import Ledger
from pharmafl.audit.verify import VerificationError, verify_path

from .assets.make_fixtures import LedgerBuilder, save, write_db
from .conftest import ASSETS

EMPTY_ROOT = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def run_verifier(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pharmafl.audit.verify", *args], capture_output=True, text=True)


@pytest.fixture
def built() -> LedgerBuilder:
    return LedgerBuilder().run()


@pytest.fixture
def ledger_run(tmp_path: Path, built: LedgerBuilder) -> Path:
    """A run directory whose ledger.db holds the builder's 2-round, 3-site witnessed run."""
    write_db(tmp_path / "run" / "ledger.db", built.entries, built.checkpoints, built.cosignatures)
    return tmp_path / "run"


def test_ok_line_and_exit_0(ledger_run: Path, built: LedgerBuilder) -> None:
    result = run_verifier(str(ledger_run))
    assert result.returncode == 0, result.stdout + result.stderr
    n, root = len(built.entries), built.checkpoints[-1]["root_hash"]  # the last checkpoint covers everything
    assert result.stdout == f"OK: {n} entries, 4 checkpoints (3 witnessed, quorum 2 of 3 sites), head {root}\n"


def test_fail_line_names_the_first_bad_seq_and_exits_1() -> None:
    result = run_verifier(str(ASSETS / "ledger_reordered"))
    assert result.returncode == 1
    assert result.stdout.startswith("FAIL: seq 22: found sequence number 23 where 22 belongs")


def test_json_output_is_the_result_and_the_failure_as_objects(ledger_run: Path, built: LedgerBuilder) -> None:
    ok = run_verifier(str(ledger_run), "--json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    run_id = next(e["payload"]["run_id"] for e in built.entries if e["type"] == "run_started")
    assert json.loads(ok.stdout) == {
        "ok": True,
        "entries": len(built.entries),
        "checkpoints": len(built.checkpoints),
        "witnessed": 3,
        "quorum": 2,
        "sites": 3,
        "root_hash": built.checkpoints[-1]["root_hash"],
        "run_id": run_id,
    }
    bad = run_verifier(str(ASSETS / "ledger_reordered"), "--json")
    assert bad.returncode == 1 and json.loads(bad.stdout) == {
        "ok": False,
        "seq": 22,
        "reason": "found sequence number 23 where 22 belongs: an entry was deleted, inserted or moved",
        "unreadable": False,
    }
    unreadable = run_verifier(str(ledger_run / "nope"), "--json")
    doc = json.loads(unreadable.stdout)
    assert unreadable.returncode == 2 and doc["ok"] is False and doc["unreadable"] is True and doc["seq"] is None


def test_the_result_prints_the_ok_line_and_reports_progress(ledger_run: Path, tmp_path: Path) -> None:
    export(ledger_run, tmp_path / "bundle")
    for target in (ledger_run, tmp_path / "bundle"):  # a database and a bundle: the same totals
        seen: list[tuple[int, int | None]] = []
        result = dbsource.verify_target(target, on_progress=lambda done, total, seen=seen: seen.append((done, total)))
        assert (
            seen == [(31, 31)]
            and result.entries == 31
            and result.line()
            == (f"OK: 31 entries, 4 checkpoints (3 witnessed, quorum 2 of 3 sites), head {result.root_hash}")
        )


@pytest.mark.parametrize("path", ["does/not/exist", "."])
def test_unreadable_input_exits_2_and_says_what_is_accepted(path: str, tmp_path: Path) -> None:
    result = run_verifier(str(tmp_path / path))
    assert result.returncode == 2
    assert "not a SQLite file, a run directory with ledger.db, a bundle" in result.stdout


def test_a_file_that_is_not_sqlite_is_unreadable(tmp_path: Path) -> None:
    (tmp_path / "ledger.db").write_text("hello")
    with pytest.raises(VerificationError, match="cannot read a ledger") as err:
        verify_path(str(tmp_path / "ledger.db"))
    assert err.value.unreadable


def test_sqlite_file_run_dir_and_bundle_agree(ledger_run: Path, tmp_path: Path) -> None:
    export(ledger_run, tmp_path / "bundle")  # with entries.parquet: cross-checked through pyarrow
    results = {verify_path(str(p)) for p in (ledger_run, ledger_run / "ledger.db", tmp_path / "bundle")}
    results |= {dbsource.verify_target(p) for p in (ledger_run, tmp_path / "bundle")}
    assert len(results) == 1 and results.pop().line().startswith("OK: 31 entries, 4 checkpoints (3 witnessed")


def truncate(db: Path, size: int, *, checkpoints_too: bool) -> None:
    """What the database owner can do: drop the guards and delete the tail."""
    with sqlite3.connect(db) as conn:
        for trigger in ("ledger_entries_no_delete", "ledger_checkpoints_no_delete", "ledger_cosignatures_no_delete"):
            conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        conn.execute("DELETE FROM ledger_entries WHERE seq >= ?", (size,))
        if checkpoints_too:
            conn.execute("DELETE FROM ledger_checkpoints WHERE tree_size > ?", (size,))
            conn.execute("DELETE FROM ledger_cosignatures WHERE tree_size > ?", (size,))


def test_trusted_head_from_a_longer_ledger_catches_truncation(
    ledger_run: Path, built: LedgerBuilder, tmp_path: Path
) -> None:
    first, last = built.checkpoints[0], built.checkpoints[-1]
    head = tmp_path / "head.json"
    head.write_text(json.dumps(last))
    assert verify_path(str(ledger_run), trusted_head=str(head)).line().startswith("OK")
    truncate(ledger_run / "ledger.db", first["tree_size"], checkpoints_too=True)  # an old copy restored
    assert verify_path(str(ledger_run)).line().startswith(f"OK: {first['tree_size']} entries")
    with pytest.raises(VerificationError) as err:
        verify_path(str(ledger_run), trusted_head=str(head))
    assert err.value.seq == first["tree_size"] and "truncated" in err.value.reason


def test_export_carries_every_checkpoint_or_refuses(ledger_run: Path, built: LedgerBuilder, tmp_path: Path) -> None:
    size = built.checkpoints[0]["tree_size"]
    truncate(ledger_run / "ledger.db", size, checkpoints_too=False)  # the later checkpoints still show the cut
    with pytest.raises(VerificationError) as err:
        verify_path(str(ledger_run))
    assert err.value.seq == size and "truncated" in err.value.reason
    with pytest.raises(ExportRefused, match=f"seq {size}: checkpoint 1 .* missing \\(truncated\\)"):
        export(ledger_run, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    forced = export(ledger_run, tmp_path / "forced", force=True)
    manifest = json.loads((forced / "manifest.json").read_text())
    assert (manifest["entries"], manifest["checkpoints"], manifest["cosignatures"]) == (size, 4, 9)
    with pytest.raises(VerificationError) as again:
        verify_path(str(forced))
    assert str(again.value) == str(err.value)  # the bundle fails exactly as the database does


def test_trusted_head_with_a_forged_root_is_reported(ledger_run: Path, built: LedgerBuilder, tmp_path: Path) -> None:
    cp = dict(built.checkpoints[-1], root_hash="0" * 64)
    (tmp_path / "head.json").write_text(json.dumps(cp))
    with pytest.raises(VerificationError) as err:
        verify_path(str(ledger_run), trusted_head=str(tmp_path / "head.json"))
    assert err.value.seq == 0 and "trusted head is not genuine" in err.value.reason


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "cannot read the pharmafl-ledger-keys-v1"),
        ('{"format": "something-else"}', "not a pharmafl-ledger-keys-v1 file"),
        ('{"format": "pharmafl-ledger-keys-v1", "keys": {"server": NaN}}', "cannot read"),
    ],
)
def test_bad_trusted_keys_file_is_unreadable(ledger_run: Path, tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "keys.json").write_text(content)
    with pytest.raises(VerificationError, match=message) as err:
        verify_path(str(ledger_run), trusted_keys=str(tmp_path / "keys.json"))
    assert err.value.unreadable


def test_empty_ledger_verifies_as_empty(tmp_path: Path, keystore: KeyStore) -> None:
    Ledger.open(tmp_path / "l.db", keystore).close()
    assert verify_path(str(tmp_path / "l.db")).line() == (
        f"OK: 0 entries, 0 checkpoints (0 witnessed, quorum 0 of 0 sites), head {EMPTY_ROOT}"
    )


@pytest.mark.parametrize("jobs", [1, 2])
def test_bad_signature_deep_in_a_large_ledger_is_found_in_parallel(tmp_path: Path, jobs: int) -> None:
    b = LedgerBuilder()
    for i in range(9000):
        b.append("server", "note", {"i": i})
    db = write_db(tmp_path / "big.db", b.entries, [], [])
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TRIGGER ledger_entries_no_update")
        other = conn.execute("SELECT signature FROM ledger_entries WHERE seq = 7001").fetchone()[0]
        conn.execute("UPDATE ledger_entries SET signature = ? WHERE seq = 8123", (other,))
        conn.execute("UPDATE ledger_entries SET signature = ? WHERE seq = 6543", (other,))
    with pytest.raises(VerificationError) as err:
        verify_path(str(db), jobs=jobs)
    assert err.value.seq == 6543 and "signature does not verify" in err.value.reason


def test_copy_of_a_bundle_with_an_extra_file_is_refused(tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    shutil.copytree(ASSETS / "ledger_clean", bundle)
    (bundle / "notes.txt").write_text("added later")
    with pytest.raises(VerificationError, match=r"the bundle holds \[.*'notes.txt'"):
        verify_path(str(bundle))


def test_bundle_missing_a_file_fails(tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    shutil.copytree(ASSETS / "ledger_clean", bundle)
    (bundle / "cosignatures.jsonl").unlink()
    with pytest.raises(VerificationError, match="lacks cosignatures.jsonl") as err:
        verify_path(str(bundle))
    assert not err.value.unreadable


def test_a_bundle_and_its_database_see_the_same_cosignatures(tmp_path: Path, built: LedgerBuilder) -> None:
    built.cosignatures = [c for c in built.cosignatures if c["witness"] != "site-02" or c["tree_size"] > 20]
    bundle = save(tmp_path / "b", built.entries, built.checkpoints, built.cosignatures)
    db = write_db(tmp_path / "l.db", built.entries, built.checkpoints, built.cosignatures)
    assert verify_path(str(bundle)) == verify_path(str(db))
    with pytest.raises(VerificationError, match="the witness policy needs 3"):
        verify_path(str(db), witnesses=3)


def test_progress_is_reported_every_4096_rows_and_after_the_last() -> None:
    from pharmafl.audit.verify_bundle import counted

    seen: list[tuple[int, int | None]] = []
    rows = list(counted(iter(range(10_000)), lambda done, total: seen.append((done, total)), 10_000))
    assert rows == list(range(10_000)) and seen == [(4096, 10_000), (8192, 10_000), (10_000, 10_000)]
