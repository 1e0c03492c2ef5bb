"""A federated run (in-process engine) that kills itself with SIGKILL at a chosen point.

    python crashing_run.py CONFIG.json OUT POINT N [resume]

``POINT`` names a function of the real code; on its ``N``-th call the process sends itself
SIGKILL (no handler, no ``finally``, no flush: what ``kill -9`` does), either before the call
(``train``: a site starts training; ``aggregate``: the strategy starts aggregating) or in the
middle of it (``append``: the ledger rows are inserted, the transaction not yet committed;
``checkpoint``: the checkpoint's files are written, the folder not yet renamed into place).
With ``resume`` it resumes ``OUT`` instead of starting it. Used by tests/pipeline/test_resume.py.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

POINTS = {
    "train": ("pharmafl.sites.site", "Site", "_fit", "before"),
    "aggregate": ("pharmafl.pipeline.strategies.base", "Strategy", "aggregate", "before"),
    "append": ("pharmafl.audit.storage", "Storage", "insert_entries", "after"),
    "checkpoint": ("pharmafl.pipeline.checkpoints", None, "fsync_dir", "after"),
}


def arm(point: str, n: int) -> None:
    import importlib

    module_name, owner_name, attr, when = POINTS[point]
    module = importlib.import_module(module_name)
    owner = getattr(module, owner_name) if owner_name else module
    real = getattr(owner, attr)
    calls = [0]

    def crash():
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n and when == "before":
            crash()
        out = real(*args, **kwargs)
        if calls[0] == n and when == "after":
            crash()
        return out

    setattr(owner, attr, staticmethod(wrapped) if owner_name and attr == "insert_entries" else wrapped)


def main() -> None:
    from pharmafl.pipeline.config import RunConfig
    from pharmafl.pipeline.configio import from_dict
    from pharmafl.pipeline.engines import resume_federated, run_federated

    config, out, point, n = sys.argv[1:5]
    resume = sys.argv[5:] == ["resume"]
    if point != "none":
        arm(point, int(n))
    if resume:
        resume_federated(Path(out), reason="test: after kill -9")
    else:
        run_federated(from_dict(RunConfig, json.loads(Path(config).read_text())), Path(out))


if __name__ == "__main__":
    main()
