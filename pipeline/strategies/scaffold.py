"""SCAFFOLD (Karimireddy et al. 2020, https://arxiv.org/abs/1910.06378).

Sites correct every local gradient by :math:`c - c_i` and return their control delta
:math:`\\Delta c_i`; the server updates

.. math::
    w^{t+1} = w^t + \\eta_g \\sum_{i \\in S} p_i \\Delta y_i, \\qquad
    c^{t+1} = c^t + \\frac{|S|}{N} \\cdot \\frac{1}{|S|} \\sum_{i \\in S} \\Delta c_i

with :math:`N` the number of sites in the federation.
"""

from __future__ import annotations

import numpy as np

from pharmafl.pipeline.aggregate import add, weighted_sum
from pharmafl.pipeline.strategies.base import Strategy
from pharmafl.pipeline.strategy_options import ScaffoldOptions
from pharmafl.sites.site import Instructions


class Scaffold(Strategy):
    name = "scaffold"
    Options = ScaffoldOptions
    required_parts = ("delta", "control")

    def __init__(self, options=None, *, n_sites):
        super().__init__(options, n_sites=n_sites)
        self.control = None
        self.accepted: tuple[str, ...] = ()

    def state(self):
        arrays = {f"control/{k}": v for k, v in (self.control or {}).items()}
        return arrays, {"accepted": list(self.accepted), "started": self.control is not None}

    def load_state(self, arrays, data):
        if data.get("started"):
            self.control = {k[len("control/") :]: np.asarray(v, np.float32) for k, v in arrays.items()}
        self.accepted = tuple(data.get("accepted", ()))

    def instructions(self, round, state):
        if self.control is None:
            self.control = {k: np.zeros_like(v, dtype=np.float32) for k, v in state.items()}
        # the sites whose control deltas are in c: they adopt their new c_i, the others keep theirs
        return Instructions(scaffold_control=self.control, accepted=self.accepted)

    def aggregate(self, state, updates, weights):
        missing = [u.site for u in updates if "control" not in u.parts]
        if missing:  # the coordinator rejects such updates first (required_parts)
            raise ValueError(f"SCAFFOLD updates without control deltas from {missing}")
        uniform = np.full(len(updates), 1.0 / len(updates))
        mean_dc = weighted_sum([u.parts["control"] for u in updates], uniform)
        self.control = add(self.control, mean_dc, scale=len(updates) / self.n_sites)
        self.accepted = tuple(u.site for u in updates)
        return add(state, self.mean_delta(updates, weights), scale=self.options.server_lr)
