"""Reports from a real DP run: sections, formats, the PDF's text, refusals."""

from __future__ import annotations

import hashlib
import json
import sqlite3

import pandas as pd
import pytest
from pypdf import PdfReader

from pharmafl.audit.keys import KeyStore
from pharmafl.audit.ledger import Ledger
from pharmafl.audit.records import asserted
from pharmafl.audit.verify import verify_path
from pharmafl.compliance.errors import AuthorityError, ComplianceError
from pharmafl.compliance.report import FORMATS, LedgerDoesNotVerify, generate_report, load_report, parse_formats
from pharmafl.compliance.signing import sign
from pharmafl.compliance.trail import TrailFilter, trail_rows

from ..audit.conftest import FAST_SCRYPT, PASSPHRASE
from .conftest import entries_of, statement

SECTIONS = (
    "1. Verification certificate",
    "2. Run summary",
    "3. Privacy statement",
    "4. Model lineage",
    "5. Audit trail",
    "6. 21 CFR Part 11 matrix",
)


def pdf_pages(path) -> list[str]:
    return [" ".join(page.extract_text().split()) for page in PdfReader(str(path)).pages]


def test_report_in_every_format_is_recorded_with_its_hashes(team, tmp_path) -> None:
    out = generate_report(team.ac, team.login("quinn"), team.run, tmp_path / "r1")
    record, record_hash = load_report(out)
    entry = entries_of(team.ac, "report_generated")[-1]
    assert entry.actor == "user:quinn" and entry.data["record_hash"] == record_hash
    assert entry.data["formats"] == list(FORMATS) and entry.data["tree_size"] == record["certificate"]["tree_size"]
    for name, digest in entry.data["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest, name
    assert {
        "report.json",
        "report.pdf",
        "report.html",
        "tables/audit_trail.parquet",
        "tables/privacy.csv",
        "plots/privacy_epsilon.png",
        "plots/cosine_heatmap.png",
    } <= set(entry.data["files"])
    assert record["meta"]["generated_by"] == {"user_id": "quinn", "printed_name": "Quinn Quality", "role": "qa"}


def test_pdf_text_holds_sections_signature_and_hash(team, tmp_path) -> None:
    out = generate_report(team.ac, team.login("quinn"), team.run, tmp_path / "r1")
    _, record_hash = load_report(out)
    pages = pdf_pages(out / "report.pdf")
    text = " ".join(pages)
    assert "NOT SIGNED" in pages[0]
    positions = [text.index(s) for s in SECTIONS]
    assert positions == sorted(positions)
    for i, page in enumerate(pages, 1):
        assert f"Record SHA-256 {record_hash}" in page and f"page {i} of {len(pages)}" in page
    assert "ε spent" in text and "respected" in text and "Ada Lovelace" not in pages[0]
    sign(team.ac, team.login("quinn"), out, "approved")
    signed = pdf_pages(out / "report.pdf")
    assert "NOT SIGNED" not in signed[0]
    assert "Approved by Quinn Quality (user:quinn, qa) on 20" in signed[0] and "UTC" in signed[0]
    assert all(f"Record SHA-256 {record_hash}" in p for p in signed)  # the record, hence its hash, is unchanged
    html = (out / "report.html").read_text()
    assert "Approved by Quinn Quality (user:quinn, qa)" in html and record_hash in html


def test_privacy_statement_matches_the_ledger(team, tmp_path) -> None:
    out = generate_report(team.ac, team.login("quinn"), team.run, tmp_path / "r1", formats=("parquet",))
    record, _ = load_report(out)
    privacy = record["privacy"]
    spent = [asserted(e) for e in entries_of(team.ac, "privacy_spent")]  # (site, what the site signed)
    assert privacy["enabled"] and privacy["unit"] == "pair" and "measurement" in privacy["protects"]
    assert [s["party"] for s in privacy["sites"]] == ["site-01", "site-02", "site-03"]
    assert all(e.actor == "server" and e.data["statement"]["site"] for e in entries_of(team.ac, "privacy_spent"))
    for site in privacy["sites"]:
        mine = [d for party, d in spent if party == site["party"]]
        assert site["epsilon_by_round"] == [[d["round"], d["epsilon_round"], d["epsilon_total"]] for d in mine]
        assert site["delta"] == mine[-1]["delta"] and site["accountant"] == "prv" and site["budget"] == 8
        assert site["respected"] is (max(d["epsilon_total"] for d in mine) <= 8)
    table = pd.read_parquet(out / "tables" / "privacy.parquet")
    assert len(table) == len(spent) and set(table.party) == {"site-01", "site-02", "site-03"}
    assert not (out / "report.pdf").exists()


def test_lineage_links_manifests_updates_aggregates_and_the_model(team, tmp_path) -> None:
    out = generate_report(team.ac, team.login("dana"), team.run, tmp_path / "r1", formats=("html",))
    lineage = load_report(out)[0]["lineage"]
    cards = entries_of(team.ac, "run_started")[0].data["consortium"]["cards"]
    assert lineage["manifests"] == {site: card["manifest_sha256"] for site, card in cards.items()}  # site-signed
    updates = {(d["round"], site): d["update_hash"] for site, d in map(asserted, entries_of(team.ac, "site_update"))}
    assert {(r["round"], s): u["update_hash"] for r in lineage["rounds"] for s, u in r["updates"].items()} == updates
    assert [r["aggregate_hash"] for r in lineage["rounds"]] == [
        e.data["aggregate_hash"] for e in entries_of(team.ac, "aggregated")
    ]
    assert lineage["model_file_matches"] is True
    assert lineage["model_hash"] == hashlib.sha256((team.run / "model.safetensors").read_bytes()).hexdigest()


def test_audit_trail_filters(team, tmp_path) -> None:
    keep = TrailFilter(rounds=(2,), sites=("site-01",))
    out = generate_report(team.ac, team.login("quinn"), team.run, tmp_path / "r1", formats=("parquet",), keep=keep)
    trail = pd.read_parquet(out / "tables" / "audit_trail.parquet")
    assert set(trail["round"]) == {2} and set(trail["site"]) == {"site-01"}
    assert sorted(trail["type"]) == ["clip", "privacy_spent", "site_update"]
    only = generate_report(
        team.ac,
        team.login("quinn"),
        team.run,
        tmp_path / "r2",
        formats=("parquet",),
        keep=TrailFilter(types=("user_login",)),
    )
    rows = load_report(only)[0]["audit_trail"]
    assert rows and {r["type"] for r in rows} == {"user_login"} and rows[0]["why"].startswith("the user authenticated")


def test_full_trail_lists_every_entry_in_order(team, tmp_path) -> None:
    out = generate_report(team.ac, team.login("quinn"), team.run, tmp_path / "r1", formats=("parquet",))
    record = load_report(out)[0]
    assert [r["seq"] for r in record["audit_trail"]] == list(range(record["certificate"]["tree_size"]))


def test_any_event_type_renders(ledger_run) -> None:
    shares = statement("site-01", "secure_shares", 3, {"commitment": "c" * 64, "num_examples": 5})
    with Ledger.open(ledger_run, KeyStore(ledger_run / "keys", PASSPHRASE, scrypt_n=FAST_SCRYPT)) as ledger:
        ledger.record("server", "quantum_audit", round=3, site="site-02", shares=[1, 2, 3], digest="f" * 64)
        ledger.record("server", "secure_shares", statement=shares.statement)
        rows = trail_rows(ledger.entries())
    row = rows[-2]
    assert (row["type"], row["round"], row["site"], row["signed_by"]) == ("quantum_audit", 3, "site-02", None)
    assert row["what"] == "digest=ffffffffffff…, round=3, shares=[1, 2, 3], site=site-02"
    assert row["why"] == "quantum_audit recorded by its actor"
    last = rows[-1]  # what site-01 signed, shown under site-01 though the coordinator wrote the entry
    assert last["why"].startswith("the site's secret shares for round 3")
    assert (last["actor"], last["signed_by"], last["site"], last["round"]) == ("server", "site-01", "site-01", 3)
    assert last["what"] == "commitment=cccccccccccc…, num_examples=5, round=3"


def test_lineage_under_secure_aggregation_uses_the_commitments() -> None:
    from types import SimpleNamespace

    from pharmafl.compliance.sections import lineage_section

    def entry(type_, actor, **data):
        return SimpleNamespace(type=type_, actor=actor, data=data)

    entries = [
        entry("run_started", "server", manifests={"site-01": "m" * 64}),
        entry("secure_shares", "site-01", round=1, commitment="c" * 64, num_examples=5),
        entry("aggregated", "server", round=1, aggregate_hash="a" * 64, participants=["site-01"]),
        entry("run_ended", "server", model_hash="f" * 64),
    ]
    lineage = lineage_section(entries, None)
    assert lineage["rounds"][0]["updates"]["site-01"]["update_hash"] == "c" * 64
    assert lineage["rounds"][0]["aggregate_hash"] == "a" * 64 and lineage["model_file_matches"] is None


def test_tampered_ledger_refuses_report(team, tmp_path) -> None:
    victim = entries_of(team.ac, "privacy_spent")[1]
    db = sqlite3.connect(team.run / "ledger.db")
    db.execute("DROP TRIGGER ledger_entries_no_update")  # the database owner can; the verifier still catches it
    db.execute(
        "UPDATE ledger_entries SET payload = replace(payload, '\"budget\":8', '\"budget\":80') WHERE seq = ?",
        (victim.seq,),
    )
    db.commit()
    db.close()
    with pytest.raises(LedgerDoesNotVerify, match=f"does not verify \\(first bad entry: seq {victim.seq}\\)") as err:
        generate_report(team.ac, team.login("quinn"), team.run, tmp_path / "r1")
    assert err.value.exit_code == 1  # verification failed: a refusal, not bad input
    assert not (tmp_path / "r1").exists() and not entries_of(team.ac, "report_generated")
    assert not list(tmp_path.glob(".r1*"))


def test_the_certificate_is_the_verifiers_result_object(team, tmp_path) -> None:
    session = team.login("quinn")  # a recorded login: the ledger as the report will find it
    verified = verify_path(str(team.run / "ledger.db"))
    seen: list[tuple[int, int | None]] = []
    out = generate_report(team.ac, session, team.run, tmp_path / "r1", on_progress=lambda *done: seen.append(done))
    certificate = load_report(out)[0]["certificate"]
    assert certificate["verification"] == verified.line() and certificate["root_hash"] == verified.root_hash
    assert certificate["tree_size"] == verified.entries and seen[-1] == (verified.entries, verified.entries)


def test_an_unreadable_ledger_is_bad_input_not_a_refusal(team, tmp_path) -> None:
    (team.run / "ledger.db").write_bytes(b"not a database")
    with pytest.raises(ComplianceError, match="cannot report on") as err:
        generate_report(team.ac, team.login("quinn"), team.run, tmp_path / "r1")
    assert err.value.exit_code == 2 and not isinstance(err.value, LedgerDoesNotVerify)


@pytest.mark.parametrize("user", ["rita", "ada"])
def test_regulator_and_admin_cannot_generate_reports(team, tmp_path, user) -> None:
    with pytest.raises(AuthorityError, match="may not generate a report"):
        generate_report(team.ac, team.login(user), team.run, tmp_path / "r1")
    assert not (tmp_path / "r1").exists() and entries_of(team.ac, "action_refused")[-1].actor == f"user:{user}"


def test_report_never_overwrites(team, tmp_path) -> None:
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "keep.txt").write_text("x")
    with pytest.raises(ComplianceError, match="choose a new --out path"):
        generate_report(team.ac, team.login("quinn"), team.run, tmp_path / "r1")
    assert [p.name for p in (tmp_path / "r1").iterdir()] == ["keep.txt"]


