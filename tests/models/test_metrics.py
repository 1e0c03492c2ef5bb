import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import stats

from pharmafl.models.metrics import (
    concordance_index,
    concordance_index_bruteforce,
    mse,
    pearson,
    regression_metrics,
    spearman,
)

values = st.lists(st.integers(-4, 4), min_size=2, max_size=60)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_ci_matches_bruteforce_with_ties(data):
    y = data.draw(values)
    p = data.draw(st.lists(st.integers(-3, 3), min_size=len(y), max_size=len(y)))
    assert concordance_index(y, p) == pytest.approx(concordance_index_bruteforce(y, p), abs=1e-9)


def test_ci_matches_bruteforce_on_random_continuous_data():
    rng = np.random.default_rng(7)
    for n in (2, 3, 17, 500, 1500):
        y = rng.normal(size=n)
        p = y + rng.normal(size=n)
        assert concordance_index(y, p) == pytest.approx(concordance_index_bruteforce(y, p), abs=1e-9)


def test_ci_extremes():
    y = np.arange(10.0)
    assert concordance_index(y, y) == 1.0
    assert concordance_index(y, -y) == 0.0
    assert concordance_index(y, np.zeros(10)) == 0.5
    assert concordance_index(np.ones(5), np.arange(5.0)) == 0.5  # no comparable pair


def test_regression_metrics_agree_with_scipy():
    rng = np.random.default_rng(0)
    y, p = rng.normal(size=200), rng.normal(size=200)
    m = regression_metrics(y, p)
    assert m["mse"] == pytest.approx(np.mean((y - p) ** 2)) == pytest.approx(mse(y, p))
    assert m["pearson"] == pytest.approx(stats.pearsonr(y, p).statistic) == pytest.approx(pearson(y, p))
    assert m["spearman"] == pytest.approx(stats.spearmanr(y, p).statistic) == pytest.approx(spearman(y, p))


@pytest.mark.parametrize(
    "y, p, match", [([1.0, 2.0], [1.0], "2 values"), ([], [], "at least one"), ([1.0, np.nan], [1.0, 2.0], "NaN")]
)
def test_bad_inputs_raise(y, p, match):
    with pytest.raises(ValueError, match=match):
        concordance_index(y, p)
