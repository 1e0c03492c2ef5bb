"""``pharmafl report``: a Part 11-style report of a run, only from a ledger that verifies.

Steps (each a line)::

    verify the ledger (else refuse, naming the first bad entry), replay its users
    build the record        report.json = canonical JSON of every section (what is signed)
    draw the plots          plots/*.png from the record's data
    render the copies       report.pdf, report.html (with the signatures on the record so far)
    write the tables        tables/*.parquet and *.csv, for machines
    record                  a ``report_generated`` entry: record hash and every file's SHA-256

Everything is written into a hidden sibling of ``--out`` and renamed into place after the
ledger entry is committed, so a refusal or failure leaves nothing behind.
``rerender`` redraws the human-readable copies of an existing report with its signatures
(used at signing).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from pharmafl.audit.canonical import canonical_json
from pharmafl.audit.records import format_ts
from pharmafl.audit.storage import resolve_target
from pharmafl.compliance.access import AccessControl, Session, ledger_target
from pharmafl.compliance.errors import ComplianceError
from pharmafl.compliance.part11 import alcoa_rows, part11_rows, signer_rows
from pharmafl.compliance.plots import draw_plots
from pharmafl.compliance.render_html import render_html
from pharmafl.compliance.render_pdf import render_pdf
from pharmafl.compliance.sections import clean, lineage_section, privacy_section, summary_section
from pharmafl.compliance.trail import TrailFilter, trail_rows
from pharmafl.errors import RefusedError

if TYPE_CHECKING:
    from pharmafl.audit.verify import Result

REPORT_FORMAT = "pharmafl-report-v1"
FORMATS = ("pdf", "html", "parquet")
RECORD = "report.json"


class LedgerDoesNotVerify(ComplianceError, RefusedError):
    """The run's ledger does not verify, so no report is made (exit 1); the message names the first bad entry."""


def parse_formats(text: str) -> tuple[str, ...]:
    chosen = FORMATS if text == "all" else tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [f for f in chosen if f not in FORMATS]
    if bad or not chosen:
        raise ComplianceError(f"Could not resolve format {', '.join(bad) or text!r} among choices {[*FORMATS, 'all']}")
    return chosen


def verified_head(run_dir: Path, on_progress=None) -> Result:
    """The :class:`~pharmafl.audit.verify.Result` of the run's ledger, or refuse naming the first bad entry
    (:class:`LedgerDoesNotVerify`, exit 1; an unreadable ledger: :class:`ComplianceError`, exit 2).
    ``on_progress(done, total)`` as entries are read."""
    from pharmafl.audit.verify import VerificationError, verify_path

    target = ledger_target(run_dir)
    try:
        return verify_path(
            target if target.startswith("postgres") else resolve_target(target).removeprefix("sqlite:///"),
            on_progress=on_progress,
        )
    except VerificationError as err:
        if err.unreadable:
            raise ComplianceError(f"cannot report on {run_dir}: {err.reason}") from None
        where = f"first bad entry: seq {err.seq}" if err.seq is not None else "not an entry"
        raise LedgerDoesNotVerify(
            f"refusing to report on {run_dir}: its ledger does not verify ({where}): {err.reason}. "
            "Reports are generated only from a ledger that verifies; investigate with "
            f"`pharmafl ledger verify {run_dir}`"
        ) from None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build_record(ac: AccessControl, session: Session, run_dir: Path, keep: TrailFilter, on_progress=None) -> dict:
    verified = verified_head(run_dir, on_progress)
    n = verified.entries
    entries = list(ac.ledger.entries(0, n))
    checkpoints = [c for c in ac.ledger.checkpoints() if c.tree_size <= n]
    model = run_dir / "model.safetensors"
    summary = summary_section(entries)
    user = session.user
    return clean(
        {
            "format": REPORT_FORMAT,
            "meta": {
                "run_id": summary["run_id"] or run_dir.name,
                "generated_at": format_ts(ac.clock()),
                "generated_by": {"user_id": user.user_id, "printed_name": user.full_name, "role": user.role.value},
                "filter": keep.as_dict(),
            },
            "certificate": {
                "verification": verified.line(),
                "tree_size": n,
                "root_hash": verified.root_hash,
                "checkpoints": [
                    {"tree_size": c.tree_size, "root_hash": c.root_hash, "ts": c.ts, "signer": c.signer}
                    for c in checkpoints
                ],
            },
            "summary": summary,
            "privacy": privacy_section(entries),
            "lineage": lineage_section(entries, sha256_file(model) if model.is_file() else None),
            "audit_trail": trail_rows(entries, keep),
            "part11": part11_rows(),
            "signers": signer_rows(),
            "alcoa": alcoa_rows(),
        }
    )