def test_format_names_are_checked() -> None:
    assert parse_formats("all") == FORMATS and parse_formats("pdf,parquet") == ("pdf", "parquet")
    with pytest.raises(ComplianceError, match="Could not resolve format 'docx' among choices"):
        parse_formats("pdf,docx")


def test_the_record_is_canonical_json(team, tmp_path) -> None:
    from pharmafl.audit.canonical import canonical_json

    out = generate_report(team.ac, team.login("quinn"), team.run, tmp_path / "r1", formats=("html",))
    raw = (out / "report.json").read_text()
    assert raw == canonical_json(json.loads(raw)) + "\n"


def test_every_pdf_page_renders_with_content(team, tmp_path) -> None:
    """What a person sees: each page rasterises (pdfium) to an A4 image with ink on it."""
    import numpy as np
    import pypdfium2 as pdfium

    out = generate_report(team.ac, team.login("quinn"), team.run, tmp_path / "r1", formats=("pdf",))
    doc = pdfium.PdfDocument(str(out / "report.pdf"))
    try:
        assert len(doc) >= 5
        for i in range(len(doc)):
            image = np.asarray(doc[i].render(scale=0.5).to_pil().convert("L"))
            height, width = image.shape
            assert abs(height / width - 297 / 210) < 0.01, i
            assert (image < 200).mean() > 0.01, f"page {i + 1} is blank"
    finally:
        doc.close()


