"""The federated strategies a run config may name, and each one's ``strategy_options``.

What the config checks (:class:`~pharmafl.pipeline.config.FederationConfig`) without
loading the algorithms: a name of :data:`StrategyName` and options that fit that
strategy's frozen ``Options`` dataclass. The algorithms themselves (and the registry that
resolves a name to its class, :mod:`pharmafl.pipeline.strategies`) use these same
``Options`` classes; a test keeps the two registries equal.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Literal, get_args

from pydantic import StrictFloat

from pharmafl.errors import ConfigError
from pharmafl.typedconfig import from_dict, section

StrategyName = Literal["fedavg", "fedprox", "scaffold", "fedadam", "fedyogi"]

WHERE = "federation.strategy_options"


@section(WHERE)
class NoOptions:
    """This strategy takes no options."""


@section(WHERE)
class FedProxOptions:
    """``mu``: weight of the proximal term (default 0.01; 0 is FedAvg)."""

    mu: StrictFloat = 0.01

    def __post_init__(self):
        if self.mu < 0:
            raise ConfigError(f"{WHERE}.mu must be >= 0, got {self.mu}")


@section(WHERE)
class ScaffoldOptions:
    """``server_lr``: global step size :math:`\\eta_g` (default 1.0)."""

    server_lr: StrictFloat = 1.0

    def __post_init__(self):
        if not self.server_lr > 0:
            raise ConfigError(f"{WHERE}.server_lr must be > 0, got {self.server_lr}")


@section(WHERE)
class FedOptOptions:
    """Server step ``server_lr`` (η, default 0.01), ``beta1`` (0.9), ``beta2`` (0.99), ``tau`` (1e-3).

    The adaptive step moves each weight by about η per round, so η should match the size of
    a round's local progress (local Adam at lr 5e-4 over tens of steps: ~1e-2).
    """

    server_lr: StrictFloat = 1e-2
    beta1: StrictFloat = 0.9
    beta2: StrictFloat = 0.99
    tau: StrictFloat = 1e-3

    def __post_init__(self):
        for name in ("server_lr", "tau"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{WHERE}.{name} must be > 0, got {getattr(self, name)}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{WHERE}.{name} must be in [0, 1), got {getattr(self, name)}")


STRATEGY_OPTIONS: dict[str, type] = {
    "fedavg": NoOptions,
    "fedprox": FedProxOptions,
    "scaffold": ScaffoldOptions,
    "fedadam": FedOptOptions,
    "fedyogi": FedOptOptions,
}
assert tuple(STRATEGY_OPTIONS) == get_args(StrategyName)


def parse_options(name: str, options: Mapping | None):
    """``options`` as strategy ``name``'s ``Options``; :class:`ConfigError` naming the bad key."""
    try:
        cls = STRATEGY_OPTIONS[name]
    except KeyError:
        raise ConfigError(
            f"federation.strategy: Could not resolve {name!r} among choices {list(STRATEGY_OPTIONS)}"
        ) from None
    if options is not None and not isinstance(options, Mapping):
        raise ConfigError(f"{WHERE} must be a mapping of {name}'s options, got {options!r}")
    if options and not dataclasses.fields(cls):
        raise ConfigError(f"{WHERE}.{next(iter(options))}: unknown key; {name} takes no options (remove them)")
    return from_dict(cls, options or {}, prefix=WHERE)
