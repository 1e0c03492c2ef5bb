"""Runs under secure aggregation: the ledger trail, drop-outs, an over-bound site, DP first."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
from safetensors.numpy import load_file

from pharmafl.audit import Ledger
from pharmafl.audit.dbsource import verify_target
from pharmafl.audit.records import asserted
from pharmafl.errors import ConfigError
from pharmafl.pipeline.config import LedgerConfig, RunConfig
from pharmafl.pipeline.engine_local import LocalEngine
from pharmafl.pipeline.engines import run_federated
from pharmafl.pipeline.eventlog import JsonlEventLog
from pharmafl.pipeline.events import EventBus
from pharmafl.pipeline.run import initial_state, make_site, prepare, sign_site
from pharmafl.pipeline.secure_agg.config import SecureAggregationConfig
from pharmafl.sites import update as wire
from pharmafl.sites.party_card import party_keys
from pharmafl.sites.privacy import PrivacyConfig
from pharmafl.sites.secret_sharing import PartyKey
from pharmafl.sites.secure_site import SecureSite, open_commitment

from .conftest import events, with_federation


def secure(cfg: RunConfig, **kw) -> RunConfig:
    return replace(cfg, secure_aggregation=SecureAggregationConfig(enabled=True, **kw))


def kept_dir(run_dir, site):
    """Where a simulated site keeps its updates: in its own home, per run."""
    run_id = json.loads((run_dir / "plan.json").read_text())["run_id"]
    return run_dir / "sites" / site / "runs" / run_id / "kept"


def kept_update(run_dir, site, round):
    return wire.decode((kept_dir(run_dir, site) / f"round-{round:04d}.update").read_bytes())


def expected_model(run_dir, cfg, rounds, participants):
    """Initial weights plus, per round, the examples-weighted mean of the participants' kept updates."""
    state = {k: v.astype(np.float64) for k, v in initial_state(cfg).items()}
    for r in range(1, rounds + 1):
        ups = [kept_update(run_dir, s, r) for s in participants[r]]
        n = sum(u.num_examples for u in ups)
        for k in state:
            state[k] = state[k] + sum(u.num_examples * u.delta[k].astype(np.float64) for u in ups) / n
            state[k] = state[k].astype(np.float32).astype(np.float64)
    return state


def test_secure_run_records_commitments_bound_checks_and_sums(small_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("PHARMAFL_KEY_PASSPHRASE", "a test passphrase")
    cfg = replace(secure(small_cfg), ledger=LedgerConfig(enabled=True))
    out = tmp_path / "secure"
    metrics = run_federated(cfg, out)
    assert metrics["status"] == "completed"
    assert verify_target(out / "ledger.db").line().startswith("OK: ")
    raw = list(Ledger.open(out / "ledger.db").entries())
    entries = [SimpleNamespace(type=e.type, actor=asserted(e)[0], data=asserted(e)[1]) for e in raw]
    started = next(e for e in entries if e.type == "run_started").data["secure_aggregation"]
    assert set(started["parties"]) == {"server-party", "helper-1"} and started["max_update_norm"] == 10.0
    assert started["terms"]["min_sites"] == 3 and started["terms"]["dealer"] == "helper-1"
    signed = {(e.type, e.actor) for e in entries if e.type.startswith("party_")}
    assert signed == {(t, p) for t in ("party_registered", "party_round") for p in ("server-party", "helper-1")}
    rounds = [e.data for e in entries if e.type == "party_round" and e.actor == "server-party"]
    agg_hashes = [e.data["secure"]["sum_hash"] for e in entries if e.type == "aggregated"]
    assert [r["sum_sha256"] for r in rounds] == agg_hashes  # the sum the server used is the one its party signed
    sites = ["site-01", "site-02", "site-03"]
    for r in (1, 2):
        for site in sites:
            shares = [e for e in entries if e.type == "secure_shares" and e.actor == site and e.data["round"] == r]
            assert len(shares) == 1
            opened = open_commitment(kept_dir(out, site), r)  # the site proves what it sent
            assert shares[0].data["commitment"] == opened["commitment"]
            assert set(shares[0].data["share_hashes"]) == {"server-party", "helper-1"}
            checks = [e for e in entries if e.type == "bound_check" and e.data["site"] == site and e.data["round"] == r]
            assert len(checks) == 1 and checks[0].data["passed"] is True
        agg = next(e for e in entries if e.type == "aggregated" and e.data["round"] == r).data
        assert agg["participants"] == sites and agg["secure"]["excluded"] == {}
        assert len(agg["secure"]["sum_hash"]) == 64
    # the plaintext update never left a site: what the server logged holds envelopes only
    update_entries = [e for e in entries if e.type == "site_update"]
    assert all(
        e.data["update_bytes"] > 2 * 4 * sum(v.size for v in initial_state(cfg).values()) for e in update_entries
    )
    model = load_file(out / "model.safetensors")
    want = expected_model(out, cfg, 2, {1: sites, 2: sites})
    assert max(float(np.abs(model[k] - want[k]).max()) for k in model) <= 1e-4


def test_one_round_matches_the_clear_run(small_cfg, tmp_path):
    cfg = with_federation(small_cfg, rounds=1)
    run_federated(cfg, tmp_path / "clear")
    run_federated(secure(cfg), tmp_path / "secure")
    a, b = load_file(tmp_path / "clear" / "model.safetensors"), load_file(tmp_path / "secure" / "model.safetensors")
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) <= 1e-4