def test_a_run_without_privacy_says_so() -> None:
    from pharmafl.compliance.sections import privacy_section

    statement = privacy_section([])
    assert statement == {"enabled": False, "sites": [], "statement": statement["statement"]}
    assert "without differential privacy" in statement["statement"]


def test_budget_overrun_is_reported_not_hidden() -> None:
    from types import SimpleNamespace

    from pharmafl.compliance.sections import privacy_section

    spent = [
        SimpleNamespace(
            type="privacy_spent",
            actor="site-01",
            data={
                "round": r,
                "epsilon_round": 3.0,
                "epsilon_total": 3.0 * r,
                "budget": 8,
                "delta": 1e-5,
                "accountant": "rdp",
                "privacy_unit": "pair",
            },
        )
        for r in (1, 2, 3)
    ]
    privacy = privacy_section(spent)
    assert privacy["respected"] is False and privacy["sites"][0]["epsilon_total"] == 9.0
    assert "WARNING: at least one party exceeded its ε budget" in privacy["statement"]


def test_lineage_under_secure_aggregation_keeps_commitments_and_the_secure_sum() -> None:
    """The real order: a site's site_update (the envelope's hash) comes before its secure_shares."""
    from types import SimpleNamespace

    from pharmafl.compliance.sections import lineage_section

    def entry(type_, actor, **data):
        return SimpleNamespace(type=type_, actor=actor, data=data)

    entries = [
        entry("run_started", "server", manifests={"site-01": "m" * 64}),
        entry("site_update", "site-01", round=1, update_hash="e" * 64, num_examples=5, accepted=True),
        entry(
            "secure_shares",
            "site-01",
            round=1,
            commitment="c" * 64,
            envelope_hash="e" * 64,
            num_examples=5,
            share_hashes={"server": "1" * 64, "helper1": "2" * 64},
        ),
        entry("bound_check", "server", round=1, site="site-01", passed=True),
        entry(
            "aggregated",
            "server",
            round=1,
            aggregate_hash="a" * 64,
            participants=["site-01"],
            secure={"parties": ["server", "helper1"], "sum_hash": "5" * 64, "excluded": {}, "seconds": {"sum": 0.1}},
        ),
        entry("round_ended", "server", round=1, metrics={}, diagnostics=None),
        entry("run_ended", "server", model_hash="f" * 64),
    ]
    lineage = lineage_section(entries, None)
    update = lineage["rounds"][0]["updates"]["site-01"]
    assert update["update_hash"] == "e" * 64 and update["commitment"] == "c" * 64
    assert lineage["rounds"][0]["secure"] == {"parties": ["server", "helper1"], "sum_hash": "5" * 64, "excluded": {}}


