"""Differential-privacy settings, a site's privacy plan, and the budget arithmetic.

Two modes (``privacy.mode``):

* ``local`` — DP-SGD at every site (Abadi et al. 2016, https://arxiv.org/abs/1607.00133):
  Poisson-sampled batches of privacy units, each unit's gradient clipped to ``clip_norm``,
  Gaussian noise of std ``noise_multiplier * clip_norm`` added to the sum. The guarantee is
  the site's: (ε, δ) over all rounds it trains, about one privacy unit of its data.
* ``client`` — DP-FedAvg (McMahan et al. 2018, https://arxiv.org/abs/1710.06963): each site
  clips its whole update to ``clip_norm``; the server adds Gaussian noise of std
  ``noise_multiplier * clip_norm`` to the sum of the clipped updates and divides by the
  number of participants. The guarantee is about one whole site's participation.

Accounting is Opacus's (``prv`` by default, or ``rdp``); nothing here composes privacy loss
by hand. A history is a list of ``(noise_multiplier, sample_rate, steps)``, the form Opacus
accountants keep. :func:`epsilon_spent` and :func:`round_fits` are pure functions over it.

The privacy unit (``unit``) says what ε protects: ``pair`` — one compound-target
measurement; ``compound`` — all measurements of one compound together (a proprietary
compound's existence and every assay result on it).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
from pydantic import StrictFloat, StrictInt

from pharmafl.errors import ConfigError
from pharmafl.typedconfig import section

Mode = Literal["off", "local", "client"]
Unit = Literal["pair", "compound"]
Accountant = Literal["prv", "rdp"]
History = list[tuple[float, float, int]]

UNIT_WORDS = {
    "pair": "one compound-target affinity measurement at a site: whether any single measurement "
    "was in the site's training data, and its value",
    "compound": "one compound at a site together with all of its measurements: whether the "
    "compound was in the site's training data at all, and every affinity measured for it",
    "site": "one site's entire participation in a round: whether the site took part and "
    "everything its data contributed to the update",
}
_OVERRIDABLE = ("epsilon", "delta", "noise_multiplier", "clip_norm")


@section("privacy")
class PrivacyConfig:
    """Differential privacy for a run (see the module docstring).

    Args:
        mode: ``off`` (default), ``local`` (DP-SGD at each site) or ``client`` (DP-FedAvg).
        epsilon: the run's ε budget; the noise multiplier is derived so the planned rounds
            and local steps spend at most this much, and a site declines a round that would
            exceed it. Omit only with an explicit ``noise_multiplier`` (no budget then).
        delta: δ; default ``0.1 / n`` for a site's ``n`` privacy units (below ``1/n``), or
            ``0.1 / sites`` in ``client`` mode.
        noise_multiplier: explicit σ (std of the noise / ``clip_norm``) instead of deriving it.
        clip_norm: per-unit gradient bound (``local``) or per-site update bound (``client``).
        unit: ``pair`` (default) or ``compound`` (``local`` mode).
        accountant: ``prv`` (default) or ``rdp``, Opacus's.
        batch_size: expected Poisson batch, in privacy units (``local``; default 128).
        chunk_pairs: pairs per forward/backward pass (memory bound; default 64).
        on_exhausted: ``continue`` (default) — a site whose budget cannot pay for the next
            round declines it and the run goes on without it; ``stop`` — the run stops cleanly.
        noise_source: ``csprng`` (default; ChaCha20 keyed from ``os.urandom``) or ``seeded``
            (reproducible, NOT private; tests and benchmarks only, and recorded as such).
        sites: per-site overrides of ``epsilon``, ``delta``, ``noise_multiplier``, ``clip_norm``.
    """

    mode: Mode = "off"
    epsilon: StrictFloat | None = None
    delta: StrictFloat | None = None
    noise_multiplier: StrictFloat | None = None
    clip_norm: StrictFloat = 1.0
    unit: Unit = "pair"
    accountant: Accountant = "prv"
    batch_size: StrictInt = 128
    chunk_pairs: StrictInt = 64
    on_exhausted: Literal["continue", "stop"] = "continue"
    noise_source: Literal["csprng", "seeded"] = "csprng"
    sites: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.mode == "off":
            return
        _check_values("privacy", self.epsilon, self.delta, self.noise_multiplier, self.clip_norm)
        if self.epsilon is None and self.noise_multiplier is None:
            raise ConfigError(
                "privacy: give privacy.epsilon (the run's budget; the noise multiplier is derived) "
                "or privacy.noise_multiplier (explicit noise, no budget)"
            )
        if self.mode == "client" and self.unit != "pair":
            raise ConfigError("privacy.unit applies to mode 'local'; client-level DP protects a whole site")
        for name in ("batch_size", "chunk_pairs"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"privacy.{name} must be a positive integer, got {value!r}")
        for site, over in self.sites.items():
            if not isinstance(over, dict):
                raise ConfigError(f"privacy.sites.{site} must be a mapping of {list(_OVERRIDABLE)}")
            unknown = sorted(set(over) - set(_OVERRIDABLE))
            if unknown:
                raise ConfigError(
                    f"Could not resolve privacy.sites.{site} keys {unknown} among choices {list(_OVERRIDABLE)}"
                )
            self.for_site(site)  # validates the merged values

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def for_site(self, site: str) -> PrivacyConfig:
        """This config with ``site``'s overrides applied (and validated)."""
        over = self.sites.get(site) or {}
        if not over:
            return self
        _check_values(
            f"privacy.sites.{site}",
            over.get("epsilon"),
            over.get("delta"),
            over.get("noise_multiplier"),
            over.get("clip_norm", self.clip_norm),
        )
        return replace(self, sites={}, **over)

    def summary(self) -> dict:
        """What the run_started event and reports record."""
        d = {
            k: getattr(self, k)
            for k in (
                "mode",
                "epsilon",
                "delta",
                "noise_multiplier",
                "clip_norm",
                "accountant",
                "on_exhausted",
                "noise_source",
            )
        }
        d["unit"] = "site" if self.mode == "client" else self.unit
        d["protects"] = UNIT_WORDS[d["unit"]]
        d["sites"] = {k: dict(v) for k, v in sorted(self.sites.items())}
        return d