class DropsOut:
    """Trains and shares, then loses its connection before the result is sent (round ``at``)."""

    def __init__(self, inner, at):
        self.inner, self.id, self.at = inner, inner.id, at

    def evaluate(self, state):
        return self.inner.evaluate(state)

    def fit(self, round, state, instructions):
        out = self.inner.fit(round, state, instructions)
        if round == self.at:
            raise ConnectionError(f"{self.id} lost its connection mid-round")
        return out


class Faulty:
    """A site whose update is far outside the agreed bound (diverged, or malicious)."""

    def __init__(self, inner, factor):
        self.inner, self.id, self.factor = inner, inner.id, factor

    def evaluate(self, state):
        return self.inner.evaluate(state)

    def fit(self, round, state, instructions):
        res = self.inner.fit(round, state, instructions)
        u = wire.decode(res.payload)
        payload = wire.encode(
            wire.Update(u.site, u.round, u.num_examples, {"delta": {k: v * self.factor for k, v in u.delta.items()}})
        )
        return replace(res, payload=payload, update_hash=wire.sha256(payload))


def clear_site(plan, site):
    """The site as trained in the clear, before sharing and signing."""
    return make_site(replace(plan, cfg=replace(plan.cfg, secure_aggregation=SecureAggregationConfig())), site).inner


def run_local(plan, factory, tmp_path):
    bus = EventBus([JsonlEventLog(plan.run_dir / "events.jsonl")])
    try:
        return LocalEngine(site_factory=factory).run(plan, bus)
    finally:
        bus.close()


@pytest.mark.slow
@pytest.mark.parametrize("gone", [("site-04",), ("site-02", "site-05", "site-09")])
def test_sites_dropping_out_mid_round_are_left_out_of_the_sum(small_cfg, tmp_path, gone):
    cfg = secure(with_federation(replace(small_cfg, data=replace(small_cfg.data, sites=10)), min_sites=6))
    plan = prepare(cfg, tmp_path / "run")
    metrics = run_local(plan, lambda p, s: DropsOut(make_site(p, s), at=2) if s in gone else make_site(p, s), tmp_path)
    assert metrics["status"] == "completed"
    everyone = list(plan.sites)
    agg = {e["payload"]["round"]: e["payload"] for e in events(plan.run_dir, "aggregated")}
    assert agg[1]["participants"] == everyone
    assert agg[2]["participants"] == [s for s in everyone if s not in gone]
    failed = {e["payload"]["site"] for e in events(plan.run_dir, "site_failed") if e["payload"]["round"] == 2}
    assert failed == set(gone)
    model = load_file(plan.run_dir / "model.safetensors")
    want = expected_model(plan.run_dir, cfg, 2, {1: everyone, 2: agg[2]["participants"]})
    assert max(float(np.abs(model[k] - want[k]).max()) for k in model) <= 1e-4


@pytest.mark.slow
def test_an_over_bound_update_is_excluded_and_a_share_for_the_wrong_key_dropped(small_cfg, tmp_path):
    cfg = secure(
        with_federation(replace(small_cfg, data=replace(small_cfg.data, sites=4)), min_sites=2, rounds=1),
        max_update_norm=5.0,
    )
    plan = prepare(cfg, tmp_path / "run")
    keys = party_keys(plan.consortium)
    impostor = [keys[0], PartyKey.generate("helper-1")]  # a misconfigured site: the wrong helper key

    def factory(p, s):
        openings = p.site_home(s) / "runs" / p.run_id / "kept"
        if s == "site-02":
            return sign_site(p, s, SecureSite(Faulty(clear_site(p, s), factor=1e4), keys, p.secagg_context, openings))
        if s == "site-03":
            return sign_site(p, s, SecureSite(clear_site(p, s), impostor, p.secagg_context, openings))
        return make_site(p, s)

    assert run_local(plan, factory, tmp_path)["status"] == "completed"
    checks = {e["payload"]["site"]: e["payload"]["passed"] for e in events(plan.run_dir, "bound_check")}
    assert checks == {"site-01": True, "site-02": False, "site-04": True}
    agg = events(plan.run_dir, "aggregated")[0]["payload"]
    assert agg["participants"] == ["site-01", "site-04"]
    assert "norm bound" in agg["secure"]["excluded"]["site-02"]
    assert "was encrypted to key" in agg["secure"]["excluded"]["site-03"]
    model = load_file(plan.run_dir / "model.safetensors")
    want = expected_model(plan.run_dir, cfg, 1, {1: ["site-01", "site-04"]})
    assert max(float(np.abs(model[k] - want[k]).max()) for k in model) <= 1e-4


