"""What a command prints where: results on stdout (text, or JSON with ``--json``),
progress and errors on stderr, so that ``pharmafl ... --json | jq`` always parses.

Kept free of heavy imports: every ``--help`` loads this module.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

stdout = Console(highlight=False, soft_wrap=True)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def progress(*, quiet: bool = False, transient: bool = True) -> Progress:
    """A Rich progress display on stderr; silent with ``quiet`` (and when stderr is no terminal)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr,
        transient=transient,
        disable=quiet or not stderr.is_terminal,
        redirect_stdout=False,  # else, stderr on a terminal, a result printed under the bar lands on stderr
    )


def emit_json(data: Any) -> None:
    """``data`` as one JSON document on stdout (sorted keys; paths and the like as strings)."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()
