"""A resumed run in the verifier: one run_started, several sessions, a crash's unwitnessed checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from pharmafl.audit import dbsource
from pharmafl.audit.verify import VerificationError

from .assets.make_fixtures import LedgerBuilder, write_db


def start(b: LedgerBuilder) -> LedgerBuilder:
    b.append(
        "server",
        "run_started",
        {"config": {"rounds": 3}, "consortium": b.consortium(), "run_id": b.run_id, "sites": list(b.sites)},
    )
    return b


def round_(b: LedgerBuilder, rnd: int, *, cosigners=None, step: int | None = None) -> None:
    b.append("server", "round_started", {"round": rnd, "step": step or rnd, "sites": list(b.sites)})
    for i, site in enumerate(b.sites):
        b.round_of(site, rnd, i)
    b.append("server", "aggregated", {"round": rnd, "participants": list(b.sites), "checkpoint_hash": "c0" * 32})
    b.append("server", "round_ended", {"round": rnd, "step": step or rnd, "server_state_hash": "5e" * 32})
    b.checkpoint(cosigners)


def resumed(b: LedgerBuilder, *, run_id: str | None = None, **extra) -> None:
    b.append("server", "run_resumed", {"run_id": run_id or b.run_id, "session": 2, "from_round": 1, **extra})
    b.checkpoint()


def ended(b: LedgerBuilder, status: str = "completed", rounds: int = 3) -> None:
    b.append("server", "run_ended", {"model_hash": "d0" * 32, "rounds": rounds, "status": status})
    b.checkpoint()


def check(tmp_path: Path, b: LedgerBuilder, **kw):
    db = tmp_path / "ledger.db"
    if not db.exists():
        write_db(db, b.entries, b.checkpoints, b.cosignatures)
    return dbsource.verify_database(db, **kw)


def crashed_in_round_2(b: LedgerBuilder) -> LedgerBuilder:
    """Round 1 witnessed; round 2 completed and checkpointed, the process killed before the witnesses answered."""
    start(b)
    round_(b, 1)
    round_(b, 2, cosigners=())
    return b


def test_a_crashed_session_then_a_resumed_one_verifies(tmp_path: Path) -> None:
    b = crashed_in_round_2(LedgerBuilder())
    resumed(b, interrupted_rounds=[])
    round_(b, 3, step=3)
    ended(b)
    result = check(tmp_path, b)
    assert result.entries == len(b.entries) and result.witnessed == len(b.checkpoints) - 1


def test_an_unwitnessed_checkpoint_with_no_resume_after_it_fails(tmp_path: Path) -> None:
    b = crashed_in_round_2(LedgerBuilder())
    round_(b, 3)  # the coordinator simply went on without its witnesses
    ended(b)
    with pytest.raises(VerificationError, match="is cosigned by 0 pinned sites"):
        check(tmp_path, b)


def test_the_ledger_a_crash_leaves_verifies_only_as_an_open_tail(tmp_path: Path) -> None:
    b = crashed_in_round_2(LedgerBuilder())
    b.append("server", "round_started", {"round": 3, "step": 3, "sites": list(b.sites)})  # then kill -9
    with pytest.raises(VerificationError, match="is cosigned by 0 pinned sites"):
        check(tmp_path / "a", b)
    assert check(tmp_path / "a", b, open_tail=True).entries == len(b.entries)
    mid = start(LedgerBuilder())
    round_(mid, 1)
    mid.append("server", "round_started", {"round": 2, "step": 2, "sites": list(mid.sites)})  # then kill -9
    with pytest.raises(VerificationError, match="lie under no witnessed checkpoint"):
        check(tmp_path / "b", mid)
    assert check(tmp_path / "b", mid, open_tail=True).entries == len(mid.entries)


def test_a_completed_run_is_never_resumed(tmp_path: Path) -> None:
    b = start(LedgerBuilder())
    round_(b, 1)
    ended(b)
    resumed(b)
    with pytest.raises(VerificationError, match="run_resumed after the run completed"):
        check(tmp_path, b)


def test_a_session_ends_once(tmp_path: Path) -> None:
    b = start(LedgerBuilder())
    round_(b, 1)
    ended(b, "stopped: too few sites", rounds=1)
    ended(b)
    with pytest.raises(VerificationError, match="a second run_ended in one session"):
        check(tmp_path, b)


def test_a_stopped_run_resumes_and_its_new_session_is_witnessed_like_the_first(tmp_path: Path) -> None:
    b = start(LedgerBuilder())
    round_(b, 1)
    ended(b, "stopped: too few sites", rounds=1)
    resumed(b)
    good = LedgerBuilder()
    good.__dict__.update({k: (list(v) if isinstance(v, list) else v) for k, v in b.__dict__.items()})
    round_(good, 2)
    ended(good)
    assert check(tmp_path / "good", good).entries == len(good.entries)
    round_(b, 2, cosigners=())  # the resumed session's round, never witnessed
    ended(b)
    with pytest.raises(VerificationError, match="is cosigned by 0 pinned sites"):
        check(tmp_path / "bad", b)


def test_run_resumed_must_name_the_run_and_follow_run_started(tmp_path: Path) -> None:
    b = start(LedgerBuilder())
    round_(b, 1)
    resumed(b, run_id="another-run")
    with pytest.raises(VerificationError, match="run_resumed names another run"):
        check(tmp_path / "a", b)
    early = LedgerBuilder()
    early.register("server")
    early.append("server", "run_resumed", {"run_id": early.run_id})
    with pytest.raises(VerificationError, match="run_resumed before run_started"):
        check(tmp_path / "b", early)
