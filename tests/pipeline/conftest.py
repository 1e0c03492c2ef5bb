"""Helpers for federated-run tests (fixtures live in tests/conftest.py)."""

from __future__ import annotations

import json
from dataclasses import replace

from pharmafl.pipeline.config import RunConfig


def with_federation(cfg: RunConfig, **kw) -> RunConfig:
    return replace(cfg, federation=replace(cfg.federation, **kw))


def events(run_dir, *types):
    """The run's events (``events.jsonl``), only of ``types`` if given."""
    out = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    return [e for e in out if e["type"] in types] if types else out
