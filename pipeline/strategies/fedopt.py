"""FedOpt: adaptive server optimizers (Reddi et al. 2021, https://arxiv.org/abs/2003.00295).

The weighted mean update :math:`\\Delta^t` is treated as a pseudo-gradient:

.. math::
    m^t = \\beta_1 m^{t-1} + (1-\\beta_1)\\Delta^t, \\qquad
    w^{t+1} = w^t + \\eta \\, \\frac{m^t}{\\sqrt{v^t} + \\tau}

FedAdam: :math:`v^t = \\beta_2 v^{t-1} + (1-\\beta_2)(\\Delta^t)^2`.
FedYogi: :math:`v^t = v^{t-1} - (1-\\beta_2)(\\Delta^t)^2 \\operatorname{sign}(v^{t-1} - (\\Delta^t)^2)`.
Both start from :math:`m = 0`, :math:`v = \\tau^2`.
"""

from __future__ import annotations

import numpy as np

from pharmafl.pipeline.strategies.base import Strategy
from pharmafl.pipeline.strategy_options import FedOptOptions

__all__ = ["FedAdam", "FedOptOptions", "FedYogi"]


class FedAdam(Strategy):
    name = "fedadam"
    Options = FedOptOptions

    def __init__(self, options=None, *, n_sites):
        super().__init__(options, n_sites=n_sites)
        self.m = self.v = None

    def state(self):
        if self.m is None:
            return {}, {}
        return {**{f"m/{k}": v for k, v in self.m.items()}, **{f"v/{k}": v for k, v in self.v.items()}}, {}

    def load_state(self, arrays, data):
        if arrays:
            self.m = {k[2:]: np.asarray(v, np.float64) for k, v in arrays.items() if k.startswith("m/")}
            self.v = {k[2:]: np.asarray(v, np.float64) for k, v in arrays.items() if k.startswith("v/")}

    def second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        b2 = self.options.beta2
        return b2 * v + (1 - b2) * d2

    def aggregate(self, state, updates, weights):
        o = self.options
        delta = self.mean_delta(updates, weights)
        if self.m is None:
            self.m = {k: np.zeros_like(v, dtype=np.float64) for k, v in delta.items()}
            self.v = {k: np.full(v.shape, o.tau**2, dtype=np.float64) for k, v in delta.items()}
        out = {}
        for k, d in delta.items():
            d = d.astype(np.float64)
            self.m[k] = o.beta1 * self.m[k] + (1 - o.beta1) * d
            self.v[k] = self.second_moment(self.v[k], d * d)
            out[k] = (state[k] + o.server_lr * self.m[k] / (np.sqrt(self.v[k]) + o.tau)).astype(np.float32)
        return out


class FedYogi(FedAdam):
    name = "fedyogi"

    def second_moment(self, v, d2):
        return v - (1 - self.options.beta2) * d2 * np.sign(v - d2)
