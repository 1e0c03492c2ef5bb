"""The one extension point for federated algorithms (after Flower's ``Strategy``).

A strategy is the server side of an algorithm: what each site is asked to do this round
(:meth:`Strategy.instructions`) and how the sites' updates become the next global weights
(:meth:`Strategy.aggregate`). Its settings are a frozen ``Options`` dataclass, filled from
``federation.strategy_options`` in the run config and declared, with the strategy's name, in
:mod:`pharmafl.pipeline.strategy_options` (which the config checks against without loading
the algorithms). A new algorithm is one file overriding one or two methods, registered in
:mod:`pharmafl.pipeline.strategies`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from pharmafl.pipeline.aggregate import State, add, weighted_sum
from pharmafl.pipeline.strategy_options import NoOptions
from pharmafl.sites.site import Instructions
from pharmafl.sites.update import Update


class Strategy:
    """FedAvg (McMahan et al. 2017, https://arxiv.org/abs/1602.05629) and the base class:

    .. math::
        w^{t+1} = w^t + \\sum_{i \\in S_t} p_i \\Delta_i, \\qquad \\Delta_i = w_i^{t} - w^t

    with :math:`p_i` the normalised site weights (by examples, uniform or quality).
    """

    name: ClassVar[str] = "fedavg"
    Options: ClassVar[type] = NoOptions
    required_parts: ClassVar[tuple[str, ...]] = ("delta",)  # update parts every site must send

    def __init__(self, options=None, *, n_sites: int):
        self.options = options if options is not None else self.Options()
        self.n_sites = n_sites

    def instructions(self, round: int, state: State) -> Instructions:
        """What every selected site is asked to do in ``round``."""
        return Instructions()

    def aggregate(self, state: State, updates: Sequence[Update], weights: np.ndarray) -> State:
        """Next global weights from ``updates`` (sorted by site id) and their ``weights``."""
        return add(state, self.mean_delta(updates, weights))

    def aggregate_mean(self, state: State, mean: Update, count: int) -> State:
        """Next global weights from only the weighted mean of ``count`` updates (all that secure
        aggregation reveals). Equal to :meth:`aggregate` for strategies linear in the updates."""
        return self.aggregate(state, [mean], np.ones(1))

    def state(self) -> tuple[State, dict]:
        """What the strategy carries from round to round, as (arrays, JSON data): saved with every
        round's checkpoint, so that a resumed run goes on exactly as an uninterrupted one."""
        return {}, {}

    def load_state(self, arrays: State, data: dict) -> None:
        """Take up what :meth:`state` returned (a resumed run)."""

    def privacy_spent(self, round: int) -> dict | None:
        """The server-side privacy accounting of ``round``, if the strategy adds noise."""
        return None

    @staticmethod
    def mean_delta(updates: Sequence[Update], weights: np.ndarray) -> State:
        return weighted_sum([u.delta for u in updates], weights)
