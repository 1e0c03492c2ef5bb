"""The evidence package a regulator verifies offline: ledger export, reports, signatures, manifest.

::

    PKG/MANIFEST.json     canonical {format, run_id, ledger: {entries, root_hash},
                          reports: {"reports/<name>": record hash}, files: {path: sha256}}
    PKG/ledger/           the ledger bundle (`pharmafl ledger export`: entries, keys, checkpoints)
    PKG/head.json         the latest signed checkpoint at export (compare with the one you were sent)
    PKG/reports/<name>/   each report folder as generated and signed (record, PDF, HTML, tables)
    PKG/signatures.json   every e-signature on those reports, with the ledger seq that records it
    PKG/explorer/         the web explorer's pages as a static site (open explorer/index.html; no server)
    PKG/README.txt        how to verify

The explorer's pages are rendered from the verified ledger first and their SHA-256 recorded
(``explorer_rendered``), so the package's ledger vouches for them as it does for the reports.
Then a signed checkpoint is written, so the package's ledger covers every signature. The
export is recorded (``evidence_exported``, with the manifest's SHA-256) after the package is
built; that entry is in the live ledger, not in the package it describes. Verify with
``python -m pharmafl.audit.evidence PKG --trusted-head head.json`` (stdlib + cryptography).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from pharmafl.audit.bundle import export
from pharmafl.audit.canonical import canonical_json
from pharmafl.compliance.access import AccessControl, Session
from pharmafl.compliance.errors import ComplianceError
from pharmafl.compliance.report import file_hashes, load_report
from pharmafl.compliance.signing import known_records

PACKAGE_FORMAT = "pharmafl-evidence-v1"
SIGNATURES_FORMAT = "pharmafl-signatures-v1"
README = """pharmafl evidence package
=========================
Verify it offline with Python 3.11 and the `cryptography` package (no other pharmafl dependency):

    pip install --no-deps pharmafl   # or copy pharmafl/audit/{{__init__,verify,evidence}}.py
    python -m pharmafl.audit.evidence {name} --trusted-head HEAD.json

HEAD.json is the checkpoint the sponsor handed you out of band (`pharmafl ledger head`);
head.json inside this package is only a convenience copy. To browse the run, open
explorer/index.html in a browser (no server, nothing fetched); the verifier checks those pages
against the SHA-256 the ledger recorded for them (explorer_rendered). The verifier checks every file's
SHA-256, the whole ledger (hashes, chain, signatures, checkpoints), that each report's record
is the one the ledger recorded, that each PDF/HTML copy is a recorded rendering showing every
signature, and that each e-signature is valid, recorded, made by a user whose role allowed it,
and bound to the report it is shown with.
"""


def _render_explorer(ac: AccessControl, tmp: Path) -> dict:
    """The explorer's static pages of the ledger as it stands, written to ``tmp/explorer``; returns the
    ``explorer_rendered`` payload (tree size, root and every page's SHA-256, relative to ``explorer/``)."""
    from pharmafl.compliance.explorer.source import open_ledger
    from pharmafl.compliance.explorer.static_site import write_site
    from pharmafl.compliance.explorer.views import Explorer

    ac.ledger.checkpoint()
    export(ac.ledger, tmp / ".ledger-now")  # verifies, and is what the pages are rendered from
    opened = open_ledger(tmp / ".ledger-now")
    try:
        if not opened.verdict.ok:
            raise ComplianceError(f"the ledger does not verify ({opened.verdict.line}); no package is made")
        write_site(Explorer(opened), tmp / "explorer")
        verified = opened.verdict.details
    finally:
        opened.close()
        shutil.rmtree(tmp / ".ledger-now", ignore_errors=True)
    return {
        "tree_size": verified["entries"],
        "root_hash": verified["root_hash"],
        "files": file_hashes(tmp / "explorer"),
    }


def export_evidence(
    ac: AccessControl,
    session: Session,
    reports: list[str | os.PathLike],
    out: str | os.PathLike,
    *,
    explorer: bool = True,
) -> Path:
    """Build the package at ``out`` (new or empty) from the run's ledger and ``reports`` (with the
    explorer's static pages unless ``explorer`` is False)."""
    out = Path(out)
    ac.require(session, "export_evidence", "export an evidence package")
    ac.accounts()  # a package the offline verifier would reject for its users is not made
    if not reports:
        raise ComplianceError("no report given: pass --report DIR (a folder made by `pharmafl report`)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ComplianceError(f"package target {out} exists and is not an empty directory; choose a new --out path")
    known = known_records(ac)
    loaded = []
    for folder in map(Path, reports):
        record, record_hash = load_report(folder)
        if record_hash not in known:
            raise ComplianceError(
                f"{folder}: its report.json (SHA-256 {record_hash[:16]}...) was not generated "
                "from this run's ledger (or was altered); generate it again"
            )
        loaded.append((folder, record, record_hash))
    names = [f.name for f, _, _ in loaded]
    if len(set(names)) != len(names):
        raise ComplianceError(f"two reports share a folder name ({names}); rename one")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        if explorer:
            ac.record(session, [("explorer_rendered", _render_explorer(ac, tmp))])
        checkpoint = ac.ledger.checkpoint()
        export(ac.ledger, tmp / "ledger")
        (tmp / "head.json").write_text(checkpoint.to_json_line() + "\n", encoding="utf-8")
        hashes = {f"reports/{folder.name}": h for folder, _, h in loaded}
        for folder, _, _ in loaded:
            shutil.copytree(folder, tmp / "reports" / folder.name)
        sigs = [
            {"report": f"reports/{folder.name}", "seq": e.seq, **e.data}
            for e in ac.ledger.entries(0, checkpoint.tree_size)
            if e.type == "e_signature"
            for folder, _, h in loaded
            if e.data.get("record_hash") == h
        ]
        (tmp / "signatures.json").write_text(
            canonical_json({"format": SIGNATURES_FORMAT, "signatures": sigs}) + "\n", encoding="utf-8"
        )
        (tmp / "README.txt").write_text(README.format(name=out.name), encoding="utf-8")
        bundle = json.loads((tmp / "ledger" / "manifest.json").read_text())
        manifest = {
            "format": PACKAGE_FORMAT,
            "run_id": loaded[0][1]["meta"]["run_id"],
            "ledger": {"entries": bundle["entries"], "root_hash": bundle["root_hash"]},
            "reports": hashes,
            "files": file_hashes(tmp),
        }
        text = canonical_json(manifest) + "\n"
        (tmp / "MANIFEST.json").write_text(text, encoding="utf-8")
        ac.record(
            session,
            [
                (
                    "evidence_exported",
                    {
                        "manifest_sha256": hashlib.sha256(text.encode()).hexdigest(),
                        "tree_size": bundle["entries"],
                        "reports": hashes,
                        "signatures": len(sigs),
                    },
                )
            ],
        )
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