def test_dp_first_then_sharing(small_cfg, tmp_path):
    privacy = PrivacyConfig(mode="local", epsilon=8.0, batch_size=32, chunk_pairs=48, noise_source="seeded")
    cfg = secure(replace(with_federation(small_cfg, rounds=1), privacy=privacy))
    metrics = run_federated(cfg, tmp_path / "run")
    assert metrics["status"] == "completed"
    spent = events(tmp_path / "run", "privacy_spent")
    assert len(spent) == 3 and all(0 < e["payload"]["epsilon_total"] <= 8.0 for e in spent)
    assert len(events(tmp_path / "run", "secure_shares")) == 3


def test_client_level_dp_noises_the_revealed_mean(small_cfg, tmp_path):
    privacy = PrivacyConfig(mode="client", noise_multiplier=1.0, clip_norm=0.5, noise_source="seeded")
    cfg = secure(replace(with_federation(small_cfg, rounds=1, weighting="uniform"), privacy=privacy))
    assert run_federated(cfg, tmp_path / "run")["status"] == "completed"
    server = [e for e in events(tmp_path / "run", "privacy_spent") if e["actor"] == "server"]
    assert len(server) == 1 and server[0]["payload"]["participants"] == 3


@pytest.mark.parametrize(
    "change, message",
    [
        ({"strategy": "scaffold"}, "scaffold' cannot run under secure_aggregation"),
        ({"weighting": "quality"}, "quality' cannot run under secure_aggregation"),
        ({"min_sites": 1}, "min_sites 1 cannot run under secure_aggregation"),
    ],
)
def test_strategies_that_need_individual_updates_are_refused(small_cfg, change, message):
    with pytest.raises(ConfigError, match=message):
        secure(with_federation(small_cfg, **change))


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"max_update_norm": 5000.0}, "too large to check"),
        ({"helpers": 0}, "helpers must be in 1..4"),
        ({"buckets": 8}, "buckets in 64..4096"),
        ({"max_examples": 0}, "max_examples must be an integer"),
        ({"endpoints": {"helper-1": "no-port"}}, "is not host:port"),
    ],
)
def test_bad_secure_settings_are_one_clear_error(kw, message):
    with pytest.raises(ConfigError, match=message):
        SecureAggregationConfig(enabled=True, **kw)


@pytest.mark.slow
def test_ten_site_davis_with_secure_aggregation_ends_within_0005_ci_of_the_clear_run(shared_data_dir, tmp_path):
    from pharmafl.models.dti import ModelConfig
    from pharmafl.pipeline.config import DataConfig, FederationConfig
    from pharmafl.sites.training import TrainConfig

    cfg = RunConfig(
        name="davis",
        seed=0,
        data=DataConfig(dataset="davis", sites=10, partition="iid"),
        model=ModelConfig(label_offset=5.0),
        train=TrainConfig(batch_size=512, lr=2e-3),
        federation=FederationConfig(rounds=2, local_epochs=1, engine="local", min_sites=8),
        ledger=LedgerConfig(enabled=False),
    )
    cache = tmp_path / "cache"
    clear = run_federated(cfg, tmp_path / "clear", data_dir=shared_data_dir, cache_dir=cache)
    hidden = run_federated(secure(cfg), tmp_path / "secure", data_dir=shared_data_dir, cache_dir=cache)
    assert clear["status"] == hidden["status"] == "completed"
    assert abs(clear["test_ci"] - hidden["test_ci"]) <= 0.005
    assert abs(clear["test_mse"] - hidden["test_mse"]) <= 0.01


def test_in_a_real_run_no_party_receives_a_site_update(small_cfg, tmp_path):
    """The parties' transcripts of a real round (everything each received) hold no site's encoded
    update; the one array that is a combination of updates is the revealed sum, at the server."""
    from pharmafl.sites.secret_sharing import encode_fixed, flatten

    from ..uniformity import looks_uniform

    cfg = secure(with_federation(small_cfg, rounds=1))
    plan = prepare(cfg, tmp_path / "run")
    bus = EventBus([JsonlEventLog(plan.run_dir / "events.jsonl")])
    try:
        LocalEngine(transcript_dir=tmp_path / "transcripts").run(plan, bus)
    finally:
        bus.close()
    ups = {s: kept_update(plan.run_dir, s, 1) for s in plan.sites}
    secrets = {s: encode_fixed(flatten(u.parts)) for s, u in ups.items()}
    with np.errstate(over="ignore"):
        revealed = sum(np.int64(u.num_examples) * secrets[s] for s, u in ups.items())
    for party in ("server-party", "helper-1"):
        received = np.load(tmp_path / "transcripts" / f"{party}-round0001.npz")
        assert sum(":share." in k for k in received.files) == 3
        for key in received.files:
            arr = received[key].astype(np.int64).ravel()
            if ":share." in key:
                assert looks_uniform(arr), f"{party}'s {key} is not uniform"
            if arr.size != revealed.size:
                continue
            if np.array_equal(arr, revealed):
                assert party == "server-party" and key.endswith("comm.reduce")
                continue
            for s, secret in secrets.items():
                assert np.mean(arr == secret) < 0.01, f"{party}'s {key} matches {s}'s update"
