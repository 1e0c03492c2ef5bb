"""Client-level DP (DP-FedAvg, McMahan et al. 2018, https://arxiv.org/abs/1710.06963) as a
wrapper around any strategy but SCAFFOLD.

Each site clips its update to :math:`S` (:class:`~pharmafl.sites.dp_site.UpdateClipSite`);
the server perturbs the plain sum and averages over the :math:`n` participants:

.. math::
    \\tilde\\Delta = \\frac{1}{n}\\Big(\\sum_{i} \\Delta_i^{\\mathrm{clip}} + \\mathcal{N}(0, \\sigma^2 S^2 I)\\Big)

and hands :math:`\\tilde\\Delta` to the wrapped strategy as one update (FedAvg adds it;
FedAdam/FedYogi use it as their pseudo-gradient). Adding or removing one site changes the
sum by at most :math:`S`, so each round is a Gaussian mechanism of noise multiplier
:math:`\\sigma` on the site level; Opacus's accountant composes the rounds (all sites take
part: sample rate 1). Weights are uniform by construction (config-checked).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pharmafl.pipeline.aggregate import State, weighted_sum
from pharmafl.pipeline.coordinator import RoundAborted
from pharmafl.pipeline.strategies.base import Strategy
from pharmafl.sites.csprng import SecureRandom
from pharmafl.sites.privacy import PrivacyPlan, compose, epsilon_spent, round_fits
from pharmafl.sites.update import Update


class ClientDP(Strategy):
    """``inner`` with client-level DP under ``plan`` (noise from ``random``)."""

    def __init__(self, inner: Strategy, plan: PrivacyPlan, random: SecureRandom):
        super().__init__(inner.options, n_sites=inner.n_sites)
        self.inner, self.plan, self.random = inner, plan, random
        self.name = f"{inner.name}+client-dp"
        self.required_parts = inner.required_parts
        self.history: list = []
        self._spent: dict[int, dict] = {}

    def instructions(self, round: int, state: State):
        return self.inner.instructions(round, state)

    def aggregate(self, state: State, updates: Sequence[Update], weights: np.ndarray) -> State:
        total = weighted_sum([u.delta for u in updates], np.ones(len(updates)))
        return self._noisy_mean(state, total, len(updates), updates[0].round, sum(u.num_examples for u in updates))

    def aggregate_mean(self, state: State, mean: Update, count: int) -> State:
        """Under secure aggregation: the parties reveal the (uniform) mean; noise the sum it implies."""
        total = {k: (np.asarray(v, np.float64) * count) for k, v in mean.delta.items()}
        return self._noisy_mean(state, total, count, mean.round, mean.num_examples)

    def _noisy_mean(self, state: State, total: State, count: int, round: int, num_examples: int) -> State:
        plan = self.plan
        before = epsilon_spent(self.history, plan.delta, plan.accountant)
        fits, after = round_fits(self.history, plan.round_step, plan.delta, plan.budget, plan.accountant)
        if not fits:
            raise RoundAborted(
                f"round {round}: client-level ε would reach {after:.3f}, over the budget "
                f"{plan.budget} (spent {before:.3f})"
            )
        std = plan.noise_multiplier * plan.clip_norm
        noisy = {
            k: ((v + self.random.dp_noise(std, torch.from_numpy(np.asarray(v))).numpy()) / count).astype(np.float32)
            for k, v in total.items()
        }
        self.history = compose(self.history, plan.round_step)
        self._spent[round] = {
            "epsilon_round": after - before,
            "epsilon_total": after,
            "delta": plan.delta,
            "budget": plan.budget,
            "accountant": plan.accountant,
            "noise_multiplier": plan.noise_multiplier,
            "sample_rate": plan.sample_rate,
            "steps": plan.steps_per_round,
            "privacy_unit": "site",
            "clip_norm": plan.clip_norm,
            "participants": count,
            "noise_source": self.random.source,
        }
        mean = Update("server", round, num_examples, {"delta": noisy})
        return self.inner.aggregate(state, [mean], np.ones(1))

    def state(self):
        """The wrapped strategy's state and the accountant's history (the noise stream starts anew:
        fresh OS randomness is what a resumed run should draw)."""
        arrays, data = self.inner.state()
        return {f"inner/{k}": v for k, v in arrays.items()}, {"inner": data, "history": [list(h) for h in self.history]}

    def load_state(self, arrays, data):
        self.inner.load_state({k[len("inner/") :]: v for k, v in arrays.items()}, data.get("inner", {}))
        self.history = [tuple(h) for h in data.get("history", [])]

    def privacy_spent(self, round: int) -> dict | None:
        return self._spent.pop(round, None)
