"""Aggregation math as pure functions: arrays and weights in, arrays out.

Sums always run over sites in the order given, which callers make the sorted order of site
ids: floating-point addition is not associative, so arrival order would make runs
irreproducible.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

State = dict[str, np.ndarray]
WEIGHTINGS = ("examples", "uniform", "quality")


def site_weights(mode: str, num_examples: Sequence[int], val_losses: Sequence[float] | None = None) -> np.ndarray:
    """Normalised aggregation weights.

    ``examples``: :math:`w_i = n_i / \\sum n`. ``uniform``: :math:`1/K`. ``quality``:
    :math:`w_i \\propto n_i / \\ell_i` with :math:`\\ell_i` the site's validation loss of the
    global model it received: a site whose held-out data the model fits well (consistent,
    low-noise labels) counts more.
    """
    n = np.asarray(num_examples, dtype=np.float64)
    if len(n) == 0:
        raise ValueError("no sites to weight")
    if mode == "examples":
        w = n
    elif mode == "uniform":
        w = np.ones_like(n)
    elif mode == "quality":
        if val_losses is None:
            raise ValueError("quality weighting needs each site's validation loss")
        losses = np.asarray(val_losses, dtype=np.float64)
        w = n / np.maximum(losses, 1e-8)
    else:
        raise ValueError(f"Could not resolve weighting {mode!r} among choices {list(WEIGHTINGS)}")
    if not np.all(np.isfinite(w)) or w.sum() <= 0:
        raise ValueError(f"weights {w.tolist()} are not positive and finite")
    return w / w.sum()


def weighted_sum(states: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]) -> State:
    """:math:`\\sum_i w_i x_i` per key, accumulated in float64 in the order given, cast to float32."""
    if len(states) != len(weights) or not states:
        raise ValueError(f"{len(states)} states and {len(weights)} weights")
    out = {}
    for key in states[0]:
        acc = np.zeros(np.shape(states[0][key]), dtype=np.float64)
        for state, w in zip(states, weights):
            acc += float(w) * np.asarray(state[key], dtype=np.float64)
        out[key] = acc.astype(np.float32)
    return out


def add(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], scale: float = 1.0) -> State:
    """``a + scale * b`` per key (float32)."""
    return {k: (np.asarray(a[k], np.float64) + scale * np.asarray(b[k], np.float64)).astype(np.float32) for k in a}


def l2_norm(state: Mapping[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(float(np.sum(np.asarray(v, np.float64) ** 2)) for v in state.values())))
