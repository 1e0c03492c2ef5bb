"""The run configuration: one typed, frozen tree read from YAML (see ``configs/``).

Each section is a frozen pydantic dataclass (:func:`pharmafl.typedconfig.section`, which
says why dataclasses): unknown keys and bad values are one
:class:`~pharmafl.errors.ConfigError` naming the file, the dotted key, the bad value, the
valid choices and a "did you mean", raised before anything is written. Ranges are each
section's ``__post_init__``; rules across sections are :class:`RunConfig`'s. Reading it
loads no torch.

``pharmafl run CONFIG --set section.key=value`` changes any key (:func:`load_run_config`).
The JSON Schema of the tree, ``docs/config.schema.json``, lets an editor check a config as
it is typed; regenerate it with ``python -m pharmafl.pipeline.config --schema >
docs/config.schema.json`` (a test checks the committed file is current).
"""

from __future__ import annotations

import inspect
import json
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import field, is_dataclass
from pathlib import Path
from typing import Literal, get_type_hints

from pydantic import StrictBool, StrictFloat, StrictInt, TypeAdapter

from pharmafl.errors import ConfigError
from pharmafl.models.config import ModelConfig
from pharmafl.pipeline.configio import load_yaml
from pharmafl.pipeline.secure_agg.config import SecureAggregationConfig
from pharmafl.pipeline.strategy_options import StrategyName, parse_options
from pharmafl.sites.privacy import PrivacyConfig
from pharmafl.sites.train_config import TrainConfig
from pharmafl.typedconfig import section

Partition = Literal["compound", "target-family", "dirichlet", "quantity", "iid"]
Weighting = Literal["examples", "uniform", "quality"]
Engine = Literal["nvflare", "local"]
NVFlareEnv = Literal["sim", "poc", "prod"]


@section("data")
class DataConfig:
    """Which data, split among how many sites, how.

    Args:
        dataset: ``davis``, ``kiba``, or a directory of drugs/targets/measurements tables.
        sites: number of sites (default 10).
        partition: ``compound`` (default), ``target-family``, ``dirichlet``, ``quantity``, ``iid``.
        alpha: Dirichlet concentration for ``dirichlet`` and ``quantity`` (default 0.5).
        val_fraction: share of each site's training rows kept for local validation.
        benchmark: the agreed public set the coordinator scores the global model on:
            ``test-fold`` (default: the DeepDTA test fold of a public ``dataset``, e.g. DAVIS),
            a directory of public tables, or ``none`` (no global metrics). Never the union
            of the sites' private data.
    """

    dataset: str = "davis"
    sites: StrictInt = 10
    partition: Partition = "compound"
    alpha: StrictFloat = 0.5
    val_fraction: StrictFloat = 0.1
    benchmark: str = "test-fold"

    def __post_init__(self):
        if self.sites < 1:
            raise ConfigError(f"data.sites must be >= 1, got {self.sites}")
        if not self.alpha > 0:
            raise ConfigError(f"data.alpha must be > 0, got {self.alpha}")
        if not 0 < self.val_fraction < 0.5:
            raise ConfigError(f"data.val_fraction must be in (0, 0.5), got {self.val_fraction}")