def test_report_of_a_secure_run(secure_run_template, tmp_path, clock) -> None:
    """Secure aggregation: null diagnostics, commitments and sum hashes in every copy, a package that verifies."""
    import shutil

    from pharmafl.audit.evidence import verify_package
    from pharmafl.compliance.evidence import export_evidence

    from .conftest import enrol_people, open_access, password

    run = tmp_path / "run"
    shutil.copytree(secure_run_template, run)
    with open_access(run, clock) as ac:
        enrol_people(ac)
        out = generate_report(ac, ac.login("quinn", password("quinn")), run, tmp_path / "r1")
        sign(ac, ac.login("quinn", password("quinn")), out, "approved")
        shares = [asserted(e) for e in entries_of(ac, "secure_shares")]  # (site, what it signed)
        sums = [e.data["secure"]["sum_hash"] for e in entries_of(ac, "aggregated")]
        assert len(shares) == 6 and len(sums) == 2
        assert all(e.data["diagnostics"] is None for e in entries_of(ac, "round_ended"))
        package = export_evidence(ac, ac.login("rita", password("rita")), [out], tmp_path / "package")
    record = load_report(out)[0]
    assert record["summary"]["cosine_to_mean_by_round"] == [] and record["summary"]["cosine_last_round"] is None
    by_round = {r["round"]: r for r in record["lineage"]["rounds"]}
    for site, d in shares:
        assert by_round[d["round"]]["updates"][site]["commitment"] == d["commitment"]
    assert [by_round[r]["secure"]["sum_hash"] for r in (1, 2)] == sums
    trail = {r["type"]: r for r in record["audit_trail"]}
    assert trail["bound_check"]["site"] and trail["secure_shares"]["site"].startswith("site-")
    text = " ".join(pdf_pages(out / "report.pdf"))
    html = (out / "report.html").read_text()
    lineage = pd.read_parquet(out / "tables" / "lineage.parquet")
    for digest in [*sums, *(d["commitment"] for _, d in shares)]:
        assert digest in text and digest in html and digest in set(lineage.sha256)
    assert verify_package(str(package)).line().startswith("OK: ")


def test_report_of_a_real_run(real_team, tmp_path) -> None:
    """A trained run: every site figure is the site's signed statement; the model file matches."""
    out = generate_report(real_team.ac, real_team.login("quinn"), real_team.run, tmp_path / "r1", formats=("parquet",))
    record = load_report(out)[0]
    spent = [asserted(e) for e in entries_of(real_team.ac, "privacy_spent") if "statement" in e.data]
    assert spent and {s["party"] for s in record["privacy"]["sites"]} >= {site for site, _ in spent}
    assert record["lineage"]["model_file_matches"] is True
    rows = [r for r in record["audit_trail"] if r["type"] == "site_update"]
    assert rows and all(r["actor"] == "server" and r["signed_by"] == r["site"] for r in rows)
    assert [r["what"] for r in record["signers"]][0].startswith("Site statements")
