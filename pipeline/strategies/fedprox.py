"""FedProx (Li et al. 2020, https://arxiv.org/abs/1812.06127): FedAvg's aggregation, and a
proximal term :math:`\\tfrac{\\mu}{2}\\lVert w - w^t\\rVert^2` in every site's local loss that
keeps heterogeneous sites from drifting far from the global model."""

from __future__ import annotations

from dataclasses import dataclass

from pharmafl.errors import ConfigError
from pharmafl.pipeline.strategies.base import Strategy
from pharmafl.sites.site import Instructions


@dataclass(frozen=True)
class FedProxOptions:
    """``mu``: weight of the proximal term (default 0.01; 0 is FedAvg)."""

    mu: float = 0.01

    def __post_init__(self):
        if self.mu < 0:
            raise ConfigError(f"federation.strategy_options.mu must be >= 0, got {self.mu}")


class FedProx(Strategy):
    name = "fedprox"
    Options = FedProxOptions

    def instructions(self, round, state):
        return Instructions(proximal_mu=self.options.mu)
