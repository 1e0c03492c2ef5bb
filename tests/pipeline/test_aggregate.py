"""Aggregation math: pure functions, property-tested."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from pharmafl.pipeline.aggregate import l2_norm, site_weights, weighted_sum
from pharmafl.pipeline.diagnostics import DriftMonitor, update_diagnostics
from pharmafl.pipeline.strategies import STRATEGIES, build_strategy
from pharmafl.pipeline.strategies.fedopt import FedAdam, FedOptOptions, FedYogi
from pharmafl.pipeline.strategies.scaffold import Scaffold
from pharmafl.sites.update import Update

floats = st.floats(-10, 10, allow_nan=False, width=32)


# reference implementations on explicit flattened vectors (the code works from a Gram matrix)
def flatten(state):
    return np.concatenate([np.asarray(state[k], np.float64).ravel() for k in sorted(state)])


def cosine_matrix(vectors):
    norms = np.linalg.norm(vectors, axis=1)
    safe = np.where(norms > 0, norms, 1.0)
    unit = vectors / safe[:, None]
    return np.clip(unit @ unit.T, -1.0, 1.0) * np.outer(norms > 0, norms > 0)


def cosine_to_mean(vectors, weights):
    mean = (weights[:, None] * vectors).sum(axis=0)
    return cosine_matrix(np.vstack([vectors, mean[None, :]]))[:-1, -1]


@settings(max_examples=60, deadline=None)
@given(st.lists(arrays(np.float32, 5, elements=floats), min_size=1, max_size=6), st.data())
def test_weighted_sum_is_the_weighted_mean(vectors, data):
    raw = data.draw(st.lists(st.floats(0.1, 10), min_size=len(vectors), max_size=len(vectors)))
    w = site_weights("examples", [int(x * 10) + 1 for x in raw])
    out = weighted_sum([{"p": v} for v in vectors], w)["p"]
    np.testing.assert_allclose(out, np.sum([wi * v.astype(np.float64) for wi, v in zip(w, vectors)], axis=0), atol=1e-5)
    assert w.sum() == pytest.approx(1.0)


def test_weights_modes():
    np.testing.assert_allclose(site_weights("examples", [1, 3]), [0.25, 0.75])
    np.testing.assert_allclose(site_weights("uniform", [1, 3]), [0.5, 0.5])
    np.testing.assert_allclose(site_weights("quality", [1, 1], [1.0, 3.0]), [0.75, 0.25])
    with pytest.raises(ValueError, match="among choices"):
        site_weights("median", [1])


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 5), st.integers(0, 10_000))
def test_update_diagnostics_match_explicit_vectors(n_sites, seed):
    rng = np.random.default_rng(seed)
    deltas = [
        {"a": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=70_000).astype(np.float32)}
        for _ in range(n_sites)
    ]  # "b" spans two Gram chunks
    w = rng.dirichlet(np.ones(n_sites))
    d = update_diagnostics([f"s{i}" for i in range(n_sites)], deltas, w)
    vectors = np.stack([flatten(x) for x in deltas])
    np.testing.assert_allclose(d["cosine_matrix"], cosine_matrix(vectors), atol=1e-9)
    np.testing.assert_allclose(list(d["cosine_to_mean"].values()), cosine_to_mean(vectors, w), atol=1e-9)
    np.testing.assert_allclose(list(d["update_norms"].values()), np.linalg.norm(vectors, axis=1), rtol=1e-9)


@given(arrays(np.float64, (4, 6), elements=st.floats(-5, 5)))
def test_cosine_matrix_properties(vectors):
    cos = cosine_matrix(vectors)
    assert np.allclose(cos, cos.T) and np.all(np.abs(cos) <= 1 + 1e-12)
    nonzero = np.linalg.norm(vectors, axis=1) > 1e-9
    assert np.allclose(np.diag(cos)[nonzero], 1.0)


def test_cosine_to_mean_flags_the_opposite_site():
    v = np.array([[1.0, 0.0], [1.0, 0.1], [-1.0, 0.0]])
    c = cosine_to_mean(v, np.array([0.4, 0.4, 0.2]))
    assert c[0] > 0.9 and c[2] < -0.9


def test_drift_alarm_after_k_rounds_with_remedy():
    mon = DriftMonitor(threshold=0.0, rounds=2)
    assert mon.observe({"site-01": 0.9, "site-02": -0.3}) == []
    alarms = mon.observe({"site-01": 0.9, "site-02": -0.2})
    assert [a["site"] for a in alarms] == ["site-02"]
    assert "FedProx" in alarms[0]["message"] and "SCAFFOLD" in alarms[0]["message"]
    assert mon.observe({"site-01": 0.9, "site-02": -0.2}) == []  # raised once per streak
    mon.observe({"site-02": 0.5})
    assert mon.streak["site-02"] == 0


def updates(deltas, controls=None):
    out = []
    for i, d in enumerate(deltas):
        parts = {"delta": {"p": np.asarray(d, np.float32)}}
        if controls is not None:
            parts["control"] = {"p": np.asarray(controls[i], np.float32)}
        out.append(Update(f"site-{i + 1:02d}", 1, 10, parts))
    return out


def test_fedavg_and_fedprox_apply_the_weighted_mean():
    state = {"p": np.array([1.0, 1.0], np.float32)}
    for name in ("fedavg", "fedprox"):
        s = build_strategy(name, {}, n_sites=2)
        new = s.aggregate(state, updates([[1, 0], [0, 2]]), np.array([0.5, 0.5]))
        np.testing.assert_allclose(new["p"], [1.5, 2.0])
    assert build_strategy("fedprox", {"mu": 0.1}, n_sites=2).instructions(1, state).proximal_mu == 0.1


def test_scaffold_updates_server_control():
    state = {"p": np.zeros(2, np.float32)}
    s = Scaffold(n_sites=4)
    assert np.all(s.instructions(1, state).scaffold_control["p"] == 0)
    s.aggregate(state, updates([[1, 1], [1, 1]], controls=[[2, 0], [0, 2]]), np.array([0.5, 0.5]))
    np.testing.assert_allclose(s.control["p"], [0.5, 0.5])  # (|S|/N) * mean dc = 2/4 * [1, 1]
    with pytest.raises(ValueError, match="without control"):
        s.aggregate(state, updates([[1, 1]]), np.array([1.0]))


def test_fedadam_first_step_and_yogi_differ_later():
    state = {"p": np.zeros(1, np.float32)}
    opts = FedOptOptions(server_lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    adam, yogi = FedAdam(opts, n_sites=1), FedYogi(opts, n_sites=1)
    d = updates([[0.5]])
    a1, y1 = adam.aggregate(state, d, np.array([1.0])), yogi.aggregate(state, d, np.array([1.0]))
    m = 0.1 * 0.5
    v_adam = 0.99 * 1e-6 + 0.01 * 0.25
    assert a1["p"][0] == pytest.approx(0.1 * m / (np.sqrt(v_adam) + 1e-3), rel=1e-5)
    v_yogi = 1e-6 + 0.01 * 0.25  # sign(v - d^2) = -1
    assert y1["p"][0] == pytest.approx(0.1 * m / (np.sqrt(v_yogi) + 1e-3), rel=1e-5)
    small = updates([[0.01]])
    assert adam.aggregate(a1, small, np.array([1.0]))["p"][0] != yogi.aggregate(y1, small, np.array([1.0]))["p"][0]


def test_registry_names_and_bad_options():
    assert set(STRATEGIES) == {"fedavg", "fedprox", "scaffold", "fedadam", "fedyogi"}
    from pharmafl.errors import ConfigError

    with pytest.raises(ConfigError, match="strategy_options.beta1 must be in"):
        build_strategy("fedadam", {"beta1": 1.5}, n_sites=2)
    with pytest.raises(ConfigError, match="unknown key"):
        build_strategy("fedavg", {"mu": 0.1}, n_sites=2)


def test_l2_norm():
    assert l2_norm({"a": np.array([3.0]), "b": np.array([4.0])}) == 5.0
