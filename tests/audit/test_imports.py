"""The verifier stays standalone: stdlib + cryptography only, and the packages import light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import pharmafl.audit.verify as verify_module

ALLOWED_THIRD_PARTY = {"cryptography", "pyarrow"}  # pyarrow lazily, inside a function
VERIFIER = ("verify", "verify_bundle", "messages", "rfc9162", "signature_pool")  # what a regulator reads
LAZY_PROJECT = {"pharmafl.audit.verify", "pharmafl.audit.verify_bundle", "pharmafl.audit.dbsource"}


@pytest.mark.parametrize("name", VERIFIER)
def test_the_verifier_imports_only_itself_stdlib_and_cryptography(name: str) -> None:
    path = Path(verify_module.__file__).with_name(f"{name}.py")
    tree = ast.parse(path.read_text())
    top, nested, project = set(), set(), set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if isinstance(node, ast.ImportFrom) and node.module == "pharmafl.audit":
                names = [f"pharmafl.audit.{a.name}" for a in node.names]
            project |= {n for n in names if n.startswith("pharmafl")}
            roots = {n.split(".")[0] for n in names if not n.startswith("pharmafl")}
            (top if node in tree.body else nested).update(roots)
    allowed = {f"pharmafl.audit.{m}" for m in VERIFIER} | LAZY_PROJECT
    assert project <= allowed, project - allowed
    assert top - sys.stdlib_module_names - {"__future__"} <= {"cryptography"}
    assert nested - sys.stdlib_module_names <= ALLOWED_THIRD_PARTY


def test_the_checks_fit_in_one_sitting() -> None:
    # Statements, not lines: ruff format decides the lines (120 columns). 190 until resumed runs (sessions, a crashed
    # session's unwitnessed last checkpoint) took 12 more in Dec 2026.
    tree = ast.parse(Path(verify_module.__file__).read_text())
    assert sum(isinstance(node, ast.stmt) for node in ast.walk(tree)) <= 205


def test_importing_the_verifier_loads_nothing_heavy() -> None:
    code = (
        "import sys, pharmafl.audit.verify, pharmafl.audit; "
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'sqlmodel', 'sqlalchemy', 'pyarrow', 'psycopg', 'numpy', 'typer')"
        " or m in ('pharmafl.audit.ledger', 'pharmafl.audit.storage')]; print(heavy)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
