"""Evidence packages: exported by a regulator, verified offline, every tampering caught.

The package (``built``) is made once: the recorded DP run (``ledger_run``: site-signed
statements, witnessed checkpoints), report r1 authored by a data scientist and approved by
QA, report r2 unsigned; each test attacks its own copy.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from pharmafl.audit.canonical import canonical_json
from pharmafl.audit.evidence import verify_package
from pharmafl.audit.verify import VerificationError, verify_path
from pharmafl.compliance.access import AccessControl
from pharmafl.compliance.errors import AuthorityError, ComplianceError
from pharmafl.compliance.evidence import export_evidence
from pharmafl.compliance.report import file_hashes, generate_report, load_report
from pharmafl.compliance.signatures import make_signature
from pharmafl.compliance.signing import sign

from .conftest import REPO_ROOT, enrol_people, entries_of, open_access, password


@dataclass
class Built:
    run: Path
    package: Path
    unsigned_pdf: Path  # r1's PDF as generated, before anyone signed
    head: Path


@pytest.fixture(scope="module")
def built(ledger_run_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("evidence")
    run = root / "run"
    shutil.copytree(ledger_run_template, run)
    with open_access(run) as ac:
        enrol_people(ac)
        quinn = ac.login("quinn", password("quinn"))
        r1 = generate_report(ac, quinn, run, run / "reports" / "r1")
        r2 = generate_report(ac, quinn, run, run / "reports" / "r2", formats=("pdf",))
        shutil.copy(r1 / "report.pdf", root / "unsigned.pdf")
        sign(ac, ac.login("dana", password("dana")), r1, "authored")
        sign(ac, ac.login("quinn", password("quinn")), r1, "approved")
        head = root / "head.json"
        head.write_text(ac.ledger.checkpoints()[-1].to_json_line() + "\n")
        package = export_evidence(ac, ac.login("rita", password("rita")), [r1, r2], root / "package")
    return Built(run, package, root / "unsigned.pdf", head)


@pytest.fixture
def pkg(built: Built, tmp_path: Path) -> Path:
    copy = tmp_path / "package"
    shutil.copytree(built.package, copy)
    return copy


def remanifest(pkg: Path) -> None:
    """What a forger does after editing: recompute every SHA-256 in MANIFEST.json."""
    manifest = json.loads((pkg / "MANIFEST.json").read_text())
    manifest["files"] = {
        p.relative_to(pkg).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(pkg.rglob("*"))
        if p.is_file() and p.name != "MANIFEST.json"
    }
    (pkg / "MANIFEST.json").write_text(canonical_json(manifest) + "\n")


def signatures(pkg: Path) -> dict:
    return json.loads((pkg / "signatures.json").read_text())


def write_signatures(pkg: Path, doc: dict) -> None:
    (pkg / "signatures.json").write_text(canonical_json(doc) + "\n")


def fails(pkg: Path, match: str, **kw) -> None:
    with pytest.raises(VerificationError, match=match):
        verify_package(str(pkg), **kw)


def test_package_verifies_offline_with_the_trusted_head(built: Built) -> None:
    line = verify_package(str(built.package), trusted_head=str(built.head)).line()
    assert line.startswith("OK: evidence package of run run: ") and "2 report(s), 2 e-signature(s)" in line
    names = {p.relative_to(built.package).as_posix() for p in built.package.rglob("*") if p.is_file()}
    assert {
        "MANIFEST.json",
        "README.txt",
        "head.json",
        "signatures.json",
        "ledger/entries.jsonl",
        "ledger/keys.json",
        "ledger/checkpoints.jsonl",
        "reports/r1/report.pdf",
        "reports/r1/report.json",
        "reports/r2/report.pdf",
    } <= names
    assert [s["meaning"] for s in signatures(built.package)["signatures"]] == ["authored", "approved"]


def test_the_export_is_recorded_by_the_regulator(built: Built) -> None:
    with open_access(built.run) as ac:
        entry = entries_of(ac, "evidence_exported")[-1]
    manifest = (built.package / "MANIFEST.json").read_bytes()
    assert entry.actor == "user:rita" and entry.data["manifest_sha256"] == hashlib.sha256(manifest).hexdigest()
    assert entry.data["signatures"] == 2 and set(entry.data["reports"]) == {"reports/r1", "reports/r2"}


def test_standalone_module_and_cli_agree(built: Built) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pharmafl.audit.evidence", str(built.package), "--trusted-head", str(built.head)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT.parent,
        timeout=300,
    )
    assert done.returncode == 0 and done.stdout.startswith("OK: evidence package"), done.stdout + done.stderr
    from pharmafl.pipeline.cli import main

    assert main(["evidence", "verify", str(built.package)]) == 0


def test_json_output_of_the_standalone_module_and_the_cli_is_the_same_object(pkg: Path, capsys) -> None:
    from pharmafl.audit.evidence import main as standalone
    from pharmafl.pipeline.cli import main

    assert standalone([str(pkg), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert main(["evidence", "verify", str(pkg), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == doc
    result = verify_package(str(pkg))
    assert doc == result.as_dict() and doc["ok"] is True and doc["reports"] == 2 and doc["signatures"] == 2
    assert doc["ledger"]["entries"] == json.loads((pkg / "ledger" / "manifest.json").read_text())["entries"]
    assert doc["ledger"] == verify_path(str(pkg / "ledger")).as_dict()
    (pkg / "README.txt").write_text("altered")
    assert standalone([str(pkg), "--json"]) == 1
    failed = json.loads(capsys.readouterr().out)
    assert failed == {
        "ok": False,
        "seq": None,
        "reason": "README.txt: SHA-256 differs from MANIFEST.json: the file was altered",
        "unreadable": False,
    }


def test_tampered_report_file_is_rejected(pkg: Path) -> None:
    pdf = pkg / "reports" / "r1" / "report.pdf"
    data = bytearray(pdf.read_bytes())
    data[len(data) // 2] ^= 1
    pdf.write_bytes(bytes(data))
    fails(pkg, "reports/r1/report.pdf: SHA-256 differs from MANIFEST.json")
    remanifest(pkg)
    fails(pkg, "reports/r1/report.pdf: not a rendering of this report recorded in the ledger")


def test_tampered_record_is_rejected_even_with_a_new_manifest(pkg: Path) -> None:
    record = pkg / "reports" / "r2" / "report.json"
    record.write_text(record.read_text().replace('"respected":true', '"respected":false'))
    remanifest(pkg)
    fails(pkg, "reports/r2/report.json: its SHA-256 is not the record hash the manifest names")


def test_tampered_table_is_rejected(pkg: Path) -> None:
    csv = pkg / "reports" / "r1" / "tables" / "privacy.csv"
    csv.write_text(csv.read_text().replace("site-01", "site-09"))
    remanifest(pkg)
    fails(pkg, "tables/privacy.csv: not the file recorded when the report was generated")


def test_signature_copied_onto_another_record_is_rejected(pkg: Path) -> None:
    doc = signatures(pkg)
    approval = doc["signatures"][1]
    doc["signatures"].append({**approval, "report": "reports/r2"})  # shown with r2 as if it approved r2
    write_signatures(pkg, doc)
    remanifest(pkg)
    fails(pkg, "was made on record .* not on reports/r2 .*cannot be copied onto another record")


def test_signature_rebound_to_another_record_hash_is_rejected(pkg: Path) -> None:
    doc = signatures(pkg)
    r2 = json.loads((pkg / "MANIFEST.json").read_text())["reports"]["reports/r2"]
    doc["signatures"].append({**doc["signatures"][1], "report": "reports/r2", "record_hash": r2})
    write_signatures(pkg, doc)
    remanifest(pkg)
    fails(pkg, "not the e_signature entry at seq")


def test_signature_omitted_from_the_package_is_caught(pkg: Path) -> None:
    doc = signatures(pkg)
    doc["signatures"] = doc["signatures"][:1]
    write_signatures(pkg, doc)
    remanifest(pkg)
    fails(pkg, "signatures.json omits the e-signatures recorded at seq")


def test_rendering_missing_a_signature_is_rejected(pkg: Path, built: Built) -> None:
    shutil.copy(built.unsigned_pdf, pkg / "reports" / "r1" / "report.pdf")  # a genuine, older copy
    remanifest(pkg)
    fails(pkg, "does not show 2 of the record's e-signatures;.*11.50")


def test_extra_or_missing_files_are_caught(pkg: Path) -> None:
    (pkg / "reports" / "r1" / "note.txt").write_text("trust me")
    fails(pkg, "files the manifest does not list \\['reports/r1/note.txt'\\]")
    (pkg / "reports" / "r1" / "note.txt").unlink()
    (pkg / "reports" / "r2" / "report.pdf").unlink()
    fails(pkg, "lacks listed ones \\['reports/r2/report.pdf'\\]")


def test_tampered_ledger_in_the_package_names_the_entry(pkg: Path) -> None:
    lines = (pkg / "ledger" / "entries.jsonl").read_text().splitlines(keepends=True)
    seq = next(i for i, line in enumerate(lines) if '"type":"e_signature"' in line)
    lines[seq] = lines[seq].replace('"meaning":"authored"', '"meaning":"approved"')
    (pkg / "ledger" / "entries.jsonl").write_text("".join(lines))
    remanifest(pkg)
    with pytest.raises(VerificationError) as err:
        verify_package(str(pkg))
    assert err.value.seq == seq and "ledger: " in str(err.value)


def test_truncated_package_ledger_is_caught_with_the_trusted_head(built: Built, tmp_path: Path) -> None:
    with open_access(built.run) as ac:  # a later head than the package's ledger holds
        ac.ledger.record("server", "note", text="later")
        later = ac.ledger.checkpoint()
    head = tmp_path / "head.json"
    head.write_text(later.to_json_line() + "\n")
    fails(built.package, "truncated", trusted_head=str(head))


def test_signature_by_a_role_not_allowed_is_caught_offline(ledger_run: Path, tmp_path: Path, monkeypatch) -> None:
    """A regulator's key writes an 'approval' straight into the ledger, around the authority check."""
    with open_access(ledger_run) as ac:
        enrol_people(ac)
        report = generate_report(
            ac, ac.login("quinn", password("quinn")), ledger_run, tmp_path / "r1", formats=("parquet",)
        )  # no human-readable copy to re-render
        rita = ac.login("rita", password("rita"))
        key = ac.keys.get_or_create(rita.actor)
        forged = make_signature(
            key,
            signer=rita.actor,
            printed_name="Rita Regulator",
            role="regulator",
            record="report",
            record_hash=hashlib.sha256((report / "report.json").read_bytes()).hexdigest(),
            meaning="approved",
            signed_at="2030-01-01T00:00:00.000000Z",
        )
        ac.ledger.record(rita.actor, "e_signature", **forged)
        with pytest.raises(ComplianceError, match="users do not check"):  # refused when exported ...
            export_evidence(ac, ac.login("rita", password("rita")), [report], tmp_path / "package")
        monkeypatch.setattr(AccessControl, "accounts", lambda self: None)  # ... unless the exporter skips the replay
        package = export_evidence(ac, ac.login("rita", password("rita")), [report], tmp_path / "package")
    fails(package, "user:rita \\(role 'regulator' at seq \\d+\\) may not sign as 'approved'")


