"""The web explorer (``pharmafl explore``): every page and JSON endpoint, the gate (GET only, Host,
token, CSP), no secret on any page, a tampered ledger's red banner, per-entry checks and proofs,
paging, the static export inside an evidence package and its offline check.

The run is the recorded 3-site DP run (``ledger_run``) with every role enrolled, a report
generated, authored and approved (so the signatures page has content), explored through the
FastAPI test client; ``test_explorer_browser.py`` drives the same pages in Chromium.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from pharmafl.audit.evidence import verify_package
from pharmafl.audit.verify import VerificationError
from pharmafl.compliance.errors import ComplianceError
from pharmafl.compliance.evidence import export_evidence
from pharmafl.compliance.explorer.app import create_app
from pharmafl.compliance.explorer.index import Query
from pharmafl.compliance.explorer.source import open_ledger
from pharmafl.compliance.explorer.views import Explorer
from pharmafl.compliance.report import generate_report
from pharmafl.compliance.signing import sign

from .conftest import REPO_ROOT, enrol_people, open_access, password

TOKEN = "test-token-0123456789"
PAGES = ("/", "/trail", "/trail?type=site_update", "/entry/0", "/privacy", "/lineage", "/signatures", "/alarms")
API = ("/api/overview", "/api/trail", "/api/entry/5", "/api/privacy", "/api/lineage", "/api/signatures", "/api/alarms")


@pytest.fixture(scope="module")
def signed_run(ledger_run_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The recorded run, its users enrolled, report r1 generated, authored and approved."""
    run = tmp_path_factory.mktemp("explorer") / "run"
    shutil.copytree(ledger_run_template, run)
    with open_access(run) as ac:
        enrol_people(ac)
        r1 = generate_report(ac, ac.login("quinn", password("quinn")), run, run / "reports" / "r1")
        sign(ac, ac.login("dana", password("dana")), r1, "authored")
        sign(ac, ac.login("quinn", password("quinn")), r1, "approved")
    return run


@pytest.fixture(scope="module")
def explored(signed_run: Path):
    opened = open_ledger(signed_run)
    yield Explorer(opened)
    opened.close()


@pytest.fixture
def client(explored: Explorer) -> TestClient:
    c = TestClient(create_app(explored, token=TOKEN, hosts={"testserver"}, cookie="c"))
    assert c.get(f"/?token={TOKEN}", follow_redirects=False).status_code == 303
    return c


def test_every_page_and_endpoint_answers_under_a_strict_csp(client: TestClient) -> None:
    for url in PAGES + API:
        r = client.get(url)
        assert r.status_code == 200, (url, r.text[:300])
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["referrer-policy"] == "no-referrer"
    for url in PAGES:
        html = client.get(url).text
        assert "Ledger verified." in html and "<script>" not in html and " on" + "click=" not in html
        assert not re.search(r"(src|href)=\"(https?:)?//", html), f"{url} loads something from another origin"
    assert client.get("/api/overview").json()["verification"]["ok"] is True


