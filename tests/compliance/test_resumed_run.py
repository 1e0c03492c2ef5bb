"""A resumed run in the report: one run, several sessions (run_started, then run_resumed), sites that timed out.

The ledgers are written with the audit API (no pipeline, no training); the sections are computed
from their entries, as :func:`pharmafl.compliance.report.build_record` does after verifying.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from pypdf import PdfReader

from pharmafl.audit.keys import KeyStore
from pharmafl.audit.ledger import Ledger
from pharmafl.compliance.part11 import alcoa_rows, part11_rows, signer_rows
from pharmafl.compliance.render_html import render_html
from pharmafl.compliance.render_pdf import render_pdf
from pharmafl.compliance.sections import clean, lineage_section, privacy_section, summary_section
from pharmafl.compliance.trail import trail_rows, why

from ..audit.conftest import FAST_SCRYPT, PASSPHRASE
from .conftest import MODEL, RUN_ID, SITES

CHECKPOINT_1 = "d" * 64
CHECKPOINT_3 = "e" * 64


def _round(ledger: Ledger, rnd: int, step: int, checkpoint: str, *, completes: bool = True) -> None:
    ledger.record("server", "round_started", round=rnd, step=step, sites=list(SITES))
    if not completes:
        return
    ledger.record(
        "server",
        "aggregated",
        round=rnd,
        participants=list(SITES),
        aggregate_hash=f"{rnd}" * 64,
        checkpoint_hash=checkpoint,
        strategy="fedavg",
    )
    ledger.record("server", "round_ended", round=rnd, metrics={"global": {"test_mse": 0.4}}, server_state_hash=None)


def _resumed(ledger: Ledger, session: int, **fields) -> None:
    ledger.record(
        "server",
        "run_resumed",
        run_id=RUN_ID,
        session=session,
        engine="local",
        git_commit="a" * 40,
        versions={"pharmafl": "0.1.0"},
        server_state_hash=None,
        **fields,
    )


def write_run(run: Path, *, last_session_ends: bool = True) -> None:
    """Three sessions. 1: round 1 completes, site-02 times out in round 2, the coordinator crashes (no
    run_ended). 2: resumes from round 1, redoes round 2 as round 3, is stopped. 3: resumes from round 3,
    completes round 4 (step 3) and the run, unless ``last_session_ends`` is false (a second crash)."""
    with Ledger.open(run, KeyStore(run / "keys", PASSPHRASE, scrypt_n=FAST_SCRYPT)) as ledger:
        ledger.record(
            "server",
            "run_started",
            run_id=RUN_ID,
            config={"federation": {"rounds": 3}},
            config_hash="c" * 64,
            git_commit="f" * 40,
            versions={"pharmafl": "0.1.0"},
            seed=1,
            engine="local",
            sites=list(SITES),
        )
        _round(ledger, 1, 1, CHECKPOINT_1)
        _round(ledger, 2, 2, "", completes=False)
        ledger.record("server", "site_timed_out", round=2, site="site-02", timeout_s=30, waited_s=30.5)
        _resumed(
            ledger,
            2,
            from_round=1,
            steps_done=1,
            next_round=3,
            interrupted_rounds=[2],
            checkpoint_hash=CHECKPOINT_1,
            previous_status=None,
            reason="coordinator host rebooted",
        )
        _round(ledger, 3, 2, CHECKPOINT_3)
        ledger.record("server", "run_ended", status="stopped: operator request", rounds=2, model_hash="1" * 64)
        _resumed(
            ledger,
            3,
            from_round=3,
            steps_done=2,
            next_round=4,
            interrupted_rounds=[],
            checkpoint_hash=CHECKPOINT_3,
            previous_status="stopped: operator request",
            reason="maintenance over",
        )
        _round(ledger, 4, 3, "f" * 64)
        if last_session_ends:
            model = hashlib.sha256(MODEL).hexdigest()
            ledger.record("server", "run_ended", status="completed", rounds=3, model_hash=model)


def entries_of(run: Path) -> list:
    with Ledger.open(run) as ledger:
        return list(ledger.entries())


@pytest.fixture
def resumed(tmp_path: Path) -> list:
    write_run(tmp_path / "resumed")  # beside ledger_run's tmp_path / "run"
    return entries_of(tmp_path / "resumed")


def record_of(entries: list) -> dict:
    """The report record of ``entries``, built from the same sections as ``build_record``."""
    return clean(
        {
            "meta": {
                "run_id": RUN_ID,
                "generated_at": "2026-12-02T10:00:00.000000Z",
                "generated_by": {"user_id": "quinn", "printed_name": "Quinn Quality", "role": "qa"},
                "filter": {"rounds": [], "sites": [], "types": []},
            },
            "certificate": {"verification": "ok", "tree_size": len(entries), "root_hash": "0" * 64, "checkpoints": []},
            "summary": summary_section(entries),
            "privacy": privacy_section(entries),
            "lineage": lineage_section(entries, None),
            "audit_trail": trail_rows(entries),
            "part11": part11_rows(),
            "signers": signer_rows(),
            "alcoa": alcoa_rows(),
        }
    )


def test_each_session_is_listed_with_where_it_resumed_and_how_it_ended(resumed) -> None:
    summary = summary_section(resumed)
    seqs = [e.seq for e in resumed if e.type in ("run_started", "run_resumed")]
    ts = [e.ts for e in resumed if e.type in ("run_started", "run_resumed")]
    assert summary["sessions"] == [
        {
            "session": 1,
            "started_seq": seqs[0],
            "ts": ts[0],
            "first_round": 1,
            "from_round": None,
            "checkpoint_hash": None,
            "previous_status": None,
            "reason": None,
            "engine": "local",
            "git_commit": "f" * 40,
            "ended_status": None,
        },
        {
            "session": 2,
            "started_seq": seqs[1],
            "ts": ts[1],
            "first_round": 3,
            "from_round": 1,
            "checkpoint_hash": CHECKPOINT_1,
            "previous_status": None,
            "reason": "coordinator host rebooted",
            "engine": "local",
            "git_commit": "a" * 40,
            "ended_status": "stopped: operator request",
        },
        {
            "session": 3,
            "started_seq": seqs[2],
            "ts": ts[2],
            "first_round": 4,
            "from_round": 3,
            "checkpoint_hash": CHECKPOINT_3,
            "previous_status": "stopped: operator request",
            "reason": "maintenance over",
            "engine": "local",
            "git_commit": "a" * 40,
            "ended_status": "completed",
        },
    ]
    assert summary["interrupted_rounds"] == [2]
    assert summary["timed_out"] == [{"round": 2, "site": "site-02", "timeout_s": 30, "waited_s": 30.5}]
    assert (summary["status"], summary["rounds"]) == ("completed", 3)  # the last run_ended's


def test_a_run_whose_last_session_crashed_is_incomplete_not_stopped(tmp_path) -> None:
    write_run(tmp_path / "run", last_session_ends=False)
    summary = summary_section(entries_of(tmp_path / "run"))
    assert summary["sessions"][-1]["ended_status"] is None and summary["sessions"][1]["ended_status"].startswith("stop")
    assert summary["status"] == "no run_ended entry in session 3: run incomplete" and summary["rounds"] is None


def test_a_single_session_run_has_one_session_and_nothing_interrupted(ledger_run) -> None:
    entries = entries_of(ledger_run)
    summary = summary_section(entries)
    started = next(e for e in entries if e.type == "run_started")
    assert [(s["session"], s["started_seq"], s["first_round"], s["ended_status"]) for s in summary["sessions"]] == [
        (1, started.seq, 1, "completed")
    ]
    assert summary["interrupted_rounds"] == [] and summary["timed_out"] == []
    assert (summary["status"], summary["rounds"]) == ("completed", 2)


def test_the_trail_says_what_a_resume_and_a_timeout_mean(resumed) -> None:
    rows = {(r["type"], r["round"]): r for r in trail_rows(resumed) if r["type"] in ("run_resumed", "site_timed_out")}
    resumes = [r["why"] for r in trail_rows(resumed) if r["type"] == "run_resumed"]
    assert resumes == [
        "the coordinator resumes the run (session 2) from round 1; round 2 was interrupted and is redone; "
        "reason: coordinator host rebooted",
        "the coordinator resumes the run (session 3) from round 3; no round was interrupted; reason: maintenance over",
    ]
    timed_out = rows[("site_timed_out", 2)]
    assert timed_out["why"] == "site-02 did not answer round 2 within 30 s" and timed_out["site"] == "site-02"


def test_a_sentence_with_missing_fields_reads_question_marks() -> None:
    assert why("run_resumed", {"session": 2, "interrupted_rounds": [3, 4]}) == (
        "the coordinator resumes the run (session 2) from round ?; rounds 3, 4 were interrupted and are redone"
    )
    assert why("site_timed_out", {}) == "? did not answer round ? within ? s"


def test_html_shows_the_sessions_of_a_resumed_run(resumed, tmp_path) -> None:
    html = render_html(record_of(resumed), "0" * 64, [], {}, tmp_path / "report.html").read_text()
    table = html[html.index("<table id=sessions>") : html.index("</table>", html.index("<table id=sessions>"))]
    assert table.count("<tr>") == 4  # a header and three sessions
    assert "coordinator host rebooted" in table and "stopped: operator request" in table and CHECKPOINT_1 in table
    assert "ended without run_ended (interrupted)" in table
    assert "Rounds interrupted and redone under new numbers: 2." in html
    assert "<table id=timed-out>" in html and "site-02" in html


def test_html_of_a_single_session_run_looks_as_before(ledger_run, tmp_path) -> None:
    record = record_of(entries_of(ledger_run))
    html = render_html(record, "0" * 64, [], {}, tmp_path / "new.html").read_text()
    for key in ("sessions", "interrupted_rounds", "timed_out"):
        del record["summary"][key]
    assert "Sessions" not in html and "id=sessions" not in html
    assert html == render_html(record, "0" * 64, [], {}, tmp_path / "old.html").read_text()


def test_pdf_shows_the_sessions_only_for_a_resumed_run(resumed, ledger_run, tmp_path) -> None:
    def text(entries, name: str) -> str:
        path = render_pdf(record_of(entries), "0" * 64, [], {}, tmp_path / name)
        return " ".join(" ".join(p.extract_text().split()) for p in PdfReader(str(path)).pages)

    many = text(resumed, "resumed.pdf")
    assert "Sessions" in many and "The run was resumed: 3 sessions" in many and "coordinator host rebooted" in many
    assert "Sites that timed out" in many
    one = text(entries_of(ledger_run), "one.pdf")
    assert "Sessions" not in one and "timed out" not in one
