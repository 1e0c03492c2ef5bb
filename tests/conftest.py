"""Shared test fixtures."""

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The DAVIS/KIBA tidy tables from ``$PHARMAFL_DATA``; skipped when absent unless
    ``PHARMAFL_REQUIRE_DATA=1`` (then the test fails)."""
    env = os.environ.get("PHARMAFL_DATA")
    path = Path(env) if env else None
    if path is not None and (path / "davis_deepdta_pairs.csv.gz").is_file():
        return path
    reason = (f"PHARMAFL_DATA={env!r} holds no davis_deepdta_pairs.csv.gz" if env else "PHARMAFL_DATA is not set")
    reason += " (set it to the folder of the DAVIS/KIBA tidy tables, e.g. /work/shared/data)"
    if os.environ.get("PHARMAFL_REQUIRE_DATA") == "1":
        pytest.fail(f"PHARMAFL_REQUIRE_DATA=1 but {reason}")
    pytest.skip(reason)