def _check_values(where, epsilon, delta, noise_multiplier, clip_norm) -> None:
    if epsilon is not None and not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon > 0):
        raise ConfigError(f"{where}.epsilon must be a finite number > 0, got {epsilon!r}")
    if delta is not None and not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise ConfigError(f"{where}.delta must be in the open interval (0, 1), got {delta!r}")
    if noise_multiplier is not None and not (
        isinstance(noise_multiplier, (int, float)) and math.isfinite(noise_multiplier) and noise_multiplier > 0
    ):
        raise ConfigError(f"{where}.noise_multiplier must be a finite number > 0, got {noise_multiplier!r}")
    if not (isinstance(clip_norm, (int, float)) and math.isfinite(clip_norm) and clip_norm > 0):
        raise ConfigError(f"{where}.clip_norm must be a finite number > 0, got {clip_norm!r}")


def make_accountant(name: str, history: History = ()):
    from opacus.accountants import create_accountant

    acc = create_accountant(mechanism=name)
    acc.history = [tuple(h) for h in history]
    return acc


def epsilon_spent(history: History, delta: float, accountant: str) -> float:
    """ε of the composed mechanisms in ``history`` at ``delta`` (0 for an empty history)."""
    if not history or all(steps == 0 for _, _, steps in history):
        return 0.0
    with quiet_accountant():
        return float(make_accountant(accountant, history).get_epsilon(delta=delta))


@contextmanager
def quiet_accountant():
    """Silence Opacus's RDP hint that a larger order might tighten the bound: the bound
    returned is valid either way, and the hint floods site logs every round."""
    with warnings.catch_warnings(), np.errstate(divide="ignore"):  # PRV's log(1 - q) at q = 1
        warnings.filterwarnings("ignore", message="Optimal order is the", category=UserWarning)
        yield


def compose(history: History, step: tuple[float, float, int]) -> History:
    """``history`` followed by ``step``, merged with the last entry as Opacus does."""
    out = [tuple(h) for h in history]
    if out and out[-1][:2] == step[:2]:
        out[-1] = (step[0], step[1], out[-1][2] + step[2])
    else:
        out.append(tuple(step))
    return out


