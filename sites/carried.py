"""What a site carries from one round to the next, kept in its own home so a resumed run goes on.

A site's local optimizer state (Adam's moments) and SCAFFOLD's control variates live in
memory between rounds. After every round it trains, the site also writes them to
``<home>/runs/<run id>/carried/after-step-NNNNNN.pt`` (written to a temporary name, fsynced,
renamed: a crash leaves the old snapshot or the new one). A site object that starts afresh
(its process was restarted, the run resumed) takes up the snapshot of the last step *before*
the one it is asked to train: a step that was interrupted and is redone starts from the same
state as the first time, so a seeded run resumed after a crash ends with the same model as one
never interrupted. The step is the run's logical round (``Instructions.step``), not the round
number, which a resumed run never reuses. Only the last two snapshots are kept.

The DP accountant is not here: it is the site's privacy ledger (:class:`~pharmafl.sites.home.PrivacyLedger`),
written after every trained round, and a redone round is paid for again (the site did train it).
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import torch

from pharmafl.fileio import write_bytes_atomic

KEEP = 2
_NAME = re.compile(r"after-step-(\d{6,})\.pt")


class CarriedState:
    """Snapshots of a site's carried state by step, in ``path`` (None: kept in memory only)."""

    def __init__(self, path: Path | None):
        self.path = Path(path) if path is not None else None

    def _steps(self) -> list[int]:
        if self.path is None or not self.path.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.path.iterdir() if (m := _NAME.fullmatch(p.name)))

    def _file(self, step: int) -> Path:
        return self.path / f"after-step-{step:06d}.pt"

    def save(self, step: int, values: dict) -> None:
        """Persist ``values`` (tensors, numbers, nested dicts and lists of them) as the state after ``step``."""
        if self.path is None:
            return
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save({"step": step, "values": values}, buffer)
        write_bytes_atomic(self._file(step), buffer.getvalue())
        for old in self._steps():
            if old > step or old <= step - KEEP:  # a later step was redone; older ones are not needed
                os.unlink(self._file(old))

    def before(self, step: int) -> dict | None:
        """The values saved after the last step before ``step`` (None: none, start fresh)."""
        earlier = [s for s in self._steps() if s < step]
        if not earlier:
            return None
        return torch.load(self._file(earlier[-1]), weights_only=True)["values"]


def tensors(state: dict | None) -> dict | None:
    """A name -> array mapping as tensors (what ``torch.load(weights_only=True)`` reads back)."""
    return None if state is None else {k: torch.as_tensor(v) for k, v in state.items()}


def arrays(state: dict | None) -> dict | None:
    return None if state is None else {k: v.numpy().copy() for k, v in state.items()}
