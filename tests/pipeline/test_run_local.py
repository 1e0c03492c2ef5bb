"""The in-process engine end to end: outputs, determinism, failures, what leaves a site."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load_file

from pharmafl.errors import ConfigError
from pharmafl.pipeline import events as ev
from pharmafl.pipeline.engine_local import LocalEngine, make_site
from pharmafl.pipeline.engines import run_federated
from pharmafl.pipeline.events import EventBus
from pharmafl.pipeline.run import benchmark_evaluator, initial_state, prepare
from pharmafl.pipeline.strategies import STRATEGIES
from pharmafl.sites import update as wire
from pharmafl.sites.site import FitResult

from .conftest import with_federation


class Recorder:
    def __init__(self):
        self.events = []

    def on_event(self, event):
        self.events.append(event)

    def close(self):
        pass


def test_run_writes_outputs(small_cfg, tmp_path):
    out = tmp_path / "run"
    metrics = run_federated(small_cfg, out)
    assert metrics["status"] == "completed" and metrics["rounds"] == 2
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test_mse"] == pytest.approx(metrics["test_mse"]) and 0 <= saved["test_ci"] <= 1
    assert set(saved["sites"]) == {"site-01", "site-02", "site-03"}
    rounds = pd.read_parquet(out / "rounds.parquet")
    assert set(rounds["round"]) == {1, 2}
    assert {"global_val_mse", "update_norm", "cosine_to_mean"} <= set(rounds.columns)
    for png in ("site_validation_ci.png", "cosine_heatmap.png", "global_test.png"):
        assert (out / "plots" / png).stat().st_size > 1000
    assert list((out / "tensorboard" / "global").glob("events.out.tfevents.*"))
    assert list((out / "tensorboard" / "site-02").glob("events.out.tfevents.*"))
    weights = load_file(out / "model.safetensors")
    assert weights and all(np.isfinite(v).all() for v in weights.values())
    for site in ("site-01", "site-02", "site-03"):
        manifest = json.loads((out / "sites" / site / "store" / "manifest.json").read_text())
        assert set(manifest["extra"]["splits"]) == {"train", "val", "test"}
        assert manifest["extra"]["label"]["count"] == sum(manifest["extra"]["splits"].values())


def test_same_seed_same_model_different_seed_different_model(small_cfg, tmp_path):
    a = run_federated(small_cfg, tmp_path / "a")["model_sha256"]
    b = run_federated(small_cfg, tmp_path / "b")["model_sha256"]
    from dataclasses import replace

    c = run_federated(replace(small_cfg, seed=8), tmp_path / "c")["model_sha256"]
    assert a == b != c


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_strategy_runs_and_learns(small_cfg, tmp_path, strategy):
    cfg = with_federation(small_cfg, strategy=strategy, rounds=2)
    rec = Recorder()
    plan = prepare(cfg, tmp_path / strategy)
    untrained = benchmark_evaluator(plan)(initial_state(cfg))["mse"]
    metrics = LocalEngine().run(plan, EventBus([rec]))
    assert metrics["status"] == "completed"
    ends = [e for e in rec.events if e.type == ev.ROUND_ENDED]
    assert len(ends) == 2 and np.isfinite(metrics["test_mse"])
    assert metrics["test_mse"] < 0.5 * untrained  # a sign error in any update rule fails this
    agg = [e for e in rec.events if e.type == ev.AGGREGATED]
    assert all(e.payload["strategy"] == strategy for e in agg)


def test_aggregation_ignores_arrival_order(small_cfg, tmp_path):
    """The coordinator sums in sorted site order whatever order results arrive in."""
    from pharmafl.pipeline.run import server_side
    from pharmafl.sites.site import Instructions

    plan = prepare(small_cfg, tmp_path / "run")
    state = initial_state(plan.cfg)
    results = {s: make_site(plan, s).fit(1, state, Instructions()) for s in plan.sites}
    hashes = []
    for order in (plan.sites, tuple(reversed(plan.sites)), (plan.sites[1], plan.sites[0], plan.sites[2])):
        rec = Recorder()
        coord = server_side(plan, EventBus([rec]))
        coord.finish_round(1, state, {s: results[s] for s in order})
        hashes.append([e.payload["checkpoint_hash"] for e in rec.events if e.type == ev.AGGREGATED][0])
    assert len(set(hashes)) == 1


@pytest.mark.parametrize("privacy", [None, "local", "client"])
def test_only_updates_and_metrics_leave_a_site(small_cfg, tmp_path, privacy):
    """Inspect every payload that reaches the aggregation side: no rows, labels or ids."""
    from dataclasses import replace

    from pharmafl.sites.privacy import PrivacyConfig

    cfg = small_cfg
    if privacy is not None:
        cfg = replace(
            with_federation(cfg, weighting="uniform"),
            privacy=PrivacyConfig(mode=privacy, epsilon=20.0, batch_size=32, noise_source="seeded"),
        )
    plan = prepare(cfg, tmp_path / "run")
    seen: list[FitResult] = []

    class Spy(LocalEngine):
        def _fit_all(self, sites, task):
            replies = super()._fit_all(sites, task)
            seen.extend(replies.results.values())
            return replies

    Spy().run(plan, EventBus([]))
    ds_ids = set()
    for site in plan.sites:
        m = pd.read_parquet((plan.site_home(site) / "store") / "measurements.parquet")
        ds_ids |= set(m.drug_id) | set(m.target_id)
    for res in seen:
        assert set(vars(res)) == {
            "site",
            "round",
            "payload",
            "update_hash",
            "num_examples",
            "metrics",
            "privacy",
            "statements",
        }
        assert {s["type"] for s in res.statements} <= {"site_update", "clip", "privacy_spent"}
        assert (res.privacy is None) == (privacy is None)
        for value in (res.privacy or {}).values():  # DP accounting and clip figures: scalars and names
            assert isinstance(value, (int, float, str)) or value is None, value
        upd = wire.decode(res.payload)
        assert set(upd.parts) == {"delta"}
        assert set(upd.delta) == set(initial_state(plan.cfg))  # model parameter names only
        for value in res.metrics.values():
            assert isinstance(value, (int, float)), value  # scalars only: no rows, labels, predictions
        assert "train_loss" not in res.metrics or privacy is None  # not covered by DP: stays home
        blob = res.payload + json.dumps([res.metrics, res.privacy, res.statements]).encode()
        for ident in ds_ids:
            assert str(ident).encode() not in blob, ident


def test_failing_site_is_reported_and_round_completes(small_cfg, tmp_path):
    cfg = with_federation(small_cfg, min_sites=2)
    plan = prepare(cfg, tmp_path / "run")

    def factory(plan, sid):
        site = make_site(plan, sid)
        if sid == "site-02":
            real = site.fit

            def fit(r, state, instructions):
                if r == 2:
                    raise OSError("disk unplugged")
                return real(r, state, instructions)

            site.fit = fit
        return site

    rec = Recorder()
    metrics = LocalEngine(site_factory=factory).run(plan, EventBus([rec]))
    assert metrics["status"] == "completed" and metrics["rounds"] == 2
    failed = [e.payload for e in rec.events if e.type == ev.SITE_FAILED]
    assert failed == [{"round": 2, "site": "site-02", "error": "OSError: disk unplugged"}]
    agg2 = [e.payload for e in rec.events if e.type == ev.AGGREGATED][1]
    assert agg2["participants"] == ["site-01", "site-03"]


def test_too_few_sites_stops_cleanly_keeping_outputs(small_cfg, tmp_path):
    plan = prepare(small_cfg, tmp_path / "run")  # min_sites = all 3

    def factory(plan, sid):
        site = make_site(plan, sid)
        if sid == "site-03":
            site.fit = lambda r, s, i: (_ for _ in ()).throw(RuntimeError("site offline"))
        return site

    from pharmafl.pipeline.tracking import RunTracker

    metrics = LocalEngine(site_factory=factory).run(plan, EventBus([RunTracker(plan.run_dir)]))
    assert metrics["status"].startswith("stopped") and metrics["rounds"] == 0
    assert json.loads((plan.run_dir / "metrics.json").read_text())["status"].startswith("stopped")
    assert (plan.run_dir / "model.safetensors").is_file()


def test_tampered_update_is_rejected(small_cfg, tmp_path):
    plan = prepare(with_federation(small_cfg, min_sites=2), tmp_path / "run")

    def factory(plan, sid):  # site-01 itself sends bytes that do not hash to what it claims
        site = make_site(plan, sid)
        if sid == "site-01":
            real = site.inner.fit

            def fit(r, state, instructions):
                res = real(r, state, instructions)
                forged = bytearray(res.payload)
                forged[-1] ^= 0xFF
                return FitResult(res.site, res.round, bytes(forged), res.update_hash, res.num_examples, res.metrics)

            site.inner.fit = fit
        return site

    rec = Recorder()
    LocalEngine(site_factory=factory).run(plan, EventBus([rec]))
    failed = [e.payload for e in rec.events if e.type == ev.SITE_FAILED]
    assert {f["site"] for f in failed} == {"site-01"} and "hash mismatch" in failed[0]["error"]


def test_run_dir_must_be_new(small_cfg, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        prepare(small_cfg, tmp_path / "run")


def test_store_tampering_is_caught_before_round_1(small_cfg, tmp_path):
    plan = prepare(small_cfg, tmp_path / "run")
    path = (plan.site_home("site-02") / "store") / "measurements.parquet"
    path.write_bytes(path.read_bytes() + b"\0")
    from pharmafl.errors import DataError

    with pytest.raises(DataError, match="sha256"):
        make_site(plan, "site-02")  # the site opens its own store and refuses it


def test_run_leaves_a_verifiable_ledger(small_cfg, tmp_path, monkeypatch):
    from dataclasses import replace

    from pharmafl.audit import Ledger
    from pharmafl.audit.dbsource import verify_target
    from pharmafl.audit.records import asserted
    from pharmafl.pipeline.config import LedgerConfig

    monkeypatch.setenv("PHARMAFL_KEY_PASSPHRASE", "a test passphrase")
    out = tmp_path / "run"
    metrics = run_federated(replace(small_cfg, ledger=LedgerConfig(enabled=True)), out)
    result = verify_target(out / "ledger.db")
    ledger = Ledger.open(out / "ledger.db")
    entries = list(ledger.entries())
    types = [e.type for e in entries]
    assert types.count("round_ended") == 2 and types[-1] == "run_ended"
    assert len(list(ledger.checkpoints())) == 3  # after each round_ended and run_ended
    updates = [e for e in entries if e.type == "site_update"]
    assert {asserted(e)[0] for e in updates} == {"site-01", "site-02", "site-03"}  # each site's own statement
    assert {e.actor for e in entries} == {"server"}  # the coordinator signs the chain; no site key is registered
    run_started = entries[types.index("run_started")].data
    assert run_started["manifests"].keys() == {"site-01", "site-02", "site-03"}
    assert run_started["consortium"]["cards"].keys() == run_started["manifests"].keys()
    assert entries[-1].data["model_hash"] == metrics["model_sha256"]
    last_agg = [e for e in entries if e.type == "aggregated"][-1].data
    assert last_agg["checkpoint_hash"] == metrics["model_sha256"]  # lineage: ledger -> model file
    assert result.line().startswith("OK: ")


def test_failed_preparation_leaves_nothing(small_cfg, tmp_path):
    from dataclasses import replace

    from pharmafl.errors import DataError

    cfg = replace(small_cfg, data=replace(small_cfg.data, sites=300))  # ~2 rows a site: too few
    with pytest.raises(DataError, match="too few for train/val/test"):
        prepare(cfg, tmp_path / "run")
    assert list(tmp_path.iterdir()) == []


def test_relative_out_is_stored_absolute(small_cfg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = prepare(small_cfg, Path("runs/rel"))
    assert plan.run_dir.is_absolute() and plan.run_dir == tmp_path / "runs" / "rel"
    from pharmafl.pipeline.run import RunPlan

    assert RunPlan.load(Path("runs/rel/plan.json")).run_dir == plan.run_dir  # plan.json holds no absolute path
    assert "run_dir" not in json.loads(Path("runs/rel/plan.json").read_text())


def test_scaffold_update_without_or_with_bad_control_is_a_site_failure(small_cfg, tmp_path):
    cfg = with_federation(small_cfg, strategy="scaffold", min_sites=1)
    plan = prepare(cfg, tmp_path / "run")

    def factory(plan, sid):
        site = make_site(plan, sid)
        real = site.inner.fit

        def fit(r, state, instructions):
            res = real(r, state, instructions)
            upd = wire.decode(res.payload)
            if sid == "site-01":  # drops its control part
                upd = wire.Update(upd.site, upd.round, upd.num_examples, {"delta": upd.delta})
            elif sid == "site-02":  # poisons it
                control = {k: np.full_like(v, np.nan) for k, v in upd.parts["control"].items()}
                upd = wire.Update(upd.site, upd.round, upd.num_examples, {"delta": upd.delta, "control": control})
            else:
                return res
            payload = wire.encode(upd)
            return FitResult(res.site, res.round, payload, wire.sha256(payload), res.num_examples, res.metrics)

        site.inner.fit = fit
        return site

    rec = Recorder()
    metrics = LocalEngine(site_factory=factory).run(plan, EventBus([rec]))
    assert metrics["status"] == "completed"
    failed = {
        (e.payload["site"], e.payload["round"]): e.payload["error"] for e in rec.events if e.type == ev.SITE_FAILED
    }
    assert "lacks the parts ['control']" in failed["site-01", 1]
    assert "control/" in failed["site-02", 1] and "NaN" in failed["site-02", 1]
    assert all(e.payload["participants"] == ["site-03"] for e in rec.events if e.type == ev.AGGREGATED)


def test_an_error_mid_run_is_recorded_then_raised(small_cfg, tmp_path):
    from pharmafl.pipeline.tracking import RunTracker

    plan = prepare(small_cfg, tmp_path / "run")
    rec = Recorder()

    class Broken(LocalEngine):
        round = 0

        def _fit_all(self, sites, task):
            if task.round == 2:
                raise MemoryError("out of memory in round 2")
            return super()._fit_all(sites, task)

    with pytest.raises(MemoryError):
        Broken().run(plan, EventBus([rec, RunTracker(plan.run_dir)]))
    end = [e.payload for e in rec.events if e.type == ev.RUN_ENDED]
    assert len(end) == 1 and end[0]["status"].startswith("failed: MemoryError") and end[0]["rounds"] == 1
    assert json.loads((plan.run_dir / "metrics.json").read_text())["status"].startswith("failed")


CLIP = {"clip_norm": 1.0, "clipped": 0, "total": 1, "max_norm": 0.5, "mean_norm": 0.5}
BAD_PRIVACY_REPORTS = {  # what a site sends as its privacy report -> what the failure must name
    "claims another round and site": (
        {**CLIP, "epsilon_round": 0.1, "epsilon_total": 1.0, "round": 99, "site": "site-01"},
        "reserved keys ['round', 'site']",
    ),
    "spends with no epsilon_round": ({**CLIP, "epsilon_total": 1.0}, "not a finite number ['epsilon_round']"),
    "counts clips as text": ({**CLIP, "clipped": "none"}, "not a finite number ['clipped']"),
}


@pytest.mark.parametrize("case", BAD_PRIVACY_REPORTS)
def test_a_malformed_privacy_report_is_that_sites_failure_not_a_crash(small_cfg, tmp_path, monkeypatch, case):
    """A privacy report that names ``round`` or ``site`` (it would overwrite what the coordinator
    records), or lacks what the tracker and the report read, once crashed the run: now it is
    that site's failure for the round; the others' round completes and the ledger verifies."""
    from dataclasses import replace

    from pharmafl.audit.dbsource import verify_target
    from pharmafl.pipeline.config import LedgerConfig
    from pharmafl.pipeline.engines import run_listeners

    report, expected = BAD_PRIVACY_REPORTS[case]
    monkeypatch.setenv("PHARMAFL_KEY_PASSPHRASE", "a test passphrase")
    cfg = replace(with_federation(small_cfg, min_sites=2), ledger=LedgerConfig(enabled=True))
    plan = prepare(cfg, tmp_path / "run")

    def factory(plan, sid):
        site = make_site(plan, sid)
        if sid == "site-02":
            real = site.inner.fit
            site.inner.fit = lambda r, state, instructions: replace(real(r, state, instructions), privacy=report)
        return site

    rec = Recorder()
    bus = EventBus([*run_listeners(plan), rec])
    try:
        metrics = LocalEngine(site_factory=factory).run(plan, bus)
    finally:
        bus.close()
    assert metrics["status"] == "completed" and metrics["rounds"] == 2
    failed = [e.payload for e in rec.events if e.type == ev.SITE_FAILED]
    assert [(f["round"], f["site"]) for f in failed] == [(1, "site-02"), (2, "site-02")]
    assert all(expected in f["error"] for f in failed), failed
    assert all(e.payload["participants"] == ["site-01", "site-03"] for e in rec.events if e.type == ev.AGGREGATED)
    assert not [e for e in rec.events if e.type in (ev.CLIP, ev.PRIVACY_SPENT) and e.actor == "site-02"]
    assert verify_target(plan.run_dir / "ledger.db").entries > 0
