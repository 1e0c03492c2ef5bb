"""Regression and ranking metrics for affinity prediction. Pure functions on arrays.

The concordance index (Gönen & Heller 2005, https://doi.org/10.1093/biomet/92.4.965), as
used by DeepDTA and GraphDTA:

.. math::
    \\mathrm{CI} = \\frac{1}{Z} \\sum_{y_i > y_j} h(\\hat{y}_i - \\hat{y}_j), \\qquad
    h(u) = \\begin{cases} 1 & u > 0 \\\\ 0.5 & u = 0 \\\\ 0 & u < 0 \\end{cases}

with :math:`Z` the number of pairs whose true labels differ. It is computed in
:math:`O(n \\log n)` from Kendall's :math:`\\tau_b` (SciPy's merge-sort implementation,
Knight 1966) and the tie counts: with :math:`n_0 = n(n-1)/2` pairs, :math:`n_1` tied in
``y``, :math:`n_2` tied in ``ŷ`` and :math:`n_3` tied in both,
:math:`P - Q = \\tau_b \\sqrt{(n_0 - n_1)(n_0 - n_2)}`, :math:`Z = n_0 - n_1`,
:math:`T = n_2 - n_3` pairs tied in ``ŷ`` only, and, since :math:`P + Q + T = Z`,
:math:`\\mathrm{CI} = (P + T/2) / Z = \\tfrac12 + (P - Q) / (2Z)` (so :math:`n_3` is not needed).
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def _as_arrays(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_pred, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"y_true has {y.size} values, y_pred {p.size}")
    if y.size == 0:
        raise ValueError("metrics need at least one value")
    if not (np.isfinite(y).all() and np.isfinite(p).all()):
        raise ValueError("metrics got NaN or infinite values")
    return y, p


def mse(y_true, y_pred) -> float:
    y, p = _as_arrays(y_true, y_pred)
    return float(np.mean((y - p) ** 2))


def _tied_pairs(values: np.ndarray) -> int:
    """Number of unordered pairs with equal values."""
    _, counts = np.unique(values, return_counts=True)
    return int((counts * (counts - 1) // 2).sum())


def concordance_index(y_true, y_pred) -> float:
    """Concordance index in O(n log n); 0.5 when no pair of labels differs."""
    y, p = _as_arrays(y_true, y_pred)
    n0 = y.size * (y.size - 1) // 2
    n1, n2 = _tied_pairs(y), _tied_pairs(p)
    z = n0 - n1
    if z == 0:
        return 0.5
    if n2 == n0:  # every prediction equal: tau_b undefined, every pair counts 1/2
        return 0.5
    tau = stats.kendalltau(y, p, variant="b").statistic
    # P - Q is an integer: rounding removes the float error of tau_b * sqrt(...)
    p_minus_q = round(tau * np.sqrt(float(n0 - n1) * float(n0 - n2)))
    return float(0.5 + p_minus_q / (2.0 * z))


def concordance_index_bruteforce(y_true, y_pred) -> float:
    """O(n^2) reference implementation (tests only)."""
    y, p = _as_arrays(y_true, y_pred)
    dy = y[:, None] - y[None, :]
    dp = p[:, None] - p[None, :]
    upper = dy > 0
    z = upper.sum()
    if z == 0:
        return 0.5
    return float(((dp > 0) & upper).sum() + 0.5 * ((dp == 0) & upper).sum()) / float(z)


def pearson(y_true, y_pred) -> float:
    y, p = _as_arrays(y_true, y_pred)
    if np.ptp(y) == 0 or np.ptp(p) == 0:
        return 0.0
    return float(stats.pearsonr(y, p).statistic)


def spearman(y_true, y_pred) -> float:
    y, p = _as_arrays(y_true, y_pred)
    if np.ptp(y) == 0 or np.ptp(p) == 0:
        return 0.0
    return float(stats.spearmanr(y, p).statistic)


def regression_metrics(y_true, y_pred) -> dict[str, float]:
    """MSE, CI, Pearson and Spearman in one dict."""
    return {
        "mse": mse(y_true, y_pred),
        "ci": concordance_index(y_true, y_pred),
        "pearson": pearson(y_true, y_pred),
        "spearman": spearman(y_true, y_pred),
    }