@section("federation")
class FederationConfig:
    """Rounds, the strategy and how a round tolerates failures.

    Args:
        rounds: federated rounds (default 20).
        local_epochs: local epochs per round (default 1).
        strategy: ``fedavg`` (default), ``fedprox``, ``scaffold``, ``fedadam``, ``fedyogi``.
        strategy_options: the strategy's own settings (e.g. ``mu`` for FedProx).
        weighting: ``examples`` (default), ``uniform`` or ``quality``.
        min_sites: a round completes if at least this many sites return an update; else the
            run stops cleanly, keeping everything so far. An integer is a count of sites
            (``8``; more than ``data.sites`` is an error); a number with a point in (0, 1] is
            a fraction of ``data.sites``, rounded up (``0.8``: 8 of 10 sites, 3 of 3), so a
            config keeps its meaning with ``--sites``. Default: all sites (also ``1.0``).
        engine: ``nvflare`` (default) or ``local`` (in-process).
        nvflare_env: ``sim`` (simulator, default), ``poc`` (separate processes, mutual TLS, on
            this machine) or ``prod``: submit the job to a provisioned, running NVFlare system
            (``pharmafl consortium init --nvflare-server``) with NVFlare's ``ProdEnv``. The job
            carries the plan and no path; each site's kit names its home, the server's kit the
            folder its runs live in (``pharmafl site nvflare-config``, ``pharmafl consortium
            nvflare-config``), and the run directory (``--out``) must be in that folder.
        nvflare_admin_kit: with ``prod``, required: the admin's startup kit folder (holding
            ``startup/fed_admin.json``), absolute or relative to the working directory; the job
            is submitted as that kit's admin. Checked when the run starts.
        site_threads: torch threads per site while it trains (default 1). Float sums depend
            on the thread count, so both engines use this one value and agree exactly.
        local_optimizer: ``keep`` (default) carries each site's Adam state from round to
            round; ``reset`` starts a fresh optimizer every round.
        round_timeout_s: seconds a round waits for the sites' answers (default: no limit). A
            site that has not answered by then is recorded (``site_timed_out``) and the round
            completes with the others if ``min_sites`` remain, else the run stops and stays
            resumable (``pharmafl resume``); the site joins again in a later round. NVFlare:
            the controller's task timeout.
    """

    rounds: StrictInt = 20
    local_epochs: StrictInt = 1
    strategy: StrategyName = "fedavg"
    strategy_options: dict = field(default_factory=dict)
    weighting: Weighting = "examples"
    min_sites: StrictInt | StrictFloat | None = None
    engine: Engine = "nvflare"
    nvflare_env: NVFlareEnv = "sim"
    nvflare_admin_kit: str | None = None
    site_threads: StrictInt = 1
    local_optimizer: Literal["keep", "reset"] = "keep"
    round_timeout_s: StrictInt | StrictFloat | None = None

    def __post_init__(self):
        if self.round_timeout_s is not None and not (0 < self.round_timeout_s < 10**7):
            raise ConfigError(
                f"federation.round_timeout_s must be a number of seconds > 0 (or left out: no limit), "
                f"got {self.round_timeout_s}"
            )
        if self.site_threads < 1:
            raise ConfigError(f"federation.site_threads must be >= 1, got {self.site_threads}")
        if self.rounds < 1:
            raise ConfigError(f"federation.rounds must be >= 1, got {self.rounds}")
        if self.local_epochs < 1:
            raise ConfigError(f"federation.local_epochs must be >= 1, got {self.local_epochs}")
        if isinstance(self.min_sites, int) and self.min_sites < 1:
            raise ConfigError(
                f"federation.min_sites must be a count >= 1 or a fraction in (0, 1], got {self.min_sites}"
            )
        if isinstance(self.min_sites, float) and not 0 < self.min_sites <= 1:
            raise ConfigError(
                f"federation.min_sites {self.min_sites} is neither a fraction in (0, 1] of data.sites nor a "
                f"count; write a count without a point (e.g. {max(1, round(self.min_sites))})"
            )
        parse_options(self.strategy, self.strategy_options)  # the strategy's own settings
        if self.nvflare_env == "prod" and not self.nvflare_admin_kit:
            raise ConfigError(
                "federation.nvflare_env 'prod' needs federation.nvflare_admin_kit: the admin's NVFlare "
                "startup kit the job is submitted with (pharmafl consortium init prints where it is)"
            )

    def min_sites_of(self, sites: int) -> int:
        """``min_sites`` as a count of sites, for a federation of ``sites``."""
        if self.min_sites is None:
            return sites
        if isinstance(self.min_sites, float):
            return max(1, math.ceil(round(self.min_sites * sites, 9)))  # 0.7 * 10 is 7, not 8
        return self.min_sites

    def admin_kit(self) -> Path:
        """The admin's startup kit of ``nvflare_env: prod``, checked to be one (absolute)."""
        from pharmafl.sites.kit import check_kit

        if not self.nvflare_admin_kit:
            raise ConfigError("federation.nvflare_admin_kit is not set; give the admin's NVFlare startup kit")
        try:
            return check_kit(Path(self.nvflare_admin_kit), "admin")
        except ConfigError as exc:
            raise ConfigError(f"federation.nvflare_admin_kit: {exc}") from None


@section("diagnostics")
class DiagnosticsConfig:
    """Drift alarm: a site whose update's cosine to the mean update stays below
    ``drift_threshold`` for ``drift_rounds`` consecutive rounds raises an alarm."""

    drift_threshold: StrictFloat = 0.0
    drift_rounds: StrictInt = 3

    def __post_init__(self):
        if not -1.0 <= self.drift_threshold <= 1.0:
            raise ConfigError(f"diagnostics.drift_threshold must be in [-1, 1], got {self.drift_threshold}")
        if self.drift_rounds < 1:
            raise ConfigError(f"diagnostics.drift_rounds must be >= 1, got {self.drift_rounds}")


@section("ledger")
class LedgerConfig:
    """The audit ledger: ``enabled`` (default true); ``url``: a database URL (default:
    SQLite at ``RUN/ledger.db``; ``postgresql+psycopg://...`` for production)."""

    enabled: StrictBool = True
    url: str | None = None


