"""Run a federated config on the chosen engine, with the run's listeners attached."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from pharmafl.pipeline.config import RunConfig
from pharmafl.pipeline.eventlog import JsonlEventLog
from pharmafl.pipeline.events import EventBus, Listener
from pharmafl.pipeline.run import RunPlan, prepare
from pharmafl.pipeline.tracking import RunTracker


def run_listeners(plan: RunPlan, *, resumed: bool = False) -> list[Listener]:
    """The listeners every run has, whatever the engine: event trace, outputs, the ledger.

    Built in the process that runs the coordinator (NVFlare: the server process). The ledger
    comes first: if an entry cannot be recorded the run stops before anything else sees the
    event. Its key-store passphrase comes from ``$PHARMAFL_KEY_PASSPHRASE``. ``resumed``: the
    ledger and the event trace are appended to, and the outputs cover the earlier sessions too.
    """
    listeners: list[Listener] = []
    if plan.cfg.ledger.enabled:
        listeners.append(ledger_listener(plan))
    tracker = RunTracker.resumed(plan.run_dir) if resumed else RunTracker(plan.run_dir)
    return [*listeners, JsonlEventLog(plan.run_dir / "events.jsonl"), tracker]


def ledger_listener(plan: RunPlan) -> Listener:
    from pharmafl.audit import KeyStore, Ledger, LedgerListener, passphrase_from_env

    passphrase = passphrase_from_env()
    if plan.cfg.ledger.url is None:
        return LedgerListener.for_run(plan.run_dir, passphrase)
    keys = KeyStore(plan.run_dir / "keys", passphrase)
    return LedgerListener(Ledger.open(plan.cfg.ledger.url, keys, registrar="server"), owns_ledger=True)


def run_federated(
    cfg: RunConfig,
    out: Path,
    *,
    data_dir: Path | None = None,
    cache_dir: Path | None = None,
    listeners: Sequence[Listener] = (),
    consortium: Path | None = None,
    site_homes: Path | None = None,
) -> dict:
    """Run ``cfg``: a simulated consortium from ``data.dataset``, or, with ``consortium`` (a
    ``consortium.json``) and ``site_homes``, the sites that set themselves up there."""
    if cfg.ledger.enabled:
        from pharmafl.audit import passphrase_from_env

        passphrase_from_env()  # refuse before anything is written
    if cfg.federation.engine == "nvflare" and cfg.federation.nvflare_env == "prod":
        cfg.federation.admin_kit()  # likewise: the admin kit the job will be submitted with
    if consortium is not None:
        from pharmafl.pipeline.run import prepare_consortium

        plan = prepare_consortium(cfg, out, consortium, site_homes, data_dir=data_dir, cache_dir=cache_dir)
    else:
        plan = prepare(cfg, out, data_dir=data_dir, cache_dir=cache_dir)
    if cfg.federation.engine == "local":
        from pharmafl.pipeline.engine_local import LocalEngine

        bus = EventBus([*run_listeners(plan), *listeners])
        try:
            LocalEngine().run(plan, bus)
        finally:
            bus.close()
        return json.loads((plan.run_dir / "metrics.json").read_text())
    from pharmafl.pipeline.engine_nvflare import NVFlareEngine

    return NVFlareEngine().run(plan, listeners)


def resume_federated(run_dir: Path, *, reason: str, listeners: Sequence[Listener] = ()) -> dict:
    """Continue the run in ``run_dir`` from its last completed round (:mod:`pharmafl.pipeline.resume`),
    on the engine it was started on."""
    from pharmafl.pipeline.resume import load_plan, resume_point

    plan = load_plan(Path(run_dir).resolve())
    if plan.cfg.ledger.enabled:
        from pharmafl.audit import passphrase_from_env

        passphrase_from_env()  # refuse before anything is written
    if plan.cfg.federation.engine == "nvflare":
        from pharmafl.pipeline.engine_nvflare import NVFlareEngine

        point = resume_point(plan, reason)  # refused here, before a job starts; the server checks again
        return NVFlareEngine().run(plan, listeners, resume=point)
    from pharmafl.pipeline.engine_local import LocalEngine

    point = resume_point(plan, reason)
    bus = EventBus([*run_listeners(plan, resumed=True), *listeners])
    try:
        LocalEngine().run(plan, bus, resume=point)
    finally:
        bus.close()
    return json.loads((plan.run_dir / "metrics.json").read_text())


def export_federated(
    cfg: RunConfig, out: Path, job_dir: Path, *, data_dir: Path | None = None, cache_dir: Path | None = None
) -> Path:
    """Prepare the run and export its NVFlare job (see :func:`engine_nvflare.export_job`)."""
    from pharmafl.pipeline.engine_nvflare import export_job

    return export_job(prepare(cfg, out, data_dir=data_dir, cache_dir=cache_dir), job_dir)
