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

from dataclasses import dataclass

import numpy as np

from pharmafl.errors import ConfigError
from pharmafl.pipeline.strategies.base import Strategy


@dataclass(frozen=True)
class FedOptOptions:
    """Server step ``server_lr`` (η, default 0.01), ``beta1`` (0.9), ``beta2`` (0.99), ``tau`` (1e-3).

    The adaptive step moves each weight by about η per round, so η should match the size of
    a round's local progress (local Adam at lr 5e-4 over tens of steps: ~1e-2).
    """

    server_lr: float = 1e-2
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self):
        for name in ("server_lr", "tau"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"federation.strategy_options.{name} must be > 0, got {getattr(self, name)}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"federation.strategy_options.{name} must be in [0, 1), got {getattr(self, name)}")


class FedAdam(Strategy):
    name = "fedadam"
    Options = FedOptOptions

    def __init__(self, options=None, *, n_sites):
        super().__init__(options, n_sites=n_sites)
        self.m = self.v = None

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