@section("")
class RunConfig:
    """A federated run. ``seed`` drives the partition, local batches and dropout;
    ``model.seed`` the initial weights."""

    name: str = "run"
    seed: StrictInt = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    secure_aggregation: SecureAggregationConfig = field(default_factory=SecureAggregationConfig)

    def __post_init__(self):
        if self.min_sites > self.data.sites:
            raise ConfigError(
                f"federation.min_sites ({self.federation.min_sites}) exceeds data.sites ({self.data.sites}); "
                f"give fewer, or a fraction of the sites (e.g. min_sites: 0.8)"
            )
        self._check_privacy()
        self._check_secure_aggregation()

    def _check_privacy(self) -> None:
        p = self.privacy
        if not p.enabled:
            return
        from pharmafl.sites.store import site_ids  # the site-id convention; loads the data stack

        unknown = sorted(set(p.sites) - set(site_ids(self.data.sites)))
        if unknown:
            raise ConfigError(
                f"privacy.sites names {unknown}, not sites of this run ({site_ids(self.data.sites)[0]}"
                f" .. {site_ids(self.data.sites)[-1]})"
            )
        if self.federation.strategy == "scaffold":
            raise ConfigError(
                "federation.strategy 'scaffold' cannot run under privacy: its control variates are exact "
                "local gradients, neither clipped nor noised; use fedavg, fedprox, fedadam or fedyogi"
            )
        if p.mode == "local" and self.model.drug_encoder == "gat":
            raise ConfigError(
                "model.drug_encoder 'gat' cannot be trained with DP-SGD (Opacus has no per-sample gradients "
                "for its attention parameters); use 'gin' or 'gcn' under privacy.mode 'local'"
            )
        if p.mode == "client" and self.federation.weighting != "uniform":
            raise ConfigError(
                f"privacy.mode 'client' needs federation.weighting 'uniform' (got {self.federation.weighting!r}): "
                f"the noise is calibrated to one site's clipped update in an unweighted sum"
            )

    def _check_secure_aggregation(self) -> None:
        if not self.secure_aggregation.enabled:
            return
        if self.federation.strategy == "scaffold":
            raise ConfigError(
                "federation.strategy 'scaffold' cannot run under secure_aggregation: it weighs control deltas "
                "and model deltas differently and tracks which sites were aggregated; use fedavg, fedprox, "
                "fedadam or fedyogi"
            )
        if self.federation.weighting == "quality":
            raise ConfigError(
                "federation.weighting 'quality' cannot run under secure_aggregation: its weights depend on "
                "per-site losses the parties would have to scale shares by; use 'examples' or 'uniform'"
            )
        if self.min_sites < 2:
            raise ConfigError(
                f"federation.min_sites {self.min_sites} cannot run under secure_aggregation: a sum over one site "
                "is that site's update, and the aggregation parties never reveal one; set min_sites >= 2 (and "
                "data.sites >= 2)"
            )

    @property
    def min_sites(self) -> int:
        """``federation.min_sites`` resolved to a count of this run's ``data.sites``."""
        return self.federation.min_sites_of(self.data.sites)


def load_run_config(path: Path, overrides: Sequence[str] = ()) -> RunConfig:
    """The run config in ``path`` (YAML), after the ``section.key=value`` ``overrides``."""
    return load_yaml(RunConfig, path, overrides)


# --- JSON Schema -----------------------------------------------------------------------------


def _arg_docs(doc: str | None) -> tuple[str, dict[str, str]]:
    """A Google-style docstring's summary and its ``Args:`` entries (``a, b: text`` gives both)."""
    summary, args, names, in_args = [], {}, [], False
    for line in inspect.cleandoc(doc or "").splitlines():
        if line.strip() == "Args:":
            in_args = True
        elif not in_args:
            summary.append(line)
        elif line and not line.startswith(" "):
            break
        elif m := re.match(r"^ {4}(\w+(?:, \w+)*): (.*)$", line):
            names = m[1].split(", ")
            for n in names:
                args[n] = m[2]
        elif names and line.strip():
            for n in names:
                args[n] += " " + line.strip()
    return " ".join(" ".join(summary).split()), args


def json_schema() -> dict:
    """The JSON Schema (draft 2020-12) of a run config, with each key's docstring as its description."""
    schema = TypeAdapter(RunConfig).json_schema()
    todo, seen = [RunConfig], set()
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        node = schema if cls is RunConfig else schema["$defs"][cls.__name__]
        node["description"], args = _arg_docs(cls.__doc__)
        for name, hint in get_type_hints(cls).items():
            if name in args:
                node["properties"][name]["description"] = args[name]
            if is_dataclass(hint):
                todo.append(hint)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pharmafl.pipeline.config --schema``: print the JSON Schema of a run config."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv != ["--schema"]:
        sys.stderr.write("usage: python -m pharmafl.pipeline.config --schema > docs/config.schema.json\n")
        return 2
    sys.stdout.write(json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
