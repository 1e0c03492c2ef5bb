"""The evidence-package verifier stays standalone: stdlib, cryptography and the ledger verifier only."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pharmafl.audit.evidence as evidence_module


def test_evidence_verifier_imports_only_stdlib_cryptography_and_verify() -> None:
    tree = ast.parse(Path(evidence_module.__file__).read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            modules.add(node.module or "")
    project = {m for m in modules if m.split(".")[0] == "pharmafl"}
    assert project == {"pharmafl.audit.verify"}
    third_party = {m.split(".")[0] for m in modules} - sys.stdlib_module_names - {"__future__", "pharmafl"}
    assert third_party == {"cryptography"}


def test_importing_the_evidence_verifier_loads_nothing_heavy() -> None:
    code = (
        "import sys, pharmafl.audit.evidence; "
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'sqlmodel', 'sqlalchemy', 'pyarrow', 'psycopg', 'numpy', 'typer', 'fpdf', 'pandas')"
        " or m.startswith('pharmafl.compliance') or m in ('pharmafl.audit.ledger', 'pharmafl.audit.storage')];"
        " print(heavy)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
