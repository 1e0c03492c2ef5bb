"""Shared fixtures for the ledger tests: key stores, small real ledgers, PostgreSQL schemas."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import pytest

from pharmafl.audit.keys import KeyStore
from pharmafl.audit.ledger import Ledger
from pharmafl.audit.listener import LedgerListener

ASSETS = Path(__file__).resolve().parent / "assets"
REPO_ROOT = Path(__file__).resolve().parents[2]
PASSPHRASE = "correct horse battery staple"
FAST_SCRYPT = 2**14  # the floor the key store accepts; production default is 2**17
SITES = ("site-01", "site-02", "site-03")


@pytest.fixture
def keystore(tmp_path: Path) -> KeyStore:
    return KeyStore(tmp_path / "keys", PASSPHRASE, scrypt_n=FAST_SCRYPT)


def event(type_: str, actor: str, **payload) -> SimpleNamespace:
    """A pipeline event as the listener sees it (duck-typed: .type, .actor, .payload)."""
    return SimpleNamespace(type=type_, actor=actor, payload=payload)


def record_rounds(listener: LedgerListener, rounds: int = 2, sites: tuple[str, ...] = SITES) -> None:
    """Feed a small but complete federated run into ``listener``."""
    listener.on_event(
        event(
            "run_started",
            "server",
            run_id="t",
            config={"rounds": rounds},
            config_hash="c" * 64,
            git_commit="f" * 40,
            versions={"pharmafl": "0.1.0"},
            seed=1,
            sites=list(sites),
            manifests={s: "e" * 64 for s in sites},
            privacy=None,
        )
    )
    for rnd in range(1, rounds + 1):
        listener.on_event(event("round_started", "server", round=rnd, sites=list(sites)))
        for site in sites:
            listener.on_event(
                event(
                    "site_update",
                    site,
                    round=rnd,
                    update_hash="a" * 64,
                    num_examples=100,
                    update_norm=1.25,
                    metrics={"loss": 0.5},
                )
            )
            listener.on_event(
                event(
                    "privacy_spent",
                    site,
                    round=rnd,
                    epsilon_round=0.5,
                    epsilon_total=0.5 * rnd,
                    delta=1e-5,
                    accountant="rdp",
                    noise_multiplier=1.1,
                    sample_rate=0.01,
                    steps=10,
                    privacy_unit="sample",
                )
            )
        listener.on_event(
            event(
                "aggregated",
                "server",
                round=rnd,
                participants=list(sites),
                weights={s: 1 / len(sites) for s in sites},
                aggregate_hash="b" * 64,
                checkpoint_hash="d" * 64,
                strategy="fedavg",
            )
        )
        listener.on_event(event("round_ended", "server", round=rnd, metrics={"auc": 0.8}))
    listener.on_event(event("run_ended", "server", status="completed", rounds=rounds, model_hash="9" * 64, metrics={}))


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run directory holding a recorded 2-round, 3-site run (ledger.db, keys/)."""
    run = tmp_path / "run"
    listener = LedgerListener.for_run(run, PASSPHRASE, scrypt_n=FAST_SCRYPT)
    record_rounds(listener)
    listener.close()
    return run


@pytest.fixture
def ledger(tmp_path: Path, keystore: KeyStore):
    with Ledger.open(tmp_path / "ledger.db", keystore) as opened:
        yield opened


@pytest.fixture
def pg_url() -> str:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    base = os.environ.get("PHARMAFL_TEST_PG_URL")
    if not base:
        if os.environ.get("PHARMAFL_REQUIRE_PG") == "1":
            pytest.fail(
                "PHARMAFL_REQUIRE_PG=1 but PHARMAFL_TEST_PG_URL is unset; run .ci/start-postgres.sh "
                "and export the URL it prints"
            )
        pytest.skip("PostgreSQL tests need PHARMAFL_TEST_PG_URL (e.g. from .ci/start-postgres.sh)")
    import sqlalchemy

    schema = f"pharmafl_t_{uuid.uuid4().hex[:12]}"
    engine = sqlalchemy.create_engine(base)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    except sqlalchemy.exc.OperationalError as err:
        engine.dispose()
        pytest.fail(f"cannot reach PostgreSQL at {base}: {err.orig}; start it with .ci/start-postgres.sh")
    sep = "&" if "?" in base else "?"
    yield f"{base}{sep}options={quote(f'-csearch_path={schema}', safe='')}"
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    engine.dispose()
