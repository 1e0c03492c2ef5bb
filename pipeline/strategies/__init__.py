"""Registry of federated strategies: a config string resolves to a class here, and only here.

The names and options a config may give live in :mod:`pharmafl.pipeline.strategy_options`
(checked when the config is built, without loading the algorithms); this registry imports
no config.
"""

from __future__ import annotations

from collections.abc import Mapping

from pharmafl.errors import ConfigError
from pharmafl.pipeline.strategies.base import Strategy
from pharmafl.pipeline.strategies.fedopt import FedAdam, FedYogi
from pharmafl.pipeline.strategies.fedprox import FedProx
from pharmafl.pipeline.strategies.scaffold import Scaffold
from pharmafl.pipeline.strategy_options import parse_options

STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (Strategy, FedProx, Scaffold, FedAdam, FedYogi)}


def build_strategy(name: str, options: Mapping | None, *, n_sites: int) -> Strategy:
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise ConfigError(
            f"federation.strategy: Could not resolve {name!r} among choices {sorted(STRATEGIES)}"
        ) from None
    return cls(parse_options(name, options), n_sites=n_sites)
