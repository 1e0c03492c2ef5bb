"""The standalone verifier: output, exit codes, inputs, trust anchors, parallel signature checks."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from pharmafl.audit.keys import KeyStore
from pharmafl.audit.ledger import Ledger
from pharmafl.audit.verify import VerificationError, verify_path

from .conftest import ASSETS


def run_verifier(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pharmafl.audit.verify", *args], capture_output=True, text=True)


def test_ok_line_and_exit_0(run_dir: Path) -> None:
    result = run_verifier(str(run_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    n, m = 24, 3
    with Ledger.open(run_dir / "ledger.db") as ledger:
        assert (len(ledger), len(ledger.checkpoints())) == (n, m)
        root = ledger.checkpoints()[-1].root_hash  # the last checkpoint covers the whole run
    assert result.stdout == f"OK: {n} entries, {m} checkpoints, head {root}\n"


def test_fail_line_names_the_first_bad_seq_and_exits_1() -> None:
    result = run_verifier(str(ASSETS / "ledger_reordered"))
    assert result.returncode == 1
    assert result.stdout.startswith("FAIL: seq 24: found sequence number 25 where 24 belongs")


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


def test_sqlite_file_run_dir_and_bundle_agree(run_dir: Path, tmp_path: Path) -> None:
    from pharmafl.audit.bundle import export

    export(run_dir, tmp_path / "bundle")
    results = {verify_path(str(p)) for p in (run_dir, run_dir / "ledger.db", tmp_path / "bundle")}
    assert len(results) == 1 and results.pop().startswith("OK: 24 entries")


def test_trusted_head_from_a_longer_ledger_catches_truncation(run_dir: Path, tmp_path: Path) -> None:
    with Ledger.open(run_dir / "ledger.db") as ledger:
        first, last = ledger.checkpoints()[0], ledger.checkpoints()[-1]
    head = tmp_path / "head.json"
    head.write_text(last.to_json_line())
    assert verify_path(str(run_dir), trusted_head=str(head)).startswith("OK")
    truncated = tmp_path / "truncated.db"  # an operator restores an old copy: only round 1
    with sqlite3.connect(run_dir / "ledger.db") as src, sqlite3.connect(truncated) as dst:
        src.backup(dst)
        for trigger in ("ledger_entries_no_delete", "ledger_checkpoints_no_delete"):
            dst.execute(f"DROP TRIGGER {trigger}")
        dst.execute("DELETE FROM ledger_entries WHERE seq >= ?", (first.tree_size,))
        dst.execute("DELETE FROM ledger_checkpoints WHERE tree_size > ?", (first.tree_size,))
    assert verify_path(str(truncated)).startswith(f"OK: {first.tree_size} entries")
    with pytest.raises(VerificationError) as err:
        verify_path(str(truncated), trusted_head=str(head))
    assert err.value.seq == first.tree_size and "truncated" in err.value.reason


def test_trusted_head_with_a_forged_root_is_reported(run_dir: Path, tmp_path: Path) -> None:
    with Ledger.open(run_dir / "ledger.db") as ledger:
        cp = json.loads(ledger.checkpoints()[-1].to_json_line())
    cp["root_hash"] = "0" * 64
    (tmp_path / "head.json").write_text(json.dumps(cp))
    with pytest.raises(VerificationError) as err:
        verify_path(str(run_dir), trusted_head=str(tmp_path / "head.json"))
    assert err.value.seq == 0 and "trusted head is not genuine" in err.value.reason


@pytest.mark.parametrize(("content", "message"), [
    ("not json", "cannot read the trusted keys"),
    ('{"format": "something-else"}', "not a pharmafl-ledger-keys-v1 key bundle"),
])
def test_bad_trusted_keys_file_is_unreadable(run_dir: Path, tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "keys.json").write_text(content)
    with pytest.raises(VerificationError, match=message) as err:
        verify_path(str(run_dir), trusted_keys=str(tmp_path / "keys.json"))
    assert err.value.unreadable


def test_empty_ledger_verifies_as_empty(tmp_path: Path, keystore: KeyStore) -> None:
    Ledger.open(tmp_path / "l.db", keystore).close()
    assert verify_path(str(tmp_path / "l.db")) == (
        "OK: 0 entries, 0 checkpoints, head e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")


@pytest.mark.parametrize("jobs", [1, 2])
def test_bad_signature_deep_in_a_large_ledger_is_found_in_parallel(tmp_path: Path, keystore: KeyStore,
                                                                     jobs: int) -> None:
    db = tmp_path / "big.db"
    with Ledger.open(db, keystore) as ledger:
        for b in range(9):
            ledger.append_many([(f"site-{i % 4:02d}", "site_update", {"b": b, "i": i}) for i in range(1000)])
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
    with pytest.raises(VerificationError, match="manifest.json lists .* but the bundle holds"):
        verify_path(str(bundle))


def test_bundle_missing_a_file_fails(tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    shutil.copytree(ASSETS / "ledger_clean", bundle)
    (bundle / "checkpoints.jsonl").unlink()
    with pytest.raises(VerificationError, match="lacks checkpoints.jsonl") as err:
        verify_path(str(bundle))
    assert not err.value.unreadable


@pytest.mark.parametrize("head", ['{"tree_size": [1]}', "[1, 2]", '{"tree_size": 3}'])
def test_malformed_trusted_head_is_a_failure_not_a_crash(run_dir: Path, tmp_path: Path, head: str) -> None:
    (tmp_path / "head.json").write_text(head)
    with pytest.raises(VerificationError, match="trusted head: expected exactly the fields"):
        verify_path(str(run_dir), trusted_head=str(tmp_path / "head.json"))
