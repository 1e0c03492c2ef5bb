"""The NVFlare engine: a real simulator run agrees with the in-process engine."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from pharmafl.pipeline.engines import run_federated
from pharmafl.pipeline.nvflare_wire import (
    decode_instructions,
    encode_instructions,
    model_from_error,
    model_from_result,
    result_from_model,
)
from pharmafl.sites.site import FitResult, Instructions

from .conftest import with_federation


@pytest.mark.slow
def test_nvflare_simulator_matches_local_engine(small_cfg, tmp_path):
    """2 sites x 2 rounds of SCAFFOLD (control variates travel both ways) on both engines."""
    from dataclasses import replace

    cfg = with_federation(small_cfg, strategy="scaffold", rounds=2)
    cfg = replace(cfg, data=replace(cfg.data, sites=2))
    local = run_federated(cfg, tmp_path / "local")
    flare = run_federated(with_federation(cfg, engine="nvflare"), tmp_path / "nvflare")
    assert flare["status"] == "completed" and flare["rounds"] == 2 and flare["engine"] == "nvflare"
    a = load_file(tmp_path / "local" / "model.safetensors")
    b = load_file(tmp_path / "nvflare" / "model.safetensors")
    assert a.keys() == b.keys()
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) <= 1e-6  # the bound...
    assert flare["model_sha256"] == local["model_sha256"]  # ...and in fact bit for bit
    assert set(flare["sites"]) == {"site-01", "site-02"} and "val_ci" in flare["sites"]["site-01"]

    # same events, same order, in both runs (up to timestamps and engine names)
    def trace(run):
        lines = (tmp_path / run / "events.jsonl").read_text().splitlines()
        return [(e["type"], e["actor"], e["payload"].get("round")) for e in map(json.loads, lines)]

    assert trace("local") == trace("nvflare")
    assert (tmp_path / "nvflare" / "plots" / "global_test.png").is_file()


@pytest.mark.slow
def test_nvflare_matches_local_engine_under_dp_with_a_declining_site(small_cfg, tmp_path):
    """DP-SGD (seeded noise) on 2 sites x 2 rounds; site-02's budget pays for round 1 only."""
    from dataclasses import replace

    from pharmafl.pipeline.run import prepare
    from pharmafl.sites.privacy import PrivacyConfig, PrivacyPlan

    cfg = with_federation(small_cfg, rounds=2, min_sites=1)
    cfg = replace(cfg, data=replace(cfg.data, sites=2))
    privacy = PrivacyConfig(mode="local", noise_multiplier=1.0, epsilon=100.0, batch_size=32, noise_source="seeded")
    probe = prepare(replace(cfg, privacy=privacy), tmp_path / "probe")
    p2 = PrivacyPlan(**probe.privacy_plans["site-02"])
    privacy = replace(privacy, sites={"site-02": {"epsilon": (p2.epsilon_after(1) + p2.epsilon_after(2)) / 2}})
    cfg = replace(cfg, privacy=privacy)
    local = run_federated(cfg, tmp_path / "local")
    flare = run_federated(with_federation(cfg, engine="nvflare"), tmp_path / "nvflare")
    assert flare["status"] == local["status"] == "completed"
    assert flare["model_sha256"] == local["model_sha256"]

    def trace(run):
        lines = (tmp_path / run / "events.jsonl").read_text().splitlines()
        return [
            (e["type"], e["actor"], e["payload"].get("round"), e["payload"].get("epsilon_total"))
            for e in map(json.loads, lines)
        ]

    assert trace("local") == trace("nvflare")
    assert ("site_declined", "site-02", 2) in [t[:3] for t in trace("nvflare")]


def test_declined_and_privacy_reports_roundtrip():
    from pharmafl.pipeline.nvflare_wire import model_from_declined
    from pharmafl.sites.site import Declined

    d = Declined("site-02", 4, "privacy budget exhausted", {"epsilon_total": 2.5, "budget": 3.0})
    assert result_from_model("site-02", 4, model_from_declined(d)) == d
    res = FitResult("site-01", 3, b"x", "ab" * 32, 17, {}, {"clip_norm": 1.0, "clipped": 3, "epsilon_total": 1.5})
    assert result_from_model("site-01", 3, model_from_result(res)) == res


