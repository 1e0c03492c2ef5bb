"""Export: the evidence bundle, its manifest, and that no single changed byte goes unnoticed."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pharmafl.audit.bundle import export
from pharmafl.audit.errors import LedgerError
from pharmafl.audit.ledger import Ledger
from pharmafl.audit.verify import VerificationError, verify_path

FILES = ["checkpoints.jsonl", "entries.jsonl", "entries.parquet", "keys.json", "manifest.json"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from .conftest import FAST_SCRYPT, PASSPHRASE, record_rounds
    from pharmafl.audit.listener import LedgerListener

    run = tmp_path_factory.mktemp("export") / "run"
    listener = LedgerListener.for_run(run, PASSPHRASE, scrypt_n=FAST_SCRYPT)
    record_rounds(listener, rounds=1, sites=("site-01", "site-02"))
    listener.close()
    return export(run, run.parent / "bundle")


def test_bundle_files_and_manifest(bundle: Path) -> None:
    assert sorted(p.name for p in bundle.iterdir()) == FILES
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["format"] == "pharmafl-ledger-bundle-v1"
    assert manifest["files"] == {n: hashlib.sha256((bundle / n).read_bytes()).hexdigest() for n in FILES[:-1]}
    with Ledger.open(bundle.parent / "run") as ledger:
        assert manifest["entries"] == len(ledger) and manifest["checkpoints"] == len(ledger.checkpoints())
        assert manifest["root_hash"] == ledger.checkpoints()[-1].root_hash
        stored = [e.__dict__ for e in ledger.entries()]
    assert pq.read_table(bundle / "entries.parquet").to_pylist() == stored
    lines = (bundle / "entries.jsonl").read_text().splitlines()
    assert [json.loads(line)["entry_hash"] for line in lines] == [e["entry_hash"] for e in stored]
    keys = json.loads((bundle / "keys.json").read_text())["keys"]
    assert sorted(keys) == ["server", "site-01", "site-02"]
    assert verify_path(str(bundle)).startswith(f"OK: {len(stored)} entries")


def test_export_refuses_a_non_empty_target(bundle: Path) -> None:
    with pytest.raises(LedgerError, match="exists and is not an empty directory; choose a new --out"):
        export(bundle.parent / "run", bundle)


def test_failed_export_leaves_nothing_behind(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="no ledger at"):
        export(tmp_path / "missing-run", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(FILES), st.data())
def test_any_single_byte_change_anywhere_is_detected(bundle: Path, name: str, data) -> None:
    original = (bundle / name).read_bytes()
    offset = data.draw(st.integers(0, len(original) - 1), label="offset")
    value = data.draw(st.integers(0, 255).filter(lambda b: b != original[offset]), label="new byte")
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "bundle"
        shutil.copytree(bundle, copy)
        (copy / name).write_bytes(original[:offset] + bytes([value]) + original[offset + 1:])
        with pytest.raises(VerificationError):
            verify_path(str(copy), jobs=1)