def _tables(record: dict, out: Path) -> None:
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    privacy = [
        {
            "party": s["party"],
            "round": r,
            "epsilon_round": e,
            "epsilon_total": t,
            "delta": s.get("delta"),
            "budget": s.get("budget"),
            "accountant": s.get("accountant"),
            "privacy_unit": s.get("privacy_unit"),
        }
        for s in record["privacy"]["sites"]
        for r, e, t in s["epsilon_by_round"]
    ]
    lineage = [
        {"round": r["round"], "party": site, "kind": "update", "sha256": u["update_hash"]}
        for r in record["lineage"]["rounds"]
        for site, u in sorted(r["updates"].items())
    ]
    lineage += [
        {"round": r["round"], "party": site, "kind": "commitment", "sha256": u["commitment"]}
        for r in record["lineage"]["rounds"]
        for site, u in sorted(r["updates"].items())
        if u.get("commitment")
    ]
    lineage += [
        {"round": r["round"], "party": "server", "kind": "secure_sum", "sha256": r["secure"].get("sum_hash")}
        for r in record["lineage"]["rounds"]
        if r.get("secure")
    ]
    lineage += [
        {"round": r["round"], "party": "server", "kind": "aggregate", "sha256": r.get("aggregate_hash")}
        for r in record["lineage"]["rounds"]
    ]
    lineage += [
        {"round": None, "party": s, "kind": "data_manifest", "sha256": h}
        for s, h in record["lineage"]["manifests"].items()
    ]
    metrics = [{"party": "global", "metric": k, "value": v} for k, v in record["summary"]["global_metrics"].items()]
    metrics += [
        {"party": s, "metric": k, "value": v}
        for s, m in record["summary"]["site_metrics"].items()
        for k, v in m.items()
        if isinstance(v, (int, float))
    ]
    tables = {
        "audit_trail": record["audit_trail"],
        "privacy": privacy,
        "lineage": lineage,
        "metrics": metrics,
        "validation_curves": record["summary"]["validation_curves"],
        "part11": record["part11"],
        "signers": record["signers"],
    }
    for name, rows in tables.items():
        frame = pd.DataFrame(rows)
        frame.to_parquet(out / f"{name}.parquet", index=False)
        frame.to_csv(out / f"{name}.csv", index=False)


def render_copies(
    folder: Path, record: dict, record_hash: str, signatures: list[dict], formats: tuple[str, ...]
) -> None:
    """Write report.pdf / report.html into ``folder`` (which holds ``plots/``)."""
    plots = {p.stem: p for p in (folder / "plots").glob("*.png")}
    if "pdf" in formats:
        render_pdf(record, record_hash, signatures, plots, folder / "report.pdf")
    if "html" in formats:
        render_html(record, record_hash, signatures, plots, folder / "report.html")


def file_hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _staging(out: Path) -> Path:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ComplianceError(f"report target {out} exists and is not an empty directory; choose a new --out path")
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))


def generate_report(
    ac: AccessControl,
    session: Session,
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    formats: tuple[str, ...] = FORMATS,
    keep: TrailFilter = TrailFilter(),
    on_progress=None,
) -> Path:
    """Generate the report of ``run_dir`` into ``out``; returns ``out``. ``on_progress(done, total)``
    as the ledger's entries are verified."""
    run_dir, out = Path(run_dir), Path(out)
    ac.require(session, "generate_report", f"generate a report of run {run_dir.name!r}")
    record = build_record(ac, session, run_dir, keep, on_progress)
    ac.accounts()  # and its users replay as the offline verifier's does
    text = canonical_json(record, where="report record") + "\n"
    record_hash = hashlib.sha256(text.encode()).hexdigest()
    tmp = _staging(out)
    try:
        (tmp / RECORD).write_text(text, encoding="utf-8")
        if "pdf" in formats or "html" in formats:
            draw_plots(record, tmp / "plots")
        render_copies(tmp, record, record_hash, [], formats)
        if "parquet" in formats:
            _tables(record, tmp / "tables")
        files = file_hashes(tmp)
        ac.record(
            session,
            [
                (
                    "report_generated",
                    {
                        "record_hash": record_hash,
                        "run_id": record["meta"]["run_id"],
                        "tree_size": record["certificate"]["tree_size"],
                        "formats": list(formats),
                        "files": files,
                        "signatures": [],
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


def load_report(folder: Path) -> tuple[dict, str]:
    """The record of a report folder and its SHA-256; refuses a folder without a readable record."""
    import json

    path = folder / RECORD
    try:
        raw = path.read_bytes()
        record = json.loads(raw)
    except (OSError, ValueError) as err:
        raise ComplianceError(
            f"{path}: not a pharmafl report record ({err}); pass a folder made by `pharmafl report`"
        ) from None
    if not isinstance(record, dict) or record.get("format") != REPORT_FORMAT:
        raise ComplianceError(f"{path}: not a {REPORT_FORMAT} record")
    return record, hashlib.sha256(raw).hexdigest()
