"""Export: the evidence bundle carries everything (or refuses), its manifest, and no single changed byte
goes unnoticed."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from pharmafl.audit.bundle import ExportRefused, export
from pharmafl.audit.errors import LedgerError
from pharmafl.audit.ledger import Ledger
from pharmafl.audit.verify import VerificationError, verify_path

from .assets.make_fixtures import LedgerBuilder, write_db

FILES = ["checkpoints.jsonl", "cosignatures.jsonl", "entries.jsonl", "entries.parquet", "keys.json", "manifest.json"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    b = LedgerBuilder().run(rounds=1)
    run = tmp_path_factory.mktemp("export") / "run"
    write_db(run / "ledger.db", b.entries, b.checkpoints, b.cosignatures)
    return export(run, run.parent / "bundle")


def test_bundle_files_and_manifest(bundle: Path) -> None:
    assert sorted(p.name for p in bundle.iterdir()) == FILES
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["format"] == "pharmafl-ledger-bundle-v2"
    assert manifest["files"] == {n: hashlib.sha256((bundle / n).read_bytes()).hexdigest() for n in FILES[:-1]}
    with Ledger.open(bundle.parent / "run") as ledger:
        assert manifest["entries"] == len(ledger) and manifest["checkpoints"] == len(ledger.checkpoints())
        assert manifest["root_hash"] == ledger.checkpoints()[-1].root_hash
        assert manifest["cosignatures"] == len(ledger.cosignatures()) == 6
        stored = [e.__dict__ for e in ledger.entries()]
        cosigned = [json.loads(c.to_json_line()) for c in ledger.cosignatures()]
    assert pq.read_table(bundle / "entries.parquet").to_pylist() == stored
    lines = (bundle / "entries.jsonl").read_text().splitlines()
    assert [json.loads(line)["entry_hash"] for line in lines] == [e["entry_hash"] for e in stored]
    assert [json.loads(line) for line in (bundle / "cosignatures.jsonl").read_text().splitlines()] == cosigned
    keys = json.loads((bundle / "keys.json").read_text())["keys"]
    assert sorted(keys) == ["server", "user:qa"]  # the sites' keys are pinned by their cards, never registered
    assert verify_path(str(bundle)).line().startswith(f"OK: {len(stored)} entries, 3 checkpoints (2 witnessed")


def test_export_refuses_a_non_empty_target(bundle: Path) -> None:
    with pytest.raises(LedgerError, match="exists and is not an empty directory; choose a new --out"):
        export(bundle.parent / "run", bundle)


def test_failed_export_leaves_nothing_behind(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="no ledger at"):
        export(tmp_path / "missing-run", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_a_ledger_that_does_not_verify_is_refused_naming_the_first_bad_seq(tmp_path: Path) -> None:
    b = LedgerBuilder().run(rounds=1)
    db = write_db(tmp_path / "ledger.db", b.entries, b.checkpoints, b.cosignatures)
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TRIGGER ledger_entries_no_update")
        conn.execute("""UPDATE ledger_entries SET payload = replace(payload, '"accepted":true', '"accepted":false')
                        WHERE seq = 3""")
    with pytest.raises(ExportRefused, match="refusing to export a ledger that does not verify: seq 3: entry_hash"):
        export(db, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
    forced = export(db, tmp_path / "forced", force=True)
    with pytest.raises(VerificationError, match="seq 3: entry_hash does not match"):
        verify_path(str(forced))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(FILES), st.data())
def test_any_single_byte_change_anywhere_is_detected(bundle: Path, name: str, data) -> None:
    original = (bundle / name).read_bytes()
    offset = data.draw(st.integers(0, len(original) - 1), label="offset")
    value = data.draw(st.integers(0, 255).filter(lambda b: b != original[offset]), label="new byte")
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "bundle"
        shutil.copytree(bundle, copy)
        (copy / name).write_bytes(original[:offset] + bytes([value]) + original[offset + 1 :])
        with pytest.raises(VerificationError):
            verify_path(str(copy), jobs=1)
