"""Runs under differential privacy: ledgered spend, budget enforcement, client-level DP."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from pharmafl.errors import ConfigError
from pharmafl.pipeline.config import LedgerConfig, RunConfig
from pharmafl.pipeline.engines import run_federated
from pharmafl.pipeline.run import make_site, prepare
from pharmafl.sites import update as wire
from pharmafl.sites.privacy import PrivacyConfig, PrivacyPlan
from pharmafl.sites.site import Declined, Instructions

from .conftest import events, with_federation

SITES = ("site-01", "site-02", "site-03")


def dp(cfg: RunConfig, **privacy) -> RunConfig:
    base = {"mode": "local", "batch_size": 32, "chunk_pairs": 48, "noise_source": "seeded"}
    return replace(cfg, privacy=PrivacyConfig(**{**base, **privacy}))


def test_local_dp_run_ledgers_every_clip_event_and_epsilon(small_cfg, tmp_path, monkeypatch):
    from pharmafl.audit import Ledger
    from pharmafl.audit.dbsource import verify_target
    from pharmafl.audit.records import asserted

    monkeypatch.setenv("PHARMAFL_KEY_PASSPHRASE", "a test passphrase")
    cfg = replace(dp(small_cfg, epsilon=8.0, noise_source="csprng"), ledger=LedgerConfig(enabled=True))
    out = tmp_path / "run"
    metrics = run_federated(cfg, out)
    assert metrics["status"] == "completed" and np.isfinite(metrics["test_mse"])
    assert verify_target(out / "ledger.db").line().startswith("OK: ")
    raw = list(Ledger.open(out / "ledger.db").entries())
    entries = [SimpleNamespace(type=e.type, actor=asserted(e)[0], data=asserted(e)[1]) for e in raw]
    started = next(e for e in entries if e.type == "run_started").data["privacy"]
    assert started["mode"] == "local" and started["unit"] == "pair" and "measurement" in started["protects"]
    assert set(started["plans"]) == set(SITES)
    for r in (1, 2):
        for site in SITES:
            clip = [e for e in entries if e.type == "clip" and e.actor == site and e.data["round"] == r]
            spent = [e for e in entries if e.type == "privacy_spent" and e.actor == site and e.data["round"] == r]
            assert len(clip) == len(spent) == 1
            c, s = clip[0].data, spent[0].data
            assert c["clip_norm"] == 1.0 and 0 <= c["clipped"] <= c["total"] and c["max_norm"] >= c["mean_norm"] > 0
            plan = started["plans"][site]
            assert s["noise_multiplier"] == plan["noise_multiplier"] and s["sample_rate"] == plan["sample_rate"]
            assert s["steps"] == plan["steps_per_round"] and s["accountant"] == "prv" and s["privacy_unit"] == "pair"
            assert s["delta"] < 1 / plan["units"] and 0 < s["epsilon_round"] <= s["epsilon_total"] <= 8.0
            assert s["noise_source"] == "os.urandom-keyed chacha20"
    final = [e.data["epsilon_total"] for e in entries if e.type == "privacy_spent" and e.data["round"] == 2]
    assert max(final) <= 8.0 and min(final) > 7.0  # the derived noise spends (almost) the whole budget
    updates = [e for e in entries if e.type == "site_update"]
    assert all("train_loss" not in e.data["metrics"] for e in updates)  # training-data statistic stays home
    rounds = pd.read_parquet(out / "rounds.parquet")
    eps = rounds[rounds.site != "global"].pivot(index="round", columns="site", values="epsilon_total")
    assert (eps.diff().iloc[1:] > 0).all().all() and (out / "plots" / "privacy_epsilon.png").is_file()


def _planned(small_cfg, tmp_path, **privacy):
    plan = prepare(dp(small_cfg, **privacy), tmp_path / "probe")
    return {s: PrivacyPlan(**p) for s, p in plan.privacy_plans.items()}


def test_a_site_declines_the_round_its_budget_cannot_pay_and_the_run_goes_on(small_cfg, tmp_path):
    cfg = with_federation(small_cfg, rounds=3, min_sites=1)
    plans = _planned(cfg, tmp_path, noise_multiplier=1.0, epsilon=100.0)
    mid = {s: (p.epsilon_after(2) + p.epsilon_after(3)) / 2 for s, p in plans.items()}
    sites = {"site-02": {"epsilon": mid["site-02"]}, "site-03": {"epsilon": mid["site-03"]}}
    out = tmp_path / "run"
    metrics = run_federated(dp(cfg, noise_multiplier=1.0, epsilon=100.0, sites=sites), out)
    assert metrics["status"] == "completed" and metrics["rounds"] == 3
    declined = events(out, "site_declined")
    assert [(e["actor"], e["payload"]["round"]) for e in declined] == [("site-02", 3), ("site-03", 3)]
    for e in declined:
        p = e["payload"]
        assert p["reason"] == "privacy budget exhausted" and p["budget"] == mid[e["actor"]]
        assert p["epsilon_total"] <= p["budget"] < p["epsilon_if_trained"]
    agg3 = next(e for e in events(out, "aggregated") if e["payload"]["round"] == 3)
    assert agg3["payload"]["participants"] == ["site-01"]
    assert [d["site"] for d in json.loads((out / "metrics.json").read_text())["declined"]] == ["site-02", "site-03"]
    budgets = {"site-01": 100.0, "site-02": mid["site-02"], "site-03": mid["site-03"]}
    for e in events(out, "privacy_spent"):
        assert e["payload"]["epsilon_total"] <= budgets[e["actor"]]


def test_on_exhausted_stop_ends_the_run_cleanly(small_cfg, tmp_path):
    cfg = with_federation(small_cfg, rounds=3)
    plans = _planned(cfg, tmp_path, noise_multiplier=1.0, epsilon=100.0)
    budget = min((p.epsilon_after(1) + p.epsilon_after(2)) / 2 for p in plans.values())
    budget = max(budget, max(p.epsilon_after(1) for p in plans.values()) * 1.0001)
    out = tmp_path / "run"
    metrics = run_federated(dp(cfg, noise_multiplier=1.0, epsilon=budget, on_exhausted="stop"), out)
    assert metrics["status"].startswith("stopped: round 2:") and "declined" in metrics["status"]
    assert metrics["rounds"] == 1 and (out / "model.safetensors").is_file()
    assert {e["payload"]["round"] for e in events(out, "site_declined")} == {2}


def test_compound_unit_plans_over_compounds(small_cfg, tmp_path):
    plans = _planned(small_cfg, tmp_path, epsilon=20.0, unit="compound", batch_size=4)
    for p in plans.values():
        assert p.unit == "compound" and 5 <= p.units <= 24  # 24 compounds among 3 iid sites


def test_spent_budget_survives_a_site_restart(small_cfg, tmp_path):
    cfg = dp(small_cfg, epsilon=8.0)
    plan = prepare(cfg, tmp_path / "run")
    from pharmafl.pipeline.run import initial_state

    state = initial_state(cfg)
    site = make_site(plan, "site-01")
    res = site.fit(1, state, Instructions())
    assert not isinstance(res, Declined)
    spent = res.privacy["epsilon_total"]
    again = make_site(plan, "site-01")  # e.g. the site's process restarted
    assert again.inner.epsilon == pytest.approx(spent)
    assert again.fit(2, state, Instructions()).privacy["epsilon_total"] > spent


def test_client_level_dp_clips_updates_and_accounts_at_the_server(small_cfg, tmp_path):
    cfg = replace(
        with_federation(small_cfg, weighting="uniform"),
        privacy=PrivacyConfig(mode="client", epsilon=20.0, clip_norm=0.05, noise_source="seeded"),
    )
    out = tmp_path / "run"
    metrics = run_federated(cfg, out)
    assert metrics["status"] == "completed"
    server = [e["payload"] for e in events(out, "privacy_spent") if e["actor"] == "server"]
    assert [p["round"] for p in server] == [1, 2] and server[-1]["epsilon_total"] <= 20.0
    assert server[0]["privacy_unit"] == "site" and server[0]["sample_rate"] == 1.0
    clips = events(out, "clip")
    assert len(clips) == 6 and all(e["payload"]["total"] == 1 for e in clips)
    assert all(e["payload"]["clipped"] == 1 for e in clips)  # 0.05 is below any real update's norm
    agg = events(out, "aggregated")
    assert all(e["payload"]["strategy"] == "fedavg+client-dp" for e in agg)


def test_update_clip_site_bounds_the_update(small_cfg, tmp_path):
    cfg = replace(
        with_federation(small_cfg, weighting="uniform"),
        privacy=PrivacyConfig(mode="client", epsilon=20.0, clip_norm=0.01),
    )
    plan = prepare(cfg, tmp_path / "run")
    from pharmafl.pipeline.run import initial_state

    res = make_site(plan, "site-02").fit(1, initial_state(cfg), Instructions())
    delta = wire.decode(res.payload).delta
    norm = np.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in delta.values()))
    assert norm == pytest.approx(0.01, rel=1e-4) and res.privacy["max_norm"] > 0.01


@pytest.mark.parametrize(
    "change, message",
    [
        ({"strategy": "scaffold"}, "'scaffold' cannot run under privacy"),
        ({"drug_encoder": "gat"}, "'gat' cannot be trained with DP-SGD"),
        ({"sites": {"site-09": {"epsilon": 1.0}}}, r"privacy.sites names \['site-09'\]"),
        ({"mode": "client"}, "needs federation.weighting 'uniform'"),
    ],
)
def test_privacy_incompatible_configs_fail_before_anything_is_written(small_cfg, tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        cfg = small_cfg
        if "strategy" in change:
            cfg = with_federation(cfg, strategy=change["strategy"])
        if "drug_encoder" in change:
            cfg = replace(cfg, model=replace(cfg.model, drug_encoder="gat"))
        privacy = {k: v for k, v in change.items() if k in ("sites", "mode")}
        replace(cfg, privacy=PrivacyConfig(**{"mode": "local", "epsilon": 5.0, **privacy}))
    assert not any(tmp_path.iterdir())


def test_budget_too_small_for_one_round_leaves_no_run_directory(small_cfg, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="one round costs"):
        run_federated(dp(small_cfg, epsilon=0.2, noise_multiplier=0.5), out)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".run")]