def test_who_may_export(team, tmp_path: Path) -> None:
    report = generate_report(team.ac, team.login("quinn"), team.run, tmp_path / "r1", formats=("html",))
    with pytest.raises(AuthorityError, match="may not export an evidence package"):
        export_evidence(team.ac, team.login("dana"), [report], tmp_path / "p1")
    with pytest.raises(ComplianceError, match="no report given"):
        export_evidence(team.ac, team.login("quinn"), [], tmp_path / "p1")
    assert not (tmp_path / "p1").exists()
    text = (report / "report.json").read_text()
    (report / "report.json").write_text(text.replace('"qa"', '"admin"', 1))
    with pytest.raises(ComplianceError, match="was not generated from this run's ledger"):
        export_evidence(team.ac, team.login("quinn"), [report], tmp_path / "p1")
    assert not (tmp_path / "p1").exists()


def test_not_a_package(tmp_path: Path) -> None:
    with pytest.raises(VerificationError, match="no MANIFEST.json") as err:
        verify_package(str(tmp_path))
    assert err.value.unreadable


@pytest.mark.slow
def test_regulator_machine_without_pharmafl_dependencies(built: Built, tmp_path: Path) -> None:
    """Another machine: a fresh venv with only cryptography (and pyarrow), pharmafl installed --no-deps."""
    import venv

    from ..audit.test_standalone_verifier import SKIP

    source = tmp_path / "src"
    shutil.copytree(REPO_ROOT, source, ignore=SKIP)
    venv.EnvBuilder(with_pip=True).create(tmp_path / "venv")
    python = str(tmp_path / "venv" / "bin" / "python")
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    for args in (["--no-deps", str(source)], ["cryptography==50.0.2"]):
        done = subprocess.run(pip + args, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    probe = subprocess.run(
        [
            python,
            "-c",
            "import importlib.util as u; print([m for m in ('torch', 'sqlalchemy', "
            "'typer', 'fpdf', 'pandas') if u.find_spec(m)])",
        ],
        capture_output=True,
        text=True,
    )
    assert probe.stdout.strip() == "[]"
    ok = subprocess.run(
        [python, "-m", "pharmafl.audit.evidence", str(built.package), "--trusted-head", str(built.head)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert ok.returncode == 0 and ok.stdout.startswith("OK: evidence package"), ok.stdout + ok.stderr
    forged = tmp_path / "forged"
    shutil.copytree(built.package, forged)
    doc = signatures(forged)
    doc["signatures"].append({**doc["signatures"][1], "report": "reports/r2"})
    write_signatures(forged, doc)
    remanifest(forged)
    bad = subprocess.run(
        [python, "-m", "pharmafl.audit.evidence", str(forged)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert bad.returncode == 1 and "cannot be copied onto another record" in bad.stdout


def test_files_outside_the_ledger_and_the_listed_reports_are_rejected(pkg: Path) -> None:
    forged = pkg / "reports" / "r9" / "report.pdf"  # a report the manifest does not list: nothing checks it
    forged.parent.mkdir()
    forged.write_bytes(b"%PDF-1.4 an approval nobody signed")
    remanifest(pkg)
    fails(pkg, "files outside the ledger export and the listed reports \\['reports/r9/report.pdf'\\]")
    shutil.rmtree(forged.parent)
    (pkg / "approved.pdf").write_bytes(b"%PDF-1.4 forged")
    remanifest(pkg)
    fails(pkg, "files outside the ledger export and the listed reports \\['approved.pdf'\\]")


def test_head_json_must_be_a_checkpoint_of_the_packaged_ledger(pkg: Path) -> None:
    head = json.loads((pkg / "head.json").read_text())
    (pkg / "head.json").write_text(canonical_json({**head, "tree_size": head["tree_size"] + 5}) + "\n")
    remanifest(pkg)
    fails(pkg, "head.json is not one of the package ledger's signed checkpoints")


def test_manifest_names_the_run_of_its_reports(pkg: Path) -> None:
    manifest = json.loads((pkg / "MANIFEST.json").read_text())
    (pkg / "MANIFEST.json").write_text(canonical_json({**manifest, "run_id": "another-trial"}) + "\n")
    fails(pkg, "MANIFEST.json names run 'another-trial', but reports/r1 is a report of run 'run'")


def test_malformed_manifest_fails_instead_of_crashing(pkg: Path) -> None:
    manifest = json.loads((pkg / "MANIFEST.json").read_text())
    (pkg / "MANIFEST.json").write_text(canonical_json({**manifest, "files": sorted(manifest["files"])}) + "\n")
    fails(pkg, "MANIFEST.json: files and reports must each map names to SHA-256 hex digests")
    (pkg / "MANIFEST.json").write_text(canonical_json(manifest) + "\n")
    doc = signatures(pkg)
    doc["signatures"][0]["seq"] = [doc["signatures"][0]["seq"]]
    write_signatures(pkg, doc)
    remanifest(pkg)
    fails(pkg, "signatures.json item 0: malformed")


@pytest.mark.parametrize("actor", ["server", "user:quinn"])
def test_rendering_recorded_apart_from_a_signature_is_rejected(
    ledger_run: Path, tmp_path: Path, actor: str, monkeypatch
) -> None:
    """A forged PDF whose hash someone with a ledger key records as a 'rendering' of the signed report."""
    forged = b"%PDF-1.4 other figures under the same signature block"
    with open_access(ledger_run) as ac:
        enrol_people(ac)
        report = generate_report(
            ac, ac.login("quinn", password("quinn")), ledger_run, tmp_path / "r1", formats=("pdf",)
        )
        sign(ac, ac.login("quinn", password("quinn")), report, "approved")
        ac.ledger.record(
            actor,
            "report_rendered",
            record_hash=load_report(report)[1],
            files={"report.pdf": hashlib.sha256(forged).hexdigest()},
            signatures=[e.data["signature"] for e in entries_of(ac, "e_signature")],
        )
        (report / "report.pdf").write_bytes(forged)
        monkeypatch.setattr(AccessControl, "accounts", lambda self: None)  # an exporter that skips the replay
        package = export_evidence(ac, ac.login("rita", password("rita")), [report], tmp_path / "package")
    fails(package, f"report_rendered by '{actor}' does not follow that user's e_signature on the same record")


@pytest.mark.parametrize("actor", ["server", "user:rita"])
def test_report_recorded_by_a_role_that_may_not_generate_is_rejected(
    ledger_run: Path, tmp_path: Path, actor: str, monkeypatch
) -> None:
    """An edited record whose hash a system key or a regulator records as 'generated'."""
    with open_access(ledger_run) as ac:
        enrol_people(ac)
        genuine = generate_report(
            ac, ac.login("quinn", password("quinn")), ledger_run, tmp_path / "r1", formats=("parquet",)
        )
        forged = tmp_path / "r2"
        shutil.copytree(genuine, forged)
        text = (forged / "report.json").read_text().replace('"status":"completed"', '"status":"approved by FDA"')
        (forged / "report.json").write_text(text)
        record, record_hash = load_report(forged)
        ac.login("rita", password("rita"))  # unlocks her key, as a raw ledger write would need
        ac.ledger.record(
            actor,
            "report_generated",
            record_hash=record_hash,
            run_id=record["meta"]["run_id"],
            tree_size=record["certificate"]["tree_size"],
            formats=["parquet"],
            files=file_hashes(forged),
            signatures=[],
        )
        monkeypatch.setattr(AccessControl, "accounts", lambda self: None)  # an exporter that skips the replay
        package = export_evidence(ac, ac.login("rita", password("rita")), [forged], tmp_path / "package")
    fails(package, f"report_generated by '{actor}' \\(.*\\), who may not")


def test_export_refusals_write_nothing(team, tmp_path: Path) -> None:
    quinn = team.login("quinn")
    first = generate_report(team.ac, quinn, team.run, tmp_path / "a" / "r1", formats=("parquet",))
    second = generate_report(team.ac, quinn, team.run, tmp_path / "b" / "r1", formats=("parquet",))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("x")
    before = len(team.ac.ledger)
    with pytest.raises(ComplianceError, match="two reports share a folder name"):
        export_evidence(team.ac, quinn, [first, second], tmp_path / "p1")
    with pytest.raises(ComplianceError, match="package target .*taken exists and is not an empty directory"):
        export_evidence(team.ac, quinn, [first], tmp_path / "taken")
    assert len(team.ac.ledger) == before and not (tmp_path / "p1").exists()
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["keep.txt"]
