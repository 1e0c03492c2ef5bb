"""Fixtures for compliance tests: runs with a ledger, users in every role, a fake clock.

Two kinds of run:

* ``ledger_run``: a recorded 2-round, 3-site DP run written straight through the ledger
  listener (no training, no pipeline): the coordinator's entries, each site's statements
  signed with that site's own key (pinned in ``run_started``'s consortium cards) and every
  checkpoint cosigned by the sites' witnesses, exactly as docs/trust-domains.md says; a
  model file whose hash ``run_ended`` holds. Milliseconds; most tests use it.
* ``real_run``: a real 3-site, 2-round DP-SGD run on a DAVIS excerpt (once per session,
  seconds), copied per test: for the PDF and the README walkthrough; ``secure_run_template``
  the same under secure aggregation (no DP). The data come from ``$PHARMAFL_DATA`` or, as in
  the Makefile, ``../shared/data`` beside the checkout.

Users use :meth:`PasswordPolicy.for_tests` (scrypt n = 2**14), admitted only because
:func:`open_access` opens with ``allow_test_kdf=True``; production refuses it.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pharmafl.audit.keys import raw_public_key
from pharmafl.audit.listener import LedgerListener
from pharmafl.audit.messages import canonical, make_card, make_statement
from pharmafl.audit.witness import Witness
from pharmafl.compliance.access import AccessControl
from pharmafl.compliance.credentials import PasswordPolicy

from ..audit.conftest import FAST_SCRYPT, PASSPHRASE

REPO_ROOT = Path(__file__).resolve().parents[2]
POLICY = PasswordPolicy.for_tests(min_length=12, max_age_days=90, max_failed_logins=3)
# user id -> (printed name, role, password after enrolment, temporary password)
PEOPLE = {
    "ada": ("Ada Lovelace", "admin", "river-Stone-0001", None),
    "quinn": ("Quinn Quality", "qa", "qa-Secret-00042", "Temporary-Pass-1"),
    "dana": ("Dana Scientist", "data_scientist", "ds-Secret-00042", "Temporary-Pass-2"),
    "rita": ("Rita Regulator", "regulator", "reg-Secret-00042", "Temporary-Pass-3"),
}
SITES = ("site-01", "site-02", "site-03")
RUN_ID = "run"
MODEL = b"pharmafl test model weights"


def password(user: str) -> str:
    return PEOPLE[user][2]


class Clock:
    """A settable UTC clock for password ageing."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def site_key(site: str) -> Ed25519PrivateKey:
    """A site's own key (it lives at the site: never in the run's key store)."""
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"compliance/{site}".encode()).digest())


def consortium(sites=SITES) -> dict:
    cards = {
        s: make_card(
            site_key(s).sign,
            {
                "counts": {"pairs": 30, "train": 24, "val": 3, "test": 3},
                "created": "2026-12-01T11:00:00.000000Z",
                "manifest_sha256": hashlib.sha256(f"manifest {s}".encode()).hexdigest(),
                "public_key": raw_public_key(site_key(s)).hex(),
                "site": s,
                "units": {"compound": 4, "pair": 24},
            },
        )
        for s in sites
    }
    return {"cards": cards, "roster_sha256": hashlib.sha256(canonical(cards).encode()).hexdigest()}


def statement(site: str, type_: str, rnd: int | None, payload: dict, **annotations) -> SimpleNamespace:
    """A site's signed statement as the bus hands it to the ledger listener."""
    stmt = make_statement(site_key(site).sign, run_id=RUN_ID, round=rnd, site=site, type=type_, payload=payload)
    return SimpleNamespace(
        type=type_,
        actor=site,
        payload={"round": rnd, **payload, **annotations},
        statement=stmt,
        annotations=annotations,
    )


def event(type_: str, actor: str, **payload) -> SimpleNamespace:
    return SimpleNamespace(type=type_, actor=actor, payload=payload)


def _cosign(listener: LedgerListener, witnesses: dict[str, Witness]) -> None:
    answers = {site: witnesses[site].add_checkpoint(req) for site, req in listener.witness_requests().items()}
    assert listener.cosigned(answers) == {}


