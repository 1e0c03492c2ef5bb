"""FedProx (Li et al. 2020, https://arxiv.org/abs/1812.06127): FedAvg's aggregation, and a
proximal term :math:`\\tfrac{\\mu}{2}\\lVert w - w^t\\rVert^2` in every site's local loss that
keeps heterogeneous sites from drifting far from the global model."""

from __future__ import annotations

from pharmafl.pipeline.strategies.base import Strategy
from pharmafl.pipeline.strategy_options import FedProxOptions
from pharmafl.sites.site import Instructions


class FedProx(Strategy):
    name = "fedprox"
    Options = FedProxOptions

    def instructions(self, round, state):
        return Instructions(proximal_mu=self.options.mu)