def test_instructions_roundtrip_through_meta():
    control = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    back = decode_instructions(encode_instructions(Instructions(proximal_mu=0.5, scaffold_control=control)))
    assert back.proximal_mu == 0.5 and np.array_equal(back.scaffold_control["w"], control["w"])
    assert decode_instructions(encode_instructions(None)) is None
    with pytest.raises(KeyError):
        decode_instructions({})


def test_site_result_roundtrip_and_failures():
    res = FitResult("site-01", 3, b"\x00\x01payload", "ab" * 32, 17, {"train_loss": 0.5})
    back = result_from_model("site-01", 3, model_from_result(res))
    assert back == res
    assert "arrived in round 4" in result_from_model("site-01", 4, model_from_result(res))
    assert (
        result_from_model("site-01", 3, model_from_error(3, "OSError: disk")) == "local training failed: OSError: disk"
    )


def test_export_job_for_submission(small_cfg, tmp_path):
    from pharmafl.pipeline.engines import export_federated

    job = export_federated(small_cfg, tmp_path / "run", tmp_path / "job")
    server = json.loads((job / "app_server" / "config" / "config_fed_server.json").read_text())
    text = json.dumps(server)
    assert "pharmafl_nvflare.PharmaflAggregator" in text and '"run/plan.json"' in text  # in the server kit's runs
    assert (job / "app_server" / "custom" / "pharmafl_nvflare.py").is_file()
    for site in ("site-01", "site-02", "site-03"):  # deployed to the sites by name (tests/pipeline/test_provision.py)
        assert (job / f"app_{site}" / "custom" / "client.py").is_file()
        client = json.loads((job / f"app_{site}" / "config" / "config_fed_client.json").read_text())
        assert "--job-plan pharmafl_plan.json" in json.dumps(client)
    assert json.loads((tmp_path / "run" / "plan.json").read_text())["sites"] == ["site-01", "site-02", "site-03"]


@pytest.mark.slow
def test_nvflare_poc_separate_processes(small_cfg, tmp_path, monkeypatch):
    """PocEnv: a real NVFlare server and client processes talking over mutual TLS on 127.0.0.1."""
    from dataclasses import replace

    monkeypatch.setenv("NVFLARE_POC_WORKSPACE", str(tmp_path / "poc"))
    cfg = with_federation(small_cfg, engine="nvflare", nvflare_env="poc", rounds=1)
    cfg = replace(cfg, data=replace(cfg.data, sites=2))
    metrics = run_federated(cfg, tmp_path / "run")
    assert metrics["status"] == "completed" and metrics["rounds"] == 1
    local = run_federated(with_federation(cfg, engine="local"), tmp_path / "local")
    assert metrics["model_sha256"] == local["model_sha256"]


@pytest.mark.slow
@pytest.mark.parametrize("env", ["sim", "poc"])
def test_secure_aggregation_on_nvflare_matches_the_local_engine(small_cfg, tmp_path, monkeypatch, env):
    """The parties run beside NVFlare's server (party services, each its own process, TLS between them);
    shares travel inside the sites' results. The fixed-point sum is exact, so the models agree bit for bit."""
    from dataclasses import replace

    from pharmafl.pipeline.secure_agg.config import SecureAggregationConfig

    monkeypatch.setenv("NVFLARE_POC_WORKSPACE", str(tmp_path / "poc"))
    cfg = with_federation(small_cfg, rounds=2 if env == "sim" else 1, nvflare_env=env)
    cfg = replace(cfg, data=replace(cfg.data, sites=2), secure_aggregation=SecureAggregationConfig(enabled=True))
    flare = run_federated(with_federation(cfg, engine="nvflare"), tmp_path / "nvflare")
    local = run_federated(cfg, tmp_path / "local")
    assert flare["status"] == "completed" and flare["model_sha256"] == local["model_sha256"]
    lines = (tmp_path / "nvflare" / "events.jsonl").read_text().splitlines()
    agg = [json.loads(line)["payload"] for line in lines if json.loads(line)["type"] == "aggregated"]
    assert [a["participants"] for a in agg] == [["site-01", "site-02"]] * cfg.federation.rounds
    assert all(a["secure"]["parties"] == ["server-party", "helper-1"] for a in agg)
