"""The pipeline hook: events in, signed entries and checkpoints out."""

from __future__ import annotations

from pathlib import Path

import pytest

from pharmafl.audit.errors import LedgerError
from pharmafl.audit.keys import KeyStore
from pharmafl.audit.ledger import Ledger
from pharmafl.audit.listener import LedgerListener
from pharmafl.audit.verify import verify_path
from pharmafl.pipeline.events import EventBus, Listener

from .conftest import FAST_SCRYPT, PASSPHRASE, event


def test_is_a_pipeline_listener(ledger: Ledger) -> None:
    assert isinstance(LedgerListener(ledger), Listener)


def test_events_from_the_bus_become_signed_entries_with_checkpoints(tmp_path: Path) -> None:
    listener = LedgerListener.for_run(tmp_path / "run", PASSPHRASE, scrypt_n=FAST_SCRYPT)
    bus = EventBus([listener])
    bus.emit("run_started", "server", run_id="r", config={}, config_hash="c" * 64, git_commit="g" * 40,
             versions={}, seed=3, sites=["site-07"], manifests={"site-07": "m" * 64}, privacy=None)
    bus.emit("round_started", "server", round=1, sites=["site-07"])
    bus.emit("clip", "site-07", round=1, clip_norm=1.0, clipped=3, total=10, max_norm=2.5, mean_norm=0.5)
    bus.emit("site_failed", "server", round=1, site="site-07", error="timeout")
    bus.emit("round_ended", "server", round=1, metrics={})
    bus.emit("run_ended", "server", status="stopped", rounds=1, model_hash="h" * 64, metrics={})
    bus.close()
    assert listener.closed
    with Ledger.open(tmp_path / "run" / "ledger.db") as ledger:
        entries = list(ledger.entries())
        cps = ledger.checkpoints()
    assert [(e.actor, e.type) for e in entries] == [
        ("server", "actor_key"), ("server", "run_started"), ("server", "round_started"),
        ("server", "actor_key"), ("site-07", "clip"), ("server", "site_failed"), ("server", "round_ended"),
        ("server", "run_ended")]
    assert entries[3].data["actor"] == "site-07"  # registered just before its first entry
    assert entries[4].data == {"clip_norm": 1, "clipped": 3, "max_norm": 2.5, "mean_norm": 0.5, "round": 1,
                               "total": 10}
    assert [c.tree_size for c in cps] == [7, 8]  # after round_ended and after run_ended
    assert all(c.signer == "server" for c in cps)
    assert (tmp_path / "run" / "keys").is_dir()
    assert verify_path(str(tmp_path / "run")) == f"OK: 8 entries, 2 checkpoints, head {cps[-1].root_hash}"


def test_reopening_a_run_continues_the_same_ledger(run_dir: Path) -> None:
    listener = LedgerListener.for_run(run_dir, PASSPHRASE, scrypt_n=FAST_SCRYPT)
    listener.on_event(event("alarm", "server", round=3, kind="late", site=None, message="resumed"))
    listener.close()
    assert verify_path(str(run_dir)).startswith("OK: 25 entries, 3 checkpoints")


def test_event_after_close_and_bad_payload_are_loud(ledger: Ledger) -> None:
    listener = LedgerListener(ledger)
    with pytest.raises(LedgerError, match=r"payload of 'aggregated' by 'server'\['weights'\]"):
        listener.on_event(event("aggregated", "server", weights={1: 0.5}))
    listener.close()
    listener.close()  # idempotent
    with pytest.raises(LedgerError, match="after the ledger listener was closed"):
        listener.on_event(event("alarm", "server"))


def test_read_only_ledger_cannot_back_a_listener(run_dir: Path) -> None:
    with Ledger.open(run_dir / "ledger.db") as read_only, pytest.raises(LedgerError, match="read-only"):
        LedgerListener(read_only)


def test_wrong_passphrase_for_an_existing_run(run_dir: Path) -> None:
    listener = LedgerListener.for_run(run_dir, "wrong passphrase", scrypt_n=FAST_SCRYPT)
    with pytest.raises(LedgerError, match="wrong passphrase"):
        listener.on_event(event("alarm", "server"))
    listener.close()
    assert KeyStore(run_dir / "keys", PASSPHRASE).actors() == ["server", "site-01", "site-02", "site-03"]
