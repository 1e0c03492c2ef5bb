"""E-signatures: who may sign what, both components each time, bound to the record's hash."""

from __future__ import annotations

import hashlib
import shutil

import pytest

from pharmafl.compliance.errors import AuthenticationError, AuthorityError, ComplianceError
from pharmafl.compliance.report import generate_report, load_report
from pharmafl.compliance.signatures import manifestation, signature_valid
from pharmafl.compliance.signing import sign

from ..audit.conftest import PASSPHRASE
from .conftest import entries_of


@pytest.fixture
def report(team, tmp_path):
    return generate_report(team.ac, team.login("quinn"), team.run, tmp_path / "r1", formats=("pdf", "html"))


def test_qa_approval_is_bound_to_the_record_and_signed_by_her_key(team, report) -> None:
    _, record_hash = load_report(report)
    payload = sign(team.ac, team.login("quinn"), report, "approved")
    entry = entries_of(team.ac, "e_signature")[-1]
    assert entry.actor == "user:quinn" and entry.data == payload
    assert payload["record_hash"] == record_hash and payload["printed_name"] == "Quinn Quality"
    key = team.ac.ledger.registered_keys()["user:quinn"]["public_key"]
    assert signature_valid(payload, key)
    rendered = entries_of(team.ac, "report_rendered")[-1]
    assert rendered.data["signatures"] == [payload["signature"]]
    for name in ("report.pdf", "report.html"):
        assert hashlib.sha256((report / name).read_bytes()).hexdigest() == rendered.data["files"][name]
    assert manifestation(payload).startswith("Approved by Quinn Quality (user:quinn, qa) on ")


def test_signature_cannot_be_moved_to_another_record(team, report) -> None:
    payload = sign(team.ac, team.login("quinn"), report, "reviewed")
    key = team.ac.ledger.registered_keys()["user:quinn"]["public_key"]
    assert not signature_valid({**payload, "record_hash": "0" * 64}, key)
    assert not signature_valid({**payload, "meaning": "approved"}, key)
    assert not signature_valid(payload, team.ac.ledger.registered_keys()["user:rita"]["public_key"])


def test_several_signatures_all_show(team, report) -> None:
    sign(team.ac, team.login("dana"), report, "authored")
    sign(team.ac, team.login("quinn"), report, "reviewed")
    sign(team.ac, team.login("quinn"), report, "approved")
    html = (report / "report.html").read_text()
    for line in (
        "Authored by Dana Scientist (user:dana, data_scientist)",
        "Reviewed by Quinn Quality",
        "Approved by Quinn Quality",
    ):
        assert line in html


def test_regulator_cannot_sign(team, report) -> None:
    before = (report / "report.pdf").read_bytes()
    with pytest.raises(AuthorityError, match="'rita' \\(role regulator\\) may not sign records as 'approved'"):
        sign(team.ac, team.login("rita"), report, "approved")
    refused = entries_of(team.ac, "action_refused")[-1]
    assert refused.actor == "user:rita" and refused.data["action"] == "sign:approved"
    assert not entries_of(team.ac, "e_signature") and (report / "report.pdf").read_bytes() == before


def test_data_scientist_may_author_but_not_approve(team, report) -> None:
    with pytest.raises(AuthorityError, match="only qa may"):
        sign(team.ac, team.login("dana"), report, "approved")
    assert sign(team.ac, team.login("dana"), report, "authored")["role"] == "data_scientist"


def test_sign_needs_the_password_each_time(team, report, monkeypatch, cli_admits_test_kdf) -> None:
    from pharmafl.pipeline.cli import main

    monkeypatch.setenv("PHARMAFL_KEY_PASSPHRASE", PASSPHRASE)
    monkeypatch.setenv("PHARMAFL_PASSWORD", "not-her-password")
    team.ac.close()
    assert main(["sign", str(report), "--user", "quinn", "--meaning", "approved", "--run", str(team.run)]) == 1
    monkeypatch.delenv("PHARMAFL_PASSWORD")  # no password and no terminal: a usage error, recorded as nothing
    assert main(["sign", str(report), "--user", "quinn", "--meaning", "approved", "--run", str(team.run)]) == 2
    ac = team.ac.open(team.run, PASSPHRASE, allow_test_kdf=True)
    try:
        assert entries_of(ac, "login_failed")[-1].data["user_id"] == "quinn"
        assert not entries_of(ac, "e_signature")
    finally:
        ac.close()


def test_wrong_password_never_signs(team, report) -> None:
    with pytest.raises(AuthenticationError):
        sign(team.ac, team.ac.login("quinn", "not-her-password"), report, "approved")
    assert not entries_of(team.ac, "e_signature")


def test_sign_refuses_unknown_record(team, report, tmp_path) -> None:
    forged = tmp_path / "forged"
    shutil.copytree(report, forged)
    text = (forged / "report.json").read_text().replace('"status":"completed"', '"status":"completed!"')
    (forged / "report.json").write_text(text)
    with pytest.raises(ComplianceError, match="is not a record of this run's ledger"):
        sign(team.ac, team.login("quinn"), forged, "approved")
    stray = tmp_path / "notes.txt"
    stray.write_text("hello")
    with pytest.raises(ComplianceError, match="is not a record of this run's ledger"):
        sign(team.ac, team.login("quinn"), stray, "approved")
    with pytest.raises(ComplianceError, match="not a pharmafl report record"):
        sign(team.ac, team.login("quinn"), tmp_path, "approved")
    assert not entries_of(team.ac, "e_signature")


def test_a_user_signs_a_record_once_per_meaning(team, report) -> None:
    sign(team.ac, team.login("quinn"), report, "approved")
    with pytest.raises(ComplianceError, match="already signed this record as 'approved'"):
        sign(team.ac, team.login("quinn"), report, "approved")
    assert len(entries_of(team.ac, "e_signature")) == 1


def test_the_final_model_can_be_approved(team) -> None:
    payload = sign(team.ac, team.login("quinn"), team.run / "model.safetensors", "approved")
    assert payload["record"] == "final model (model.safetensors)"
    assert payload["record_hash"] == entries_of(team.ac, "run_ended")[0].data["model_hash"]


def test_unknown_meaning_is_refused_before_anything(team, report) -> None:
    session = team.login("quinn")
    before = len(team.ac.ledger)
    with pytest.raises(ComplianceError, match="Could not resolve signature meaning 'witnessed'"):
        sign(team.ac, session, report, "witnessed")
    assert len(team.ac.ledger) == before