def record_run(run: Path, witness_dir: Path, rounds: int = 2) -> None:
    """A complete small DP run, as the coordinator records it (see the module docstring)."""
    pinned = consortium()
    witnesses = {
        s: Witness(
            witness_dir / s,
            s,
            site_key(s).sign,
            raw_public_key(site_key(s)),
            accepted_rosters={pinned["roster_sha256"]},
        )
        for s in SITES
    }
    listener = LedgerListener.for_run(run, PASSPHRASE, scrypt_n=FAST_SCRYPT)
    try:
        listener.on_event(
            event(
                "run_started",
                "server",
                run_id=RUN_ID,
                config={"federation": {"rounds": rounds}},
                config_hash="c" * 64,
                git_commit="f" * 40,
                versions={"pharmafl": "0.1.0"},
                seed=1,
                engine="local",
                sites=list(SITES),
                consortium=pinned,
                privacy={
                    "mode": "local",
                    "epsilon": 8.0,
                    "unit": "pair",
                    "accountant": "prv",
                    "protects": "one measurement (a drug-target pair's affinity)",
                    "clip_norm": 1.0,
                },
            )
        )
        for rnd in range(1, rounds + 1):
            listener.on_event(event("round_started", "server", round=rnd, sites=list(SITES)))
            for i, site in enumerate(SITES):
                update = hashlib.sha256(f"{site}/{rnd}".encode()).hexdigest()
                listener.on_event(
                    statement(
                        site,
                        "site_update",
                        rnd,
                        {
                            "update_hash": update,
                            "num_examples": 24,
                            "update_bytes": 1000,
                            "metrics": {"val_mse": 0.5 - 0.1 * rnd},
                        },
                        accepted=True,
                        problem=None,
                    )
                )
                listener.on_event(
                    statement(
                        site,
                        "clip",
                        rnd,
                        {"clip_norm": 1.0, "clipped": 3, "total": 24, "max_norm": 2.5, "mean_norm": 0.9},
                    )
                )
                listener.on_event(
                    statement(
                        site,
                        "privacy_spent",
                        rnd,
                        {
                            "epsilon_round": 1.5 + i / 10,
                            "epsilon_total": (1.5 + i / 10) * rnd,
                            "delta": 1e-4,
                            "budget": 8.0,
                            "accountant": "prv",
                            "noise_multiplier": 1.1,
                            "sample_rate": 0.25,
                            "steps": 4,
                            "privacy_unit": "pair",
                            "noise_source": "seeded",
                            "epsilon_prior": 0.0,
                        },
                    )
                )
            listener.on_event(
                event(
                    "aggregated",
                    "server",
                    round=rnd,
                    participants=list(SITES),
                    weights={s: 1 / 3 for s in SITES},
                    aggregate_hash=f"{rnd}" * 64,
                    checkpoint_hash="d" * 64,
                    strategy="fedavg",
                )
            )
            listener.on_event(
                event(
                    "round_ended",
                    "server",
                    round=rnd,
                    metrics={
                        "global": {"test_mse": 0.4},
                        "sites": {s: {"global_val_mse": 0.3, "global_val_ci": 0.7} for s in SITES},
                    },
                    diagnostics={
                        "cosine_to_mean": {s: 0.9 - i / 10 for i, s in enumerate(SITES)},
                        "sites": list(SITES),
                        "cosine_matrix": [[1.0 if a == b else 0.8 for b in SITES] for a in SITES],
                    },
                )
            )
            _cosign(listener, witnesses)
        listener.on_event(
            event(
                "run_ended",
                "server",
                status="completed",
                rounds=rounds,
                model_hash=hashlib.sha256(MODEL).hexdigest(),
                metrics={"test_mse": 0.4},
            )
        )
        _cosign(listener, witnesses)
    finally:
        listener.close()
    (run / "model.safetensors").write_bytes(MODEL)


@pytest.fixture(scope="session")
def ledger_run_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("recorded")
    record_run(root / "run", root / "witnesses")
    return root / "run"


