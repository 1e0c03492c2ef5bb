"""Command-line start-up: wall time of ``--help``, ``--version`` and a usage error, this checkout
against an earlier commit, runs interleaved, median of N.

    .venv/bin/python bench/cli.py                     # against 459f2e6 (before issue 18), 7 runs each
    .venv/bin/python bench/cli.py --baseline REV -n 11

The baseline is checked out with ``git worktree`` into a temporary folder and imported as
``pharmafl`` through ``PYTHONPATH`` (a folder holding a ``pharmafl`` link to that worktree), with
the same interpreter and dependencies. Each figure is one whole process, as a user pays it. Also
prints whether each command of this checkout imported torch (``-X importtime``). Prints figures
only; the tests assert imports, never times.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = (
    ["--help"],
    ["--version"],
    ["ledger", "--help"],
    ["ledger", "verify", "--help"],
    ["report", "--help"],
    ["run", "--help"],
    ["site", "--help"],
    ["data", "--help"],
    ["run"],  # a usage error: missing config
)
HEAVY = ("torch", "torch_geometric", "rdkit", "opacus", "nvflare", "crypten", "pandas", "pyarrow")


def once(argv: list[str], env: dict) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pharmafl.pipeline.cli", *argv], env=env, capture_output=True)
    return time.perf_counter() - t


def heavy_imports(argv: list[str]) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "pharmafl.pipeline.cli", *argv], capture_output=True, text=True
    ).stderr
    names = {line.rsplit("|", 1)[-1].strip() for line in out.splitlines() if line.startswith("import time:")}
    return [m for m in HEAVY if m in names]


def baseline_env(rev: str, tmp: Path) -> dict:
    tree = tmp / "tree"
    add = ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev]
    subprocess.run(add, check=True, capture_output=True)
    (tmp / "path").mkdir()
    (tmp / "path" / "pharmafl").symlink_to(tree)
    return {**os.environ, "PYTHONPATH": str(tmp / "path")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="459f2e6", help="git revision to compare with (default: before issue 18)")
    parser.add_argument("-n", type=int, default=7, help="runs of each command and each side (default 7)")
    args = parser.parse_args()
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        old_env = baseline_env(args.baseline, Path(tmp))
        new_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        try:
            print(f"| command | {args.baseline} (s) | this checkout (s) | ratio | heavy imports now |")
            print("|---|---:|---:|---:|---|")
            for argv in COMMANDS:
                old, new = [], []
                for _ in range(args.n):  # interleaved: a load spike hits both sides
                    old.append(once(argv, old_env))
                    new.append(once(argv, new_env))
                o, n = statistics.median(old), statistics.median(new)
                heavy = ", ".join(heavy_imports(argv)) or "none"
                print(f"| `pharmafl {' '.join(argv)}` | {o:.2f} | {n:.2f} | {o / n:.1f}x | {heavy} |")
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(Path(tmp) / "tree")])


if __name__ == "__main__":
    main()
