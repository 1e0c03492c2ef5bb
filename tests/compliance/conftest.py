"""Fixtures for compliance tests: runs with a ledger, users in every role, a fake clock.

Two kinds of run:

* ``ledger_run``: a recorded 2-round, 3-site run (events only, no training): milliseconds;
  for users, logins and authority checks.
* ``real_run``: a real 3-site, 2-round DP-SGD run on a DAVIS excerpt (once per session,
  seconds), copied per test: for reports and evidence packages; ``secure_run_template`` the
  same under secure aggregation (no DP). The data come from
  ``$PHARMAFL_DATA`` or, as in the Makefile, ``../shared/data`` beside the checkout.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
from pharmafl.audit.listener import LedgerListener
from pharmafl.compliance.access import AccessControl
from pharmafl.compliance.credentials import PasswordPolicy

from ..audit.conftest import FAST_SCRYPT, PASSPHRASE, record_rounds

REPO_ROOT = Path(__file__).resolve().parents[2]
POLICY = PasswordPolicy(min_length=12, max_age_days=90, max_failed_logins=3, scrypt_n=FAST_SCRYPT)
# user id -> (printed name, role, password after enrolment, temporary password)
PEOPLE = {
    "ada": ("Ada Lovelace", "admin", "river-Stone-0001", None),
    "quinn": ("Quinn Quality", "qa", "qa-Secret-00042", "Temporary-Pass-1"),
    "dana": ("Dana Scientist", "data_scientist", "ds-Secret-00042", "Temporary-Pass-2"),
    "rita": ("Rita Regulator", "regulator", "reg-Secret-00042", "Temporary-Pass-3"),
}


def password(user: str) -> str:
    return PEOPLE[user][2]


class Clock:
    """A settable UTC clock for password ageing."""

    def __init__(self) -> None:
        self.now = datetime.now(timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    listener = LedgerListener.for_run(run, PASSPHRASE, scrypt_n=FAST_SCRYPT)
    record_rounds(listener)
    listener.close()
    return run


def open_access(run: Path, clock=None) -> AccessControl:
    kw = {"clock": clock} if clock is not None else {}
    return AccessControl.open(run, PASSPHRASE, scrypt_n=FAST_SCRYPT, **kw)


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
        name=name, seed=7, data=DataConfig(dataset=str(tables), sites=3, partition="iid"),
        model=ModelConfig(max_len=64, embed_dim=16, kernel_size=4, latent_dim=32), train=TrainConfig(batch_size=64),
        federation=FederationConfig(rounds=2, engine="local"), ledger=LedgerConfig(enabled=True), **kw)


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

    cfg = _excerpt_config(small_davis, "compliance", privacy=PrivacyConfig(
        mode="local", epsilon=8.0, batch_size=32, chunk_pairs=48, noise_source="seeded"))
    return _run(cfg, tmp_path_factory.mktemp("real") / "run")


@pytest.fixture(scope="session")
def secure_run_template(small_davis: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same run under secure aggregation (no DP): secure_shares, bound_check, null diagnostics."""
    from pharmafl.pipeline.secure_agg.config import SecureAggregationConfig

    cfg = _excerpt_config(small_davis, "compliance-secure",
                          secure_aggregation=SecureAggregationConfig(enabled=True))
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
def team(real_run: Path, clock: Clock):
    ac = open_access(real_run, clock)
    enrol_people(ac)
    yield Team(real_run, ac)
    ac.close()


def entries_of(ac: AccessControl, *types: str) -> list:
    return [e for e in ac.ledger.entries() if not types or e.type in types]


def event(type_: str, actor: str, **payload) -> SimpleNamespace:
    return SimpleNamespace(type=type_, actor=actor, payload=payload)
