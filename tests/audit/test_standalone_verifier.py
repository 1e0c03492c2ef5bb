"""``python -m pharmafl.audit.verify`` in a fresh venv with only cryptography and pyarrow.

A regulator runs the verifier on an exported bundle without torch, SQLAlchemy or the rest of
pharmafl's dependencies; this builds exactly that environment (PyPI must be reachable). A
database needs the full install (it is read by :mod:`pharmafl.audit.dbsource`): there the bare
verifier says so and exits 2.
"""

from __future__ import annotations

import shutil
import subprocess
import venv
from pathlib import Path

import pytest

from pharmafl.audit.bundle import export

from .assets.make_fixtures import LedgerBuilder, write_db
from .conftest import ASSETS, REPO_ROOT

pytestmark = pytest.mark.slow

SKIP = shutil.ignore_patterns(
    ".venv",
    ".git",
    "tests",
    "build",
    "bench",
    "docs",
    "runs",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".hypothesis",
)


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("standalone")
    source = root / "src"  # a copy, so the in-tree build leaves nothing in the checkout
    shutil.copytree(REPO_ROOT, source, ignore=SKIP)
    venv.EnvBuilder(with_pip=True).create(root / "venv")
    python = root / "venv" / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    for args in (["--no-deps", str(source)], ["cryptography==50.0.2", "pyarrow==26.0.1"]):
        done = subprocess.run(pip + args, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    return python


def run_bare(python: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(python), "-m", "pharmafl.audit.verify", *args], capture_output=True, text=True, timeout=120
    )


def test_the_venv_really_lacks_the_heavy_dependencies(bare_python: Path) -> None:
    probe = (
        "import importlib.util as u; print([m for m in ('torch', 'sqlmodel', 'sqlalchemy', 'typer', 'numpy') "
        "if u.find_spec(m)])"
    )
    out = subprocess.run([str(bare_python), "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_verifies_bundles_without_torch(bare_python: Path, tmp_path: Path) -> None:
    b = LedgerBuilder().run()
    run = tmp_path / "run"
    write_db(run / "ledger.db", b.entries, b.checkpoints, b.cosignatures)
    export(run, tmp_path / "bundle")  # with entries.parquet: cross-checked through pyarrow
    results = [run_bare(bare_python, str(p)) for p in (tmp_path / "bundle", ASSETS / "ledger_clean")]
    assert [r.returncode for r in results] == [0, 0], [r.stdout + r.stderr for r in results]
    assert all(r.stdout.startswith("OK: 31 entries, 4 checkpoints (3 witnessed, quorum 2 of 3 sites)") for r in results)
    assert "pyarrow is not installed" not in results[0].stderr


def test_a_database_needs_the_full_install(bare_python: Path, tmp_path: Path) -> None:
    b = LedgerBuilder().run()
    write_db(tmp_path / "ledger.db", b.entries, b.checkpoints, b.cosignatures)
    result = run_bare(bare_python, str(tmp_path / "ledger.db"))
    assert result.returncode == 2 and result.stdout.startswith("ERROR: ") and "export a bundle" in result.stdout
    assert "Traceback" not in result.stderr


def test_catches_tampering_and_truncation_without_torch(bare_python: Path) -> None:
    bad = run_bare(bare_python, str(ASSETS / "ledger_statement_forged_by_coordinator"))
    assert bad.returncode == 1 and bad.stdout.startswith("FAIL: seq 24: site-03's statement signature does not verify")
    cut = run_bare(
        bare_python, str(ASSETS / "ledger_truncated_tail"), "--trusted-head", str(ASSETS / "trusted_head.json")
    )
    assert cut.returncode == 1 and cut.stdout.startswith("FAIL: seq 15: trusted head")
    quorum = run_bare(bare_python, str(ASSETS / "ledger_checkpoint_without_quorum"))
    assert quorum.returncode == 1 and "the witness policy needs 2" in quorum.stdout
