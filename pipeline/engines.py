"""Run a federated config on the chosen engine, with the run's listeners attached."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pharmafl.pipeline.config import RunConfig
from pharmafl.pipeline.eventlog import JsonlEventLog
from pharmafl.pipeline.events import EventBus, Listener
from pharmafl.pipeline.run import RunPlan, prepare
from pharmafl.pipeline.tracking import RunTracker


def run_listeners(plan: RunPlan) -> list[Listener]:
    """The listeners every run has, whatever the engine: event trace, outputs, the ledger.

    Built in the process that runs the coordinator (NVFlare: the server process).
    """
    return [JsonlEventLog(plan.run_dir / "events.jsonl"), RunTracker(plan.run_dir)]


def run_federated(
    cfg: RunConfig,
    out: Path,
    *,
    data_dir: Path | None = None,
    cache_dir: Path | None = None,
    listeners: Sequence[Listener] = (),
) -> dict:
    plan = prepare(cfg, out, data_dir=data_dir, cache_dir=cache_dir)
    if cfg.federation.engine == "local":
        from pharmafl.pipeline.engine_local import LocalEngine

        bus = EventBus([*run_listeners(plan), *listeners])
        try:
            return LocalEngine().run(plan, bus)
        finally:
            bus.close()
    from pharmafl.pipeline.engine_nvflare import NVFlareEngine

    return NVFlareEngine().run(plan, listeners)
