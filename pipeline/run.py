"""A federated run from config to outputs, engine-independent parts.

:func:`prepare` simulates a consortium: it partitions the dataset, sets every site up at
its own home under ``RUN/sites/`` (store, key, card), builds the consortium from the cards,
fixes the privacy plans from the cards' counts and writes ``RUN/plan.json``, all before
round 1 (:func:`plan_from_consortium` is the part that needs only the cards). :func:`server_side` builds what the
server needs (strategy, coordinator, benchmark evaluator, initial weights) identically for
the in-process engine and inside NVFlare's server process. :func:`start_run` and
:func:`end_run` emit the first and last events and save the final model.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import yaml

from pharmafl.audit.keys import MIN_SCRYPT_N
from pharmafl.errors import ConfigError, Location
from pharmafl.models.dti import DTIModel
from pharmafl.pipeline import events as ev
from pharmafl.pipeline.aggregate import State
from pharmafl.pipeline.artifacts import model_state, save_state, write_bytes_atomic
from pharmafl.pipeline.config import RunConfig
from pharmafl.pipeline.configio import from_dict, to_dict
from pharmafl.pipeline.consortium import init_consortium, load_consortium, pinned as pinned_consortium
from pharmafl.pipeline.coordinator import Coordinator
from pharmafl.pipeline.diagnostics import DriftMonitor
from pharmafl.pipeline.events import EventBus
from pharmafl.pipeline.strategies import build_strategy
from pharmafl.pipeline.strategies.client_dp import ClientDP
from pharmafl.sites.csprng import SecureRandom
from pharmafl.sites.dp_site import DPSite, UpdateClipSite, check_dp_model
from pharmafl.sites.home import CARD_FILE, SiteHome
from pharmafl.sites.partition import partition
from pharmafl.sites.party_card import party_keys
from pharmafl.sites.privacy import PrivacyPlan, plan_privacy
from pharmafl.sites.secure_site import SecureSite
from pharmafl.sites.signed_site import SignedSite
from pharmafl.sites.site import Site, featurize_dataset
from pharmafl.sites.store import check_site_rows, site_ids, subset
from pharmafl.sites.tables import load_dataset, read_store, save_dataset
from pharmafl.sites.training import evaluate

# A simulated site keeps its random passphrase in its own home, beside its key: stretching that
# passphrase protects nothing, so simulated homes use the key store's lowest cost (real sites
# initialised with `pharmafl site init` use the default, scrypt n = 2**17).
SIMULATED_SCRYPT_N = MIN_SCRYPT_N
PACKAGES = ("pharmafl", "torch", "torch-geometric", "rdkit", "opacus", "nvflare", "crypten", "numpy", "cryptography")


@dataclass(frozen=True)
class RunPlan:
    """Everything a run needs to start, as plain data (it travels to NVFlare's processes).

    Built from the consortium's site cards: the coordinator knows each site by its card
    (public key, manifest hash, counts), never by its rows or its key. ``site_homes`` says
    where the simulator finds each simulated site's home (relative to the run directory);
    in a deployment each site names its own home. ``plan.json`` holds no absolute path of
    the run: :meth:`load` takes the run directory from where the file lies.
    """

    cfg: RunConfig
    run_dir: Path
    sites: tuple[str, ...]
    manifests: dict[str, str]
    config_hash: str
    cache_dir: Path | None = None
    privacy_plans: dict | None = None  # site id (or "server") -> PrivacyPlan.as_dict(), fixed at prepare()
    party_homes: dict | None = None  # simulation: aggregation party id -> its home, relative to run_dir
    run_id: str = ""  # unique per run: every site statement and the witnesses' log origin are bound to it
    consortium: dict | None = None  # {"cards": {site: card}, "roster_sha256": ...} (pipeline/consortium.py)
    site_homes: dict | None = None  # simulation: site id -> its home, relative to run_dir (or absolute)

    def party_home(self, party: str) -> Path:
        home = Path((self.party_homes or {})[party])
        return home if home.is_absolute() else self.run_dir / home

    @property
    def party_keys(self) -> dict[str, bytes]:
        """Each aggregation party's pinned Ed25519 public key (raw bytes), from its card."""
        return {p: bytes.fromhex(c["public_key"]) for p, c in (self.consortium or {}).get("parties", {}).items()}

    def site_home(self, site: str) -> Path:
        home = Path((self.site_homes or {}).get(site, Path("sites") / site))
        return home if home.is_absolute() else self.run_dir / home

    @property
    def site_keys(self) -> dict[str, bytes]:
        """Each site's pinned Ed25519 public key (raw bytes), from its card."""
        return {s: bytes.fromhex(c["public_key"]) for s, c in (self.consortium or {}).get("cards", {}).items()}

    @property
    def benchmark_dir(self) -> Path:
        return self.run_dir / "server" / "benchmark"

    @property
    def secagg_context(self) -> str:
        """Bound into every share's encryption: a share cannot be replayed into another run."""
        return f"{self.run_id}:{self.config_hash[:16]}"

    def to_json(self) -> str:
        return json.dumps(
            {
                "cfg": to_dict(self.cfg),
                "sites": list(self.sites),
                "manifests": self.manifests,
                "config_hash": self.config_hash,
                "cache_dir": str(self.cache_dir) if self.cache_dir else None,
                "privacy_plans": self.privacy_plans,
                "party_homes": self.party_homes,
                "run_id": self.run_id,
                "consortium": self.consortium,
                "site_homes": self.site_homes,
            }
        )

    @classmethod
    def from_json(cls, text: str, run_dir: Path) -> RunPlan:
        d = json.loads(text)
        return cls(
            from_dict(RunConfig, d["cfg"]),
            Path(run_dir).resolve(),
            tuple(d["sites"]),
            d["manifests"],
            d["config_hash"],
            Path(d["cache_dir"]) if d["cache_dir"] else None,
            d.get("privacy_plans"),
            d.get("party_homes"),
            d.get("run_id", ""),
            d.get("consortium"),
            d.get("site_homes"),
        )

    @classmethod
    def load(cls, path: Path) -> RunPlan:
        """The plan in ``RUN/plan.json``; the run directory is the file's folder."""
        path = Path(path)
        return cls.from_json(path.read_text(), path.parent)


def config_bytes(cfg: RunConfig) -> bytes:
    return yaml.safe_dump(to_dict(cfg), sort_keys=True).encode()


def prepare(cfg: RunConfig, run_dir: Path, *, data_dir: Path | None = None, cache_dir: Path | None = None) -> RunPlan:
    """Simulate a consortium: partition the dataset, set every site up at its own home, build the run.

    Each simulated site goes through the same path as a real one (:meth:`SiteHome.init`:
    its store, its key under its own passphrase, its card; then it accepts the consortium);
    the run is built from the cards alone (:func:`plan_from_consortium`).
    """
    run_dir = Path(run_dir).resolve()  # other processes (NVFlare) read these paths from other cwds
    cache_dir = Path(cache_dir).resolve() if cache_dir is not None else None
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(f"run directory {run_dir} is not empty; choose a new --out (runs are never overwritten)")
    ds = load_dataset(cfg.data.dataset, data_dir=data_dir)
    m = ds.measurements
    d_pos = {d: i for i, d in enumerate(ds.drugs["drug_id"])}
    t_pos = {t: i for i, t in enumerate(ds.targets["target_id"])}
    families = ds.targets["family"].tolist() if "family" in ds.targets else None
    site_of_row = partition(
        cfg.data.partition,
        cfg.data.sites,
        drug_of_row=m["drug_id"].map(d_pos).to_numpy(),
        target_of_row=m["target_id"].map(t_pos).to_numpy(),
        labels=m["label"].to_numpy(dtype=float),
        smiles=ds.drugs["smiles"].tolist(),
        sequences=ds.targets["sequence"].tolist(),
        families=families,
        alpha=cfg.data.alpha,
        seed=cfg.seed,
    )
    site_data = split_among_sites(ds, site_of_row, cfg.data.sites, shown_as=run_dir)
    # Everything is written into a hidden sibling and renamed into place at the end: a failure
    # (a site too small for a split, a full disk) leaves no half-prepared run directory.
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.preparing-", dir=run_dir.parent))
    try:
        homes = {}
        for k, (sid, site_ds) in enumerate(site_data.items()):
            homes[sid] = SiteHome.init(
                staging / "sites" / sid,
                sid,
                site_ds,
                passphrase=None,
                simulated=True,
                val_fraction=cfg.data.val_fraction,
                seed=cfg.seed + k,
                scrypt_n=SIMULATED_SCRYPT_N,
                max_len=cfg.model.max_len,
            )
        parties = simulated_parties(cfg, staging / "parties")
        consortium = load_consortium(
            init_consortium(
                [h.path / CARD_FILE for h in homes.values()],
                staging,
                [p.path / "party-card.json" for p in parties.values()],
            )
        )
        for home in [*homes.values(), *parties.values()]:
            home.accept_consortium(consortium)
        write_benchmark(cfg, ds, staging / "server" / "benchmark")
        final = plan_from_consortium(
            cfg,
            run_dir,
            consortium,
            staging=staging,
            cache_dir=cache_dir,
            site_homes={sid: f"sites/{sid}" for sid in homes},
            party_homes={p: f"parties/{p}" for p in parties} or None,
        )
        if run_dir.exists():
            run_dir.rmdir()  # empty (checked above); rename needs the name free
        os.replace(staging, run_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def prepare_consortium(
    cfg: RunConfig,
    run_dir: Path,
    consortium_file: Path,
    site_homes: Path | None,
    *,
    data_dir: Path | None = None,
    cache_dir: Path | None = None,
) -> RunPlan:
    """A run of sites that set themselves up (``pharmafl site init``) and joined ``consortium_file``.

    The coordinator reads only the consortium's cards. ``site_homes`` is where the simulator
    (in-process or NVFlare's) finds each site's home on this machine, ``site_homes/<site id>``;
    every home must have accepted this consortium. On a provisioned system
    (``nvflare_env: prod``) there is none: each site names its home in its own kit, and
    refuses (its witness, its sealing) a roster it did not accept. ``data.benchmark`` names
    the public set (``test-fold`` of a public dataset such as ``davis``, or a folder of
    public tables).
    """
    prod = cfg.federation.engine == "nvflare" and cfg.federation.nvflare_env == "prod"
    if site_homes is None and not prod:
        raise ConfigError(
            "--consortium needs --site-homes (the folder holding each site's home) unless the run "
            "goes to a provisioned system (federation.engine nvflare, nvflare_env prod)"
        )
    if site_homes is not None and prod:
        raise ConfigError(
            "--site-homes is for simulation: on a provisioned system (nvflare_env prod) each site "
            "names its own home in its startup kit (pharmafl site nvflare-config); drop --site-homes"
        )
    run_dir = Path(run_dir).resolve()
    cache_dir = Path(cache_dir).resolve() if cache_dir is not None else None
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(f"run directory {run_dir} is not empty; choose a new --out (runs are never overwritten)")
    consortium = load_consortium(Path(consortium_file))
    homes = {}
    for site in sorted(consortium["cards"]) if site_homes is not None else ():
        home = (Path(site_homes) / site).resolve()
        if not (home / CARD_FILE).is_file():
            raise ConfigError(
                f"{home} is not the home of {site} (no {CARD_FILE}); pass --site-homes, the folder "
                f"holding one home per site id"
            )
        accepted = home / "consortia.json"
        if consortium["roster_sha256"] not in (
            json.loads(accepted.read_text()).get("accepted", []) if accepted.is_file() else []
        ):
            raise ConfigError(
                f"{site} has not accepted this consortium (roster {consortium['roster_sha256'][:16]}...);"
                f" at the site: pharmafl site accept {home} {consortium_file}"
            )
        homes[site] = str(home)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.preparing-", dir=run_dir.parent))
    try:
        if cfg.data.benchmark != "none":
            source = cfg.data.dataset if cfg.data.benchmark == "test-fold" else cfg.data.benchmark
            write_benchmark(cfg, load_dataset(source, data_dir=data_dir), staging / "server" / "benchmark")
        write_bytes_atomic(staging / "consortium.json", Path(consortium_file).read_bytes())
        final = plan_from_consortium(
            cfg, run_dir, consortium, staging=staging, cache_dir=cache_dir, site_homes=homes or None
        )
        if run_dir.exists():
            run_dir.rmdir()
        os.replace(staging, run_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def simulated_parties(cfg: RunConfig, root: Path) -> dict:
    """Simulation: the aggregation parties' homes (``pharmafl party init`` for each), under
    ``root``: the server's party and ``secure_aggregation.helpers`` helpers."""
    if not cfg.secure_aggregation.enabled:
        return {}
    from pharmafl.pipeline.secure_agg.party_home import PartyHome

    names = {
        "server-party": "server",
        **{f"helper-{j}": "helper" for j in range(1, cfg.secure_aggregation.helpers + 1)},
    }
    return {
        p: PartyHome.init(root / p, p, role=role, simulated=True, scrypt_n=SIMULATED_SCRYPT_N)
        for p, role in names.items()
    }


def plan_from_consortium(
    cfg: RunConfig,
    run_dir: Path,
    consortium: dict,
    *,
    staging: Path,
    cache_dir: Path | None = None,
    site_homes: dict | None = None,
    party_homes: dict | None = None,
) -> RunPlan:
    """The run of ``consortium`` (pinned cards), written into ``staging``: config, plans, ``plan.json``."""
    cards = consortium["cards"]
    if len(cards) != cfg.data.sites or sorted(cards) != sorted(site_ids(cfg.data.sites)):
        raise ConfigError(
            f"the consortium's sites {sorted(cards)} are not the {cfg.data.sites} sites the config "
            f"names ({site_ids(cfg.data.sites)[0]} .. {site_ids(cfg.data.sites)[-1]}); set data.sites"
        )
    blob = config_bytes(cfg)
    write_bytes_atomic(staging / "config.yaml", blob)
    config_hash = hashlib.sha256(blob).hexdigest()
    run_id = f"{re.sub(r'[^A-Za-z0-9._-]', '-', run_dir.name)[:80]}-{secrets.token_hex(4)}"
    sites = tuple(sorted(cards))
    manifests = {s: cards[s]["manifest_sha256"] for s in sites}
    if cfg.secure_aggregation.enabled and not consortium.get("parties"):
        raise ConfigError(
            "secure_aggregation is enabled but the consortium lists no aggregation party: create the "
            "parties (pharmafl party init), add their cards (pharmafl consortium init --party-card), "
            "and let every site and party accept the new roster"
        )
    staged = RunPlan(
        cfg,
        staging,
        sites,
        manifests,
        config_hash,
        cache_dir,
        None,
        party_homes,
        run_id,
        pinned_consortium(consortium),
        site_homes,
    )
    plans = privacy_plans(staged)  # a budget too small for one round fails here, before any training
    final = replace(staged, run_dir=run_dir, privacy_plans=plans)
    write_bytes_atomic(staging / "plan.json", final.to_json().encode())
    return final


def split_among_sites(ds, site_of_row: np.ndarray, n_sites: int, *, shown_as: Path) -> dict:
    """Each simulated site's own tables (its rows, their compounds and targets, DeepDTA folds kept)."""
    out = {}
    for k, sid in enumerate(site_ids(n_sites)):
        rows = np.flatnonzero(site_of_row == k)
        check_site_rows(
            ds, rows, sid, Location(shown_as / "sites" / sid), "use fewer sites, another partition, or a larger alpha"
        )
        out[sid] = subset(ds, rows, f"{ds.name}/{sid}")
    return out


def write_benchmark(cfg: RunConfig, ds, out: Path) -> None:
    """The agreed public set the coordinator scores the global model on (``data.benchmark``)."""
    choice = cfg.data.benchmark
    if choice == "none":
        return
    if choice == "test-fold":
        if "fold" not in ds.measurements or not ds.measurements["fold"].eq("test").any():
            raise ConfigError(
                f"data.benchmark 'test-fold': dataset {cfg.data.dataset!r} has no rows in fold 'test'; "
                "give data.benchmark a folder of public tables, or 'none'"
            )
        bench = subset(ds, np.flatnonzero(ds.measurements["fold"].eq("test").to_numpy()), f"{ds.name}/benchmark")
    else:
        public = load_dataset(choice)
        bench = subset(public, np.arange(len(public.measurements)), f"{public.name}/benchmark")
    bench.measurements["fold"] = "test"
    save_dataset(bench, out, extra={"role": "benchmark", "source": choice})


def privacy_plans(plan: RunPlan) -> dict | None:
    """Each site's DP-SGD plan (``local``) or the server's DP-FedAvg plan (``client``)."""
    cfg, fed = plan.cfg, plan.cfg.federation
    if not cfg.privacy.enabled:
        return None
    if cfg.privacy.mode == "client":
        return {
            "server": plan_privacy(
                cfg.privacy,
                units=len(plan.sites),
                rounds=fed.rounds,
                local_epochs=fed.local_epochs,
                where="privacy (client-level)",
            ).as_dict()
        }
    check_dp_model(DTIModel.from_config(cfg.model), "privacy.mode 'local'")
    cards = plan.consortium["cards"]
    return {
        site: plan_privacy(
            cfg.privacy.for_site(site),
            units=int(cards[site]["units"][cfg.privacy.unit]),
            rounds=fed.rounds,
            local_epochs=fed.local_epochs,
            where=f"site {site}",
        ).as_dict()
        for site in plan.sites
    }


def initial_state(cfg: RunConfig) -> State:
    return {k: v.copy() for k, v in model_state(DTIModel.from_config(cfg.model)).items()}


def benchmark_evaluator(plan: RunPlan):
    """Metrics of a global state on the benchmark store (``RUN/server/benchmark``)."""
    if plan.cfg.data.benchmark == "none":
        return None
    if not (plan.benchmark_dir / "manifest.json").is_file():
        raise ConfigError(f"{plan.benchmark_dir} holds no benchmark store; the run directory is incomplete")
    pairs = featurize_dataset(read_store(plan.benchmark_dir), plan.cfg.model, plan.cache_dir)
    model = DTIModel.from_config(plan.cfg.model)

    def score(state: State) -> dict:
        import torch

        model.load_state_dict({k: torch.from_numpy(np.asarray(v).copy()) for k, v in state.items()})
        return {**evaluate(model, pairs), "pairs": len(pairs)}

    return score


def server_side(plan: RunPlan, bus: EventBus, *, transcript_dir: Path | None = None) -> Coordinator:
    """The coordinator; under secure aggregation it starts the parties (close it when done).

    ``transcript_dir``: the parties save everything they receive there (leak tests only).
    """
    cfg = plan.cfg
    strategy = build_strategy(cfg.federation.strategy, cfg.federation.strategy_options, n_sites=len(plan.sites))
    if cfg.privacy.mode == "client":
        strategy = ClientDP(strategy, PrivacyPlan(**plan.privacy_plans["server"]), noise_source(cfg, "server"))
    common = dict(
        strategy=strategy,
        bus=bus,
        stop_on_decline=cfg.privacy.on_exhausted == "stop",
        weighting=cfg.federation.weighting,
        min_sites=cfg.min_sites,
        drift=DriftMonitor(cfg.diagnostics.drift_threshold, cfg.diagnostics.drift_rounds),
        evaluate=benchmark_evaluator(plan),
        model_config=asdict(cfg.model),
        run_id=plan.run_id,
        site_keys=plan.site_keys,
    )
    if not cfg.secure_aggregation.enabled:
        return Coordinator(**common)
    from pharmafl.pipeline.secure_agg.client import AggregationService, LocalParties
    from pharmafl.pipeline.secure_agg.coordinator import SecureCoordinator

    local, endpoints = None, cfg.secure_aggregation.endpoint_map()
    if plan.party_homes:  # the simulator runs the parties' services itself, each in its own process
        local = LocalParties(
            {p: plan.party_home(p) for p in plan.party_homes},
            host=cfg.secure_aggregation.host,
            transcript_dir=transcript_dir,
        )
        endpoints = local.endpoints
    try:
        service = AggregationService(plan.consortium["parties"], endpoints, secure_terms(plan))
    except BaseException:
        if local is not None:
            local.close()
        raise
    return SecureCoordinator(
        **common,
        service=service,
        settings=cfg.secure_aggregation,
        context=plan.secagg_context,
        local_parties=local,
        party_keys=plan.party_keys,
    )


def secure_terms(plan: RunPlan) -> dict:
    """What every aggregation party must agree to before it takes part in the run."""
    from pharmafl.sites.party_card import ranked

    cfg, parties = plan.cfg.secure_aggregation, plan.consortium["parties"]
    order = ranked(parties)
    dealer = cfg.dealer or order[1]
    layout = [[f"delta/{k}", list(np.shape(v))] for k, v in sorted(initial_state(plan.cfg).items())]
    return {
        "run_id": plan.run_id,
        "context": plan.secagg_context,
        "roster_sha256": plan.consortium["roster_sha256"],
        "parties": order,
        "dealer": dealer,
        "min_sites": plan.cfg.min_sites,
        "weighting": plan.cfg.federation.weighting,
        "max_examples": cfg.max_examples,
        "max_update_norm": cfg.max_update_norm,
        "slack": cfg.slack,
        "sketches": cfg.sketches,
        "buckets": cfg.buckets,
        "layout": layout,
    }


def noise_source(cfg: RunConfig, party: str) -> SecureRandom:
    """The party's DP randomness: the OS-keyed CSPRNG, or a seeded stream if the config says so."""
    if cfg.privacy.noise_source == "seeded":
        return SecureRandom(seed=zlib.crc32(f"{cfg.seed}:{party}".encode()))
    return SecureRandom()


def make_site(plan: RunPlan, site: str) -> SignedSite:
    """The site ``site`` as configured by the plan (every engine builds it so), from its own
    home: wrapped in its privacy mechanism, then in secret sharing, then in its signature."""
    cfg = plan.cfg
    home = SiteHome.open(plan.site_home(site))
    pinned = (plan.consortium or {}).get("cards", {}).get(site)
    if home.card != pinned:
        raise ConfigError(
            f"the home of {site} at {home.path} holds another card than the one the run pinned "
            f"(fingerprint {home.card.get('fingerprint', '?')[:16]}... vs "
            f"{(pinned or {}).get('fingerprint', 'none')[:16]}...); use the site's own home"
        )
    inner = Site(
        home.store,
        cfg.model,
        cfg.train,
        local_epochs=cfg.federation.local_epochs,
        seed=cfg.seed,
        cache_dir=plan.cache_dir,
        threads=cfg.federation.site_threads,
        keep_optimizer_state=cfg.federation.local_optimizer == "keep",
        carried_dir=home.run_dir(plan.run_id) / "carried",
    )
    if cfg.privacy.mode == "local":
        inner = DPSite(
            inner,
            cfg.privacy,
            PrivacyPlan(**plan.privacy_plans[site]),
            noise_source(cfg, site),
            ledger=home.privacy,
            run_id=plan.run_id,
        )
    elif cfg.privacy.mode == "client":
        inner = UpdateClipSite(inner, cfg.privacy)
    if cfg.secure_aggregation.enabled:  # privacy first, then sharing, to the parties the site agreed to
        home.check_accepted(plan.consortium)
        openings = home.keep_dir(plan.run_id) if cfg.secure_aggregation.keep_updates else None
        inner = SecureSite(inner, party_keys(plan.consortium), plan.secagg_context, openings)
    return SignedSite(inner, home, plan.run_id, secure=cfg.secure_aggregation.enabled)


def sign_site(plan: RunPlan, site: str, inner) -> SignedSite:
    """``inner`` (any site object for ``site``) signing with the site's own home, as in :func:`make_site`."""
    return SignedSite(
        inner, SiteHome.open(plan.site_home(site)), plan.run_id, secure=plan.cfg.secure_aggregation.enabled
    )


def _git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent  # safe.directory: a checkout owned by another user (a deployment)
        out = subprocess.run(
            ["git", "-c", f"safe.directory={here.parent}", "rev-parse", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def start_run(plan: RunPlan, bus: EventBus, engine: str) -> None:
    bus.emit(
        ev.RUN_STARTED,
        "server",
        run_id=plan.run_id,
        config=to_dict(plan.cfg),
        config_hash=plan.config_hash,
        git_commit=_git_commit(),
        versions=versions(),
        seed=plan.cfg.seed,
        sites=list(plan.sites),
        manifests=dict(plan.manifests),
        engine=engine,
        consortium=plan.consortium,
        privacy={**plan.cfg.privacy.summary(), "plans": plan.privacy_plans} if plan.cfg.privacy.enabled else None,
        secure_aggregation=_secure_summary(plan),
    )


def _secure_summary(plan: RunPlan) -> dict | None:
    """The settings and every party's key fingerprint, so shares can be tied to their recipients."""
    if not plan.cfg.secure_aggregation.enabled:
        return None
    parties = plan.consortium["parties"]
    return {
        **plan.cfg.secure_aggregation.summary(),
        "context": plan.secagg_context,
        "terms": secure_terms(plan),
        "parties": {
            p: {k: c[k] for k in ("role", "fingerprint", "tls_fingerprint")}
            | {"hpke_fingerprint": hashlib.sha256(bytes.fromhex(c["hpke_key"])).hexdigest()}
            for p, c in parties.items()
        },
    }


def end_run(
    plan: RunPlan,
    coord: Coordinator,
    state: State,
    *,
    status: str,
    rounds: int,
    site_metrics: dict[str, dict],
    seconds: float,
) -> dict:
    """Save the final model, emit ``run_ended``; return the final metrics."""
    model_hash = save_state(state, asdict(plan.cfg.model), plan.run_dir / "model.safetensors")
    try:
        final = coord.evaluate(state) if coord.evaluate is not None else {}
    except ValueError as exc:  # e.g. non-finite predictions of a failed run: recorded, not fatal
        final, status = {}, f"{status}; final evaluation failed: {exc}"
    metrics = {
        **{f"test_{k}": v for k, v in final.items() if k != "pairs"},
        "test_pairs": final.get("pairs"),
        "sites": site_metrics,
        "seconds": round(seconds, 3),
        "engine": plan.cfg.federation.engine,
        "strategy": plan.cfg.federation.strategy,
    }
    coord.finish_run(state, status, rounds, model_hash, metrics)
    return {**metrics, "status": status, "rounds": rounds, "model_sha256": model_hash}