def test_the_gate_refuses_other_methods_hosts_and_missing_or_wrong_tokens(explored: Explorer) -> None:
    c = TestClient(create_app(explored, token=TOKEN, hosts={"testserver"}, cookie="c"))
    assert c.get("/").status_code == 403  # no token, no cookie
    assert c.get("/?token=wrong").status_code == 403
    r = c.get(f"/trail?type=clip&token={TOKEN}", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/trail?type=clip"  # the token leaves the URL
    assert "httponly" in r.headers["set-cookie"].lower() and "samesite=strict" in r.headers["set-cookie"].lower()
    assert c.get("/trail").status_code == 200  # the cookie now
    for method in ("post", "put", "delete", "patch"):
        assert getattr(c, method)("/").status_code == 405
    rebound = TestClient(create_app(explored, token=TOKEN, hosts={"127.0.0.1:8000"}, cookie="c"))
    assert rebound.get(f"/?token={TOKEN}").status_code == 400  # DNS rebinding: Host names another site
    assert c.get("/docs").status_code == 404 and c.get("/openapi.json").status_code == 404


def test_no_page_or_endpoint_shows_a_password_hash_or_a_sealed_key(client: TestClient, signed_run: Path) -> None:
    db = sqlite3.connect(signed_run / "ledger.db")
    secrets = [s for row in db.execute("SELECT password, sealed_key FROM compliance_users") for s in row if s]
    db.close()
    needles = set()
    for text in secrets:
        doc = json.loads(text)
        needles |= {v for v in _strings(doc) if len(v) >= 16}  # salts, hashes, ciphertexts, nonces
    assert len(needles) >= 8
    seqs = client.get("/api/trail?limit=500").json()["rows"]
    urls = [*PAGES, *API, *(f"/entry/{r['seq']}" for r in seqs), *(f"/api/entry/{r['seq']}" for r in seqs)]
    for url in urls:
        body = client.get(url).text
        leaked = [n for n in needles if n in body]
        assert not leaked, f"{url} shows a secret of the users table"


def _strings(doc):
    if isinstance(doc, str):
        yield doc
    elif isinstance(doc, dict):
        for k, v in doc.items():
            if k != "public_key":  # a sealed key document names its (public) key beside the secrets
                yield from _strings(v)
    elif isinstance(doc, list):
        for v in doc:
            yield from _strings(v)


def test_an_entry_page_checks_its_own_data_and_proves_inclusion_in_a_cosigned_checkpoint(explored) -> None:
    statements = explored.index.entries(["privacy_spent"])
    data = explored.entry(statements[0].seq)
    assert data["checks"] == {
        "entry_hash": True,
        "chain": True,
        "signature": True,
        "statement": True,
        "inclusion": True,
    }
    proof = data["proof"]
    assert proof["cosigned"] >= proof["quorum"] >= 2 and proof["checkpoint_signature"] and proof["included"]
    assert data["statement"]["site"] in ("site-01", "site-02", "site-03")
    assert data["signer"]["fingerprint"] and data["canonical"].startswith("{")


def test_trail_pages_cover_every_matching_entry_once_and_filters_hold(explored: Explorer) -> None:
    n = explored.index.size
    seen, after = [], None
    while True:
        page = explored.trail(Query(), after=after, limit=7)
        seen += [r["seq"] for r in page["rows"]]
        if page["newer"] is None:
            break
        after = page["newer"]
    assert seen == list(range(n))
    back = explored.trail(Query(), before=n, limit=7)
    assert [r["seq"] for r in back["rows"]] == list(range(n - 7, n)) and back["newer"] is None
    clip = explored.trail(Query(type="clip", site="site-02"), limit=500)
    assert clip["rows"] and {(r["type"], r["site"]) for r in clip["rows"]} == {("clip", "site-02")}
    assert clip["total"] == len(clip["rows"]) == 2  # one per round
    rnd = explored.trail(Query(round=2), limit=500)["rows"]
    assert rnd and all(r["round"] == 2 for r in rnd)
    text = explored.trail(Query(text="Quinn Quality"), limit=500)
    assert text["total"] is None and text["rows"] and all("user" in r["actor"] or r["type"] for r in text["rows"])
    assert any(r["type"] == "e_signature" for r in text["rows"])


def test_signatures_page_shows_each_manifestation_its_record_and_that_it_verifies(client: TestClient) -> None:
    sigs = client.get("/api/signatures").json()["signatures"]
    assert [s["meaning"] for s in sigs] == ["authored", "approved"]
    assert all(s["verified"] and s["record_seq"] is not None and s["key_fingerprint"] for s in sigs)
    html = client.get("/signatures").text
    assert "Approved by Quinn Quality (user:quinn, qa)" in html and "Authored by Dana Scientist" in html
    assert "21 CFR Part 11 matrix" in html


def tampered_copy(run: Path, to: Path) -> tuple[Path, int]:
    """A copy of ``run`` whose third privacy_spent entry claims a budget of 80 (the database owner
    drops the append-only trigger; only verification catches it); returns the copy and that seq."""
    shutil.copytree(run, to)
    with sqlite3.connect(to / "ledger.db") as db:
        victim = db.execute("SELECT seq FROM ledger_entries WHERE type = 'privacy_spent' ORDER BY seq").fetchall()[2][0]
        db.execute("DROP TRIGGER ledger_entries_no_update")
        db.execute(
            "UPDATE ledger_entries SET payload = replace(payload, '\"budget\":8', '\"budget\":80') WHERE seq = ?",
            (victim,),
        )
    return to, victim


def test_a_tampered_ledger_shows_the_red_banner_naming_the_altered_entry(signed_run: Path, tmp_path: Path) -> None:
    run, victim = tampered_copy(signed_run, tmp_path / "run")
    opened = open_ledger(run)
    try:
        explorer = Explorer(opened)
        c = TestClient(create_app(explorer, token=TOKEN, hosts={"testserver"}, cookie="c"))
        html = c.get(f"/?token={TOKEN}").text
        assert "does NOT verify" in html and f"seq {victim}</a>" in html and "Ledger verified." not in html
        assert c.get("/api/overview").json()["verification"]["seq"] == victim
        entry = c.get(f"/api/entry/{victim}").json()
        assert entry["checks"]["entry_hash"] is False and entry["ok"] is False
        assert c.get(f"/api/entry/{victim - 1}").json()["ok"] is True
        rows = c.get("/api/trail?limit=500").json()["rows"]
        assert [r["seq"] for r in rows if not r["verified"]] == list(range(victim, explorer.index.size))
        page = c.get("/trail?limit=500").text
        assert page.count("<tr class=unverified>") == explorer.index.size - victim
    finally:
        opened.close()


def test_bad_input_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ComplianceError, match="not a run directory, an evidence package"):
        open_ledger(tmp_path / "nowhere")
    with pytest.raises(ComplianceError, match="no ledger.db"):
        open_ledger(tmp_path)
    r = subprocess.run(
        [sys.executable, "-m", "pharmafl.pipeline.cli", "explore", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT.parent,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: ")
    assert "Traceback" not in r.stderr


@pytest.fixture(scope="module")
def package(signed_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("pkg") / "run"
    shutil.copytree(signed_run, run)
    with open_access(run) as ac:
        return export_evidence(ac, ac.login("rita", password("rita")), [run / "reports" / "r1"], run.parent / "pkg")


def test_the_evidence_package_carries_the_static_explorer_and_the_verifier_checks_it(package: Path) -> None:
    pages = sorted(p.relative_to(package).as_posix() for p in (package / "explorer").rglob("*.html"))
    assert "explorer/index.html" in pages and "explorer/trail/page-000001.html" in pages
    assert "explorer/entries/000000.html" in pages and "explorer/signatures.html" in pages
    result = verify_package(str(package))
    assert result.files >= len(pages)
    index = (package / "explorer" / "index.html").read_text()
    assert 'href="trail/page-000001.html"' in index and "static/explorer.css" in index and "/static/" not in index
    entry = (package / "explorer" / "entries" / "000003.html").read_text()
    assert 'href="../entries/000002.html"' in entry and 'id="proof-data"' in entry


@pytest.mark.parametrize("attack", ["altered page", "added page", "removed page"])
def test_an_altered_static_page_fails_the_offline_verifier(package: Path, tmp_path: Path, attack: str) -> None:
    pkg = tmp_path / "pkg"
    shutil.copytree(package, pkg)
    page = pkg / "explorer" / "signatures.html"
    if attack == "altered page":
        page.write_text(page.read_text().replace("verifies under the signer", "was forged by the signer"))
    elif attack == "added page":
        (pkg / "explorer" / "extra.html").write_text("<p>all fine</p>")
    else:
        page.unlink()
    _remanifest(pkg)  # the attacker fixes the manifest too: the ledger still says which pages were rendered
    with pytest.raises(VerificationError, match="explorer/: these pages are not the rendering the ledger recorded"):
        verify_package(str(pkg))


def _remanifest(pkg: Path) -> None:
    from pharmafl.audit.canonical import canonical_json
    from pharmafl.compliance.report import file_hashes

    manifest = json.loads((pkg / "MANIFEST.json").read_text())
    manifest["files"] = {k: v for k, v in file_hashes(pkg).items() if k != "MANIFEST.json"}
    (pkg / "MANIFEST.json").write_text(canonical_json(manifest) + "\n")


def test_the_explorer_opens_an_evidence_package(package: Path) -> None:
    opened = open_ledger(package)
    try:
        assert opened.verdict.ok and opened.verdict.line.startswith("OK: evidence package of run")
        explorer = Explorer(opened)
        assert [s["meaning"] for s in explorer.signatures()["signatures"]] == ["authored", "approved"]
        assert explorer.overview()["entries"] == opened.index.size
    finally:
        opened.close()


def test_a_real_trained_run_shows_its_plots_lineage_and_model_check(real_run: Path) -> None:
    opened = open_ledger(real_run)
    try:
        explorer = Explorer(opened)
        c = TestClient(create_app(explorer, token=TOKEN, hosts={"testserver"}, cookie="c"))
        assert c.get(f"/?token={TOKEN}").status_code == 200
        for name in ("privacy_epsilon", "site_validation_ci", "cosine_heatmap", "global_test_ci"):
            r = c.get(f"/plots/{name}.png")
            assert r.status_code == 200 and r.content.startswith(b"\x89PNG"), name
        assert explorer.overview()["model"]["matches"] is True  # model.safetensors is the recorded model
        lineage = c.get("/api/lineage").json()
        assert [r["round"] for r in lineage["lineage"]["rounds"]] == [1, 2] and lineage["next"] is None
        assert all(u["seq"] is not None for r in lineage["lineage"]["rounds"] for u in r["updates"].values())
        html = c.get("/lineage").text
        assert "Final model" in html and "model.safetensors has this SHA-256" in html
        assert 'src="/plots/cosine_heatmap.png"' in c.get("/alarms").text
        assert c.get("/plots/nope.png").status_code == 404
    finally:
        opened.close()