@pytest.fixture
def ledger_run(ledger_run_template: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(ledger_run_template, run)
    return run


def open_access(run: Path, clock=None) -> AccessControl:
    """The run's access control as a test suite opens it (the test-only KDF admitted)."""
    kw = {"clock": clock} if clock is not None else {}
    return AccessControl.open(run, PASSPHRASE, scrypt_n=FAST_SCRYPT, allow_test_kdf=True, **kw)


@pytest.fixture
def cli_admits_test_kdf(monkeypatch):
    """The commands open access control as production does (refusing the test-only KDF);
    this lets a test run them on a run whose users were made with :data:`POLICY`."""
    real = AccessControl.open.__func__

    def open_for_tests(cls, *args, **kwargs):
        return real(cls, *args, **{**kwargs, "allow_test_kdf": True})

    monkeypatch.setattr(AccessControl, "open", classmethod(open_for_tests))


def enrol_people(ac: AccessControl, users=("quinn", "dana", "rita")) -> None:
    """The admin ada, and each of ``users`` created by her and enrolled with their own password."""
    name, _, pw, _ = PEOPLE["ada"]
    ac.init("ada", name, pw, POLICY)
    admin = ac.login("ada", pw)
    for user in users:
        name, role, own, temp = PEOPLE[user]
        ac.create_user(admin, user, name, role, temp)
        ac.change_password(user, temp, own)


@pytest.fixture
def people(ledger_run: Path, clock: Clock):
    """An open AccessControl on ``ledger_run`` with every role enrolled."""
    ac = open_access(ledger_run, clock)
    enrol_people(ac)
    yield ac
    ac.close()


def _excerpt_config(tables: Path, name: str, **kw):
    """A 3-site, 2-round run config (ledger on) on the DAVIS excerpt ``tables`` (the shared
    ``small_davis`` fixture: 24 drugs x 30 targets)."""
    from pharmafl.models.dti import ModelConfig
    from pharmafl.pipeline.config import DataConfig, FederationConfig, LedgerConfig, RunConfig
    from pharmafl.sites.training import TrainConfig

    return RunConfig(
        name=name,
        seed=7,
        data=DataConfig(dataset=str(tables), sites=3, partition="iid"),
        model=ModelConfig(max_len=64, embed_dim=16, kernel_size=4, latent_dim=32),
        train=TrainConfig(batch_size=64),
        federation=FederationConfig(rounds=2, engine="local"),
        ledger=LedgerConfig(enabled=True),
        **kw,
    )


def _run(cfg, run: Path) -> Path:
    from pharmafl.pipeline.engines import run_federated

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PHARMAFL_KEY_PASSPHRASE", PASSPHRASE)
        run_federated(cfg, run)
    return run


@pytest.fixture(scope="session")
def real_run_template(small_davis: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real DP run (3 sites, 2 rounds, ledger on) on 24 drugs x 30 targets of DAVIS."""
    from pharmafl.sites.privacy import PrivacyConfig

    cfg = _excerpt_config(
        small_davis,
        "compliance",
        privacy=PrivacyConfig(mode="local", epsilon=8.0, batch_size=32, chunk_pairs=48, noise_source="seeded"),
    )
    return _run(cfg, tmp_path_factory.mktemp("real") / "run")


@pytest.fixture(scope="session")
def secure_run_template(small_davis: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same run under secure aggregation (no DP): secure_shares, bound_check, null diagnostics."""
    from pharmafl.pipeline.secure_agg.config import SecureAggregationConfig

    cfg = _excerpt_config(small_davis, "compliance-secure", secure_aggregation=SecureAggregationConfig(enabled=True))
    return _run(cfg, tmp_path_factory.mktemp("secure") / "run")


@pytest.fixture
def real_run(real_run_template: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(real_run_template, run)
    return run


@dataclass
class Team:
    """A real run with every role enrolled, and helpers to act as each."""

    run: Path
    ac: AccessControl

    def login(self, user: str):
        return self.ac.login(user, password(user))


@pytest.fixture
def team(ledger_run: Path, clock: Clock):
    """The recorded run with every role enrolled."""
    ac = open_access(ledger_run, clock)
    enrol_people(ac)
    yield Team(ledger_run, ac)
    ac.close()


@pytest.fixture
def real_team(real_run: Path, clock: Clock):
    """A real (trained) run with every role enrolled."""
    ac = open_access(real_run, clock)
    enrol_people(ac)
    yield Team(real_run, ac)
    ac.close()


def entries_of(ac: AccessControl, *types: str) -> list:
    return [e for e in ac.ledger.entries() if not types or e.type in types]