def split_prior(runs: Mapping[str, Mapping], accountant: str, delta: float) -> tuple[History, float]:
    """What earlier ``runs`` on one dataset spent, as a run under ``accountant`` at ``delta`` sees it.

    Runs under the same accountant and δ compose exactly: their histories are concatenated
    (an Opacus accountant composes every mechanism of its history). Runs under another
    accountant or δ are composed within their own group, and the groups' ε are added (basic
    composition: :math:`(\varepsilon_1, \\delta_1)` and :math:`(\varepsilon_2, \\delta_2)` give
    :math:`(\varepsilon_1 + \varepsilon_2, \\delta_1 + \\delta_2)`), a conservative bound.

    Returns ``(history composing with this run's, ε of the other groups)``.
    """
    same: History = []
    groups: dict[tuple[str, float], History] = {}
    for rec in runs.values():
        history = [tuple(h) for h in rec["history"]]
        key = (rec["accountant"], float(rec["delta"]))
        if key == (accountant, float(delta)):
            same += history
        else:
            groups.setdefault(key, []).extend(history)
    return same, sum(epsilon_spent(h, d, a) for (a, d), h in sorted(groups.items()))


def round_fits(
    history: History, step: tuple[float, float, int], delta: float, budget: float | None, accountant: str
) -> tuple[bool, float]:
    """Whether one more round of ``step`` keeps ε within ``budget``; and ε after it."""
    after = epsilon_spent(compose(history, step), delta, accountant)
    return (budget is None or after <= budget), after


@dataclass(frozen=True)
class PrivacyPlan:
    """One party's privacy arithmetic for a run: fixed before round 1, recorded in full."""

    unit: str
    units: int  # privacy units the party holds (pairs, compounds, or sites)
    sample_rate: float
    steps_per_round: int
    noise_multiplier: float
    clip_norm: float
    delta: float
    budget: float | None
    accountant: str
    rounds: int

    @property
    def round_step(self) -> tuple[float, float, int]:
        return (self.noise_multiplier, self.sample_rate, self.steps_per_round)

    def epsilon_after(self, rounds: int) -> float:
        return epsilon_spent(
            [(self.noise_multiplier, self.sample_rate, self.steps_per_round * rounds)], self.delta, self.accountant
        )

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def plan_privacy(cfg: PrivacyConfig, *, units: int, rounds: int, local_epochs: int, where: str) -> PrivacyPlan:
    """Sample rate, steps and noise for ``units`` privacy units over ``rounds`` rounds.

    In ``local`` mode a round is ``local_epochs / q`` Poisson steps of rate
    ``q = batch_size / units``; in ``client`` mode a round is one step over the sites
    (``units`` = number of sites, all taking part: ``q = 1``). Raises
    :class:`~pharmafl.errors.ConfigError` when the budget cannot pay for even one round.
    """
    if units < 1:
        raise ConfigError(f"{where}: no privacy units ({cfg.unit}s) to train on")
    if cfg.mode == "client":
        q, steps, unit = 1.0, 1, "site"
    else:
        q = min(1.0, cfg.batch_size / units)
        steps, unit = max(1, round(local_epochs / q)), cfg.unit
    delta = cfg.delta if cfg.delta is not None else 0.1 / units
    noise = cfg.noise_multiplier
    if noise is None:
        from opacus.accountants.utils import get_noise_multiplier

        try:
            with quiet_accountant():
                noise = float(
                    get_noise_multiplier(
                        target_epsilon=cfg.epsilon,
                        target_delta=delta,
                        sample_rate=q,
                        steps=steps * rounds,
                        accountant=cfg.accountant,
                    )
                )
        except ValueError as exc:
            raise ConfigError(
                f"{where}: ε = {cfg.epsilon} at δ = {delta:.3g} cannot be met over {rounds} round(s) of "
                f"{steps} step(s) at sample rate {q:.4g} ({exc}); raise privacy.epsilon or lower the rounds"
            ) from None
    plan = PrivacyPlan(
        unit, units, q, steps, noise, float(cfg.clip_norm), float(delta), cfg.epsilon, cfg.accountant, rounds
    )
    if cfg.epsilon is not None:
        one = plan.epsilon_after(1)
        if one > cfg.epsilon:
            raise ConfigError(
                f"{where}: one round costs ε = {one:.3f} (σ = {noise:.3g}, q = {q:.4g}, {steps} steps, "
                f"δ = {delta:.3g}), more than the budget privacy.epsilon = {cfg.epsilon}; raise the budget, "
                f"the noise multiplier, or lower privacy.batch_size / federation.local_epochs"
            )
    return plan
