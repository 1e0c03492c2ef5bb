"""DP-SGD at a site: per-sample gradients, clipping and grouping, secure noise, accounting."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from opacus import GradSampleModule
from scipy import stats

from pharmafl.errors import ConfigError
from pharmafl.models.dti import DTIModel, ModelConfig
from pharmafl.models.pairs import PairTensors
from pharmafl.sites.csprng import SecureRandom
from pharmafl.sites.dp_site import check_dp_model
from pharmafl.sites.dp_training import ClipStats, _dp_step, dp_optimizer, units_of, wrap
from pharmafl.sites.privacy import PrivacyConfig, compose, epsilon_spent, plan_privacy, round_fits

SMILES = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "CN1CCC[C@H]1c1cccnc1"]
SEQS = ["MKTAYIAKQR", "MSTNPKPQRKTKRNTNRRPQDVKFPGG", "MEEPQSDPSV"]
CFG = ModelConfig(max_len=32, embed_dim=16, kernel_size=4, latent_dim=16, dropout=0.0)


@pytest.fixture
def pairs() -> PairTensors:
    rows = [(f"d{i}", f"t{j}", 5.0 + 0.3 * i - 0.2 * j) for i in range(4) for j in range(3) if (i + j) % 4]
    return PairTensors.build(
        [(f"d{i}", s) for i, s in enumerate(SMILES)],
        [(f"t{j}", s) for j, s in enumerate(SEQS)],
        rows,
        max_len=CFG.max_len,
    )


def test_per_sample_gradients_equal_one_example_at_a_time(pairs):
    model = DTIModel.from_config(CFG)
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    batch = pairs.collate(np.arange(len(pairs)), unique=False, dense=True)
    ((gsm(*batch.args()) - batch.labels) ** 2).sum().backward()
    per_sample = {n: p.grad_sample.clone() for n, p in model.named_parameters()}
    gsm._close()
    for i in range(len(pairs)):
        single = DTIModel.from_config(CFG)
        one = pairs.collate([i], unique=False, dense=True)
        ((single(*one.args()) - one.labels) ** 2).sum().backward()
        for n, p in single.named_parameters():
            torch.testing.assert_close(per_sample[n][i], p.grad, rtol=1e-4, atol=1e-5, msg=f"{n}, pair {i}")


def _plain_unit_mean_gradient(pairs, index, unit):
    """Reference: sum over units of the mean-loss gradient of each unit, by plain autograd."""
    model = DTIModel.from_config(CFG)
    owner = units_of(pairs, unit)[index]
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for u in np.unique(owner):
        model.zero_grad()
        sel = index[owner == u]
        b = pairs.collate(sel, unique=False, dense=True)
        ((model(*b.args()) - b.labels) ** 2).mean().backward()
        for n, p in model.named_parameters():
            total[n] += p.grad
    return total


@pytest.mark.parametrize("unit", ["pair", "compound"])
@pytest.mark.parametrize("chunk", [2, 64])
def test_dp_step_without_clipping_or_noise_is_the_sum_of_unit_gradients(pairs, unit, chunk):
    model = DTIModel.from_config(CFG)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    gsm = wrap(model, unit, 1e9)
    stats_ = ClipStats(clip_norm=1e9)
    opt = dp_optimizer(
        torch.optim.SGD(model.parameters(), lr=1.0),
        unit,
        noise_multiplier=0.0,
        max_grad_norm=1e9,
        expected_batch_size=1,
        random=SecureRandom(seed=0),
        stats=stats_,
    )
    index = np.arange(len(pairs))
    _dp_step(gsm, opt, pairs, index, units_of(pairs, unit), unit, chunk)
    gsm._close()
    expected = _plain_unit_mean_gradient(pairs, index, unit)
    for n, p in model.named_parameters():
        torch.testing.assert_close(start[n] - p.detach(), expected[n], rtol=1e-4, atol=1e-5, msg=n)
    assert stats_.total == (4 if unit == "compound" else len(pairs)) and stats_.clipped == 0


@pytest.mark.parametrize("unit", ["pair", "compound"])
def test_clipping_bounds_each_unit_and_is_counted(pairs, unit):
    model = DTIModel.from_config(CFG)
    gsm = wrap(model, unit, 1e-3)
    stats_ = ClipStats(clip_norm=1e-3)
    opt = dp_optimizer(
        torch.optim.SGD(model.parameters(), lr=1.0),
        unit,
        noise_multiplier=0.0,
        max_grad_norm=1e-3,
        expected_batch_size=1,
        random=SecureRandom(seed=0),
        stats=stats_,
    )
    start = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    _dp_step(gsm, opt, pairs, np.arange(len(pairs)), units_of(pairs, unit), unit, 3)
    gsm._close()
    moved = torch.cat([p.detach().flatten() for p in model.parameters()]) - start
    n_units = 4 if unit == "compound" else len(pairs)
    assert stats_.clipped == stats_.total == n_units
    assert stats_.max_norm > stats_.as_dict()["mean_norm"] > 1e-3
    assert float(moved.norm()) <= n_units * 1e-3 * (1 + 1e-3)  # each unit contributes at most C


@pytest.mark.parametrize("unit", ["pair", "compound"])
def test_empty_poisson_batch_takes_a_noise_only_step(pairs, unit):
    model = DTIModel.from_config(CFG)
    gsm = wrap(model, unit, 1.0)
    opt = dp_optimizer(
        torch.optim.SGD(model.parameters(), lr=1.0),
        unit,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        expected_batch_size=4,
        random=SecureRandom(seed=0),
        stats=ClipStats(1.0),
    )
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    _dp_step(gsm, opt, pairs, np.zeros(0, np.int64), units_of(pairs, unit), unit, 8)
    gsm._close()
    moved = torch.cat([p.detach().flatten() for p in model.parameters()]) - before
    assert 0.2 < float(moved.std()) < 0.3  # N(0, (sigma*C / expected batch)^2) = N(0, 0.25^2)


def test_secure_random_is_uniform_gaussian_and_not_torchs_rng():
    r = SecureRandom()
    u = r.uniform(200_000)
    assert 0.0 < u.min() and u.max() < 1.0
    assert stats.kstest(u, "uniform").pvalue > 1e-4
    z = r.normal(200_001)
    assert z.shape == (200_001,) and stats.kstest(z, "norm").pvalue > 1e-4
    noise = r.dp_noise(2.0, torch.zeros(100_000))
    assert noise.dtype == torch.float32 and abs(float(noise.std()) - 2.0) < 0.05
    torch.manual_seed(0)
    a = SecureRandom().dp_noise(1.0, torch.zeros(8))
    torch.manual_seed(0)
    b = SecureRandom().dp_noise(1.0, torch.zeros(8))
    assert not torch.equal(a, b)  # keyed from os.urandom: torch's seed does not replay it
    assert torch.equal(
        SecureRandom(seed=3).dp_noise(1.0, torch.zeros(8)), SecureRandom(seed=3).dp_noise(1.0, torch.zeros(8))
    )
    assert SecureRandom(seed=3).seeded and "NOT secure" in SecureRandom(seed=3).source


def test_secure_random_rekeys_without_repeating():
    r = SecureRandom(seed=1)
    r._left = 16  # force a re-key in the middle of the next draw
    block = r.bytes(64)
    assert len(block) == 64 and block[:16] != block[16:32] and r._rekeys == 2


@settings(max_examples=30, deadline=None)
@given(
    budget=st.floats(0.5, 20.0),
    noise=st.floats(0.5, 5.0),
    q=st.floats(0.001, 1.0),
    steps=st.integers(1, 200),
    rounds=st.integers(1, 40),
    accountant=st.sampled_from(["rdp", "prv"]),
)
def test_budget_gate_never_lets_epsilon_exceed_the_budget(budget, noise, q, steps, rounds, accountant):
    delta, history, trained = 1e-5, [], 0
    for _ in range(rounds):
        fits, after = round_fits(history, (noise, q, steps), delta, budget, accountant)
        if fits:
            history, trained = compose(history, (noise, q, steps)), trained + 1
        else:
            break
    spent = epsilon_spent(history, delta, accountant)
    assert spent <= budget
    if trained < rounds:  # declined: the next round really would have exceeded it
        assert epsilon_spent(compose(history, (noise, q, steps)), delta, accountant) > budget


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_derived_noise_spends_at_most_the_target_over_the_planned_rounds(accountant):
    cfg = PrivacyConfig(mode="local", epsilon=3.0, accountant=accountant, batch_size=64)
    plan = plan_privacy(cfg, units=2000, rounds=10, local_epochs=2, where="t")
    assert plan.sample_rate == pytest.approx(0.032) and plan.steps_per_round == 62
    assert plan.delta == pytest.approx(0.1 / 2000)
    spent = plan.epsilon_after(10)
    assert 2.9 <= spent <= 3.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"epsilon": 0.0}, "epsilon must be a finite number > 0"),
        ({"epsilon": -1.0}, "epsilon must be a finite number > 0"),
        ({"epsilon": 1.0, "delta": 0.0}, "delta must be in the open interval"),
        ({"epsilon": 1.0, "delta": 1.0}, "delta must be in the open interval"),
        ({"epsilon": 1.0, "clip_norm": 0.0}, "clip_norm must be a finite number > 0"),
        ({"noise_multiplier": -0.5}, "noise_multiplier must be a finite number > 0"),
        ({}, "give privacy.epsilon"),
        ({"epsilon": 1.0, "sites": {"site-01": {"epsilon": -2}}}, "privacy.sites.site-01.epsilon"),
        ({"epsilon": 1.0, "sites": {"site-01": {"sigma": 2}}}, "Could not resolve privacy.sites.site-01 keys"),
    ],
)
def test_bad_privacy_settings_are_one_clear_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        PrivacyConfig(mode="local", **kwargs)


def test_budget_too_small_for_one_round_fails_before_training():
    cfg = PrivacyConfig(mode="local", epsilon=0.5, noise_multiplier=0.3)
    with pytest.raises(ConfigError, match="one round costs ε = .* more than the budget privacy.epsilon = 0.5"):
        plan_privacy(cfg, units=1000, rounds=5, local_epochs=1, where="site site-01")


def test_models_opacus_cannot_handle_are_refused():
    bn = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    with pytest.raises(ConfigError, match="cannot be trained with DP-SGD.*BatchNorm"):
        check_dp_model(bn, "site site-01")
    gat = DTIModel(**{**asdict(CFG), "drug_encoder": "gat"})
    with pytest.raises(ConfigError, match="no per-sample gradients for .*att_src.* of drug encoder .gat."):
        check_dp_model(gat, "site site-01")
    check_dp_model(DTIModel.from_config(CFG), "site site-01")  # GIN: fine


def test_the_budget_is_the_sites_across_runs(tmp_path, monkeypatch):
    """Two runs on one site home: the second starts from the first's ε, declines once the
    site's own budget (site.json) is spent, and a restart within a run keeps its ε."""
    from pathlib import Path

    from pharmafl.sites.dp_site import DPSite
    from pharmafl.sites.home import SiteHome
    from pharmafl.sites.privacy import PrivacyPlan
    from pharmafl.sites.site import Declined, Instructions, Site, state_of
    from pharmafl.sites.store import store_units
    from pharmafl.sites.tables import load_dataset
    from pharmafl.sites.training import TrainConfig

    # q = 1, one step a round whatever the site holds: ε after k rounds is known before init
    cfg = PrivacyConfig(
        mode="local", noise_multiplier=4.0, delta=1e-3, accountant="rdp", batch_size=64, noise_source="seeded"
    )
    eps = [epsilon_spent([(4.0, 1.0, k)], 1e-3, "rdp") for k in range(4)]
    budget = (eps[2] + eps[3]) / 2
    ds = load_dataset(Path(__file__).parent / "assets")
    SiteHome.init(tmp_path / "home", "site-01", ds, simulated=True, epsilon_budget=budget, scrypt_n=2**14)
    state = state_of(DTIModel.from_config(CFG))

    def dp_site(run_id: str) -> DPSite:
        home = SiteHome.open(tmp_path / "home")
        plan = plan_privacy(cfg, units=store_units(home.store, "pair"), rounds=5, local_epochs=1, where="t")
        site = Site(home.store, CFG, TrainConfig(batch_size=8))
        return DPSite(
            site, cfg, PrivacyPlan(**plan.as_dict()), SecureRandom(seed=1), ledger=home.privacy, run_id=run_id
        )

    first = dp_site("run-a")
    assert first.budget == budget and first.plan.budget is None and first.epsilon_prior == 0
    one = first.fit(1, state, Instructions()).privacy
    assert one["epsilon_total"] == pytest.approx(eps[1]) and one["epsilon_prior"] == 0

    second = dp_site("run-b")
    assert second.epsilon_prior == pytest.approx(eps[1]) and second.epsilon == pytest.approx(eps[1])
    two = second.fit(1, state, Instructions()).privacy
    assert two["epsilon_total"] == pytest.approx(eps[2]) and two["epsilon_round"] == pytest.approx(eps[2] - eps[1])
    assert two["epsilon_prior"] == pytest.approx(eps[1]) and two["budget"] == budget
    declined = second.fit(2, state, Instructions())
    assert isinstance(declined, Declined) and declined.reason == "privacy budget exhausted"
    assert declined.details["epsilon_if_trained"] == pytest.approx(eps[3]) and eps[3] > budget
    assert declined.details["epsilon_total"] == pytest.approx(eps[2])

    assert dp_site("run-b").epsilon == pytest.approx(eps[2])  # the site restarted mid-run
    assert isinstance(dp_site("run-c").fit(1, state, Instructions()), Declined)
    runs = SiteHome.open(tmp_path / "home").privacy.runs(first.manifest)
    assert sorted(runs) == ["run-a", "run-b"] and runs["run-b"]["history"] == [[4.0, 1.0, 1]]


def test_without_a_ledger_a_dp_site_accounts_its_own_rounds(tmp_path):
    from pathlib import Path

    from pharmafl.sites.dp_site import DPSite
    from pharmafl.sites.home import SiteHome
    from pharmafl.sites.site import Site
    from pharmafl.sites.store import store_units
    from pharmafl.sites.tables import load_dataset
    from pharmafl.sites.training import TrainConfig

    home = SiteHome.init(
        tmp_path / "home", "site-01", load_dataset(Path(__file__).parent / "assets"), passphrase="pw", scrypt_n=2**14
    )
    cfg = PrivacyConfig(mode="local", epsilon=5.0, accountant="rdp", batch_size=64)
    plan = plan_privacy(cfg, units=store_units(home.store, "pair"), rounds=2, local_epochs=1, where="t")
    site = DPSite(Site(home.store, CFG, TrainConfig(batch_size=8)), cfg, plan, SecureRandom(seed=0))
    assert site.budget == 5.0 and site.epsilon == 0 and site.epsilon_prior == 0
    with pytest.raises(ConfigError, match="needs the run id"):
        DPSite(Site(home.store, CFG, TrainConfig(batch_size=8)), cfg, plan, SecureRandom(seed=0), ledger=home.privacy)
