"""``python -m pharmafl.audit.verify`` in a fresh venv with only cryptography and pyarrow.

A regulator runs the verifier without torch, SQLAlchemy or the rest of pharmafl's
dependencies; this builds exactly that environment (PyPI must be reachable).
"""

from __future__ import annotations

import shutil
import subprocess
import venv
from pathlib import Path

import pytest

from pharmafl.audit.bundle import export

from .conftest import ASSETS, REPO_ROOT

pytestmark = pytest.mark.slow

SKIP = shutil.ignore_patterns(".venv", ".git", "tests", "build", "bench", "docs", "runs", "*.egg-info",
                              "__pycache__", ".pytest_cache", ".hypothesis")


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


def run(python: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-m", "pharmafl.audit.verify", *args], capture_output=True, text=True,
                          timeout=120)


def test_the_venv_really_lacks_the_heavy_dependencies(bare_python: Path) -> None:
    probe = "import importlib.util as u; print([m for m in ('torch', 'sqlmodel', 'sqlalchemy', 'typer', 'numpy') " \
            "if u.find_spec(m)])"
    out = subprocess.run([str(bare_python), "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_verifies_sqlite_and_bundles_without_torch(bare_python: Path, run_dir: Path, tmp_path: Path) -> None:
    export(run_dir, tmp_path / "bundle")  # with entries.parquet: cross-checked through pyarrow
    results = [run(bare_python, str(p)) for p in (run_dir, run_dir / "ledger.db", tmp_path / "bundle")]
    assert [r.returncode for r in results] == [0, 0, 0], [r.stdout + r.stderr for r in results]
    assert len({r.stdout for r in results}) == 1 and results[0].stdout.startswith("OK: 24 entries")
    assert "pyarrow is not installed" not in results[2].stderr


def test_catches_tampering_and_truncation_without_torch(bare_python: Path) -> None:
    bad = run(bare_python, str(ASSETS / "ledger_forged_entry_inserted"))
    assert bad.returncode == 1 and bad.stdout.startswith("FAIL: seq 20: signature does not verify")
    cut = run(bare_python, str(ASSETS / "ledger_truncated_tail"), "--trusted-head", str(ASSETS / "trusted_head.json"))
    assert cut.returncode == 1 and cut.stdout.startswith("FAIL: seq 17: trusted head")
