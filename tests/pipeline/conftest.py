"""Helpers for federated-run tests (fixtures live in tests/conftest.py)."""

from __future__ import annotations

from dataclasses import replace

from pharmafl.pipeline.config import RunConfig


def with_federation(cfg: RunConfig, **kw) -> RunConfig:
    return replace(cfg, federation=replace(cfg.federation, **kw))
