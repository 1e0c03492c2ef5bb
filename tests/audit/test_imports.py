"""The verifier stays standalone: stdlib + cryptography only, and the packages import light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pharmafl.audit.verify as verify_module

ALLOWED_THIRD_PARTY = {"cryptography", "psycopg", "pyarrow"}  # the last two lazily, inside functions


def test_verify_imports_only_stdlib_and_cryptography_at_top_level() -> None:
    tree = ast.parse(Path(verify_module.__file__).read_text())
    top, nested = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            roots = {n.split(".")[0] for n in names}
            (top if node in tree.body else nested).update(roots)
    assert "pharmafl" not in top | nested
    assert top - sys.stdlib_module_names - {"__future__"} == {"cryptography"}
    assert nested - sys.stdlib_module_names <= ALLOWED_THIRD_PARTY


def test_importing_the_verifier_loads_nothing_heavy() -> None:
    code = ("import sys, pharmafl.audit.verify, pharmafl.audit; "
            "heavy = [m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'sqlmodel', 'sqlalchemy', 'pyarrow', 'psycopg', 'numpy', 'typer')"
            " or m in ('pharmafl.audit.ledger', 'pharmafl.audit.storage')]; print(heavy)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
