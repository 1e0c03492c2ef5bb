"""The report as PDF for people (fpdf2): tables, plots, signature block, page numbers, hash footer.

Every page's footer carries the record's SHA-256 (the hash the signatures are bound to)
and ``page i of n``; the first page carries the signature block with each signature's
manifestation (21 CFR 11.50), or says plainly that the record is not yet signed. Fonts are
the DejaVu faces shipped with matplotlib (ε and δ need more than Latin-1).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import matplotlib
from fpdf import FPDF
from fpdf.fonts import FontFace

from pharmafl.compliance.signatures import manifestation

_FONTS = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
HEAD = FontFace(emphasis="BOLD", fill_color=(225, 230, 240))


class _ReportPDF(FPDF):
    def __init__(self, title: str, record_hash: str):
        super().__init__(orientation="P", unit="mm", format="A4")
        self.title_text, self.record_hash = title, record_hash
        self.add_font("DejaVu", "", str(_FONTS / "DejaVuSans.ttf"))
        self.add_font("DejaVu", "B", str(_FONTS / "DejaVuSans-Bold.ttf"))
        self.add_font("DejaVuMono", "", str(_FONTS / "DejaVuSansMono.ttf"))
        self.set_auto_page_break(auto=True, margin=18)
        self.set_margins(14, 16, 14)
        self.alias_nb_pages()

    def header(self) -> None:
        self.set_font("DejaVu", "", 7)
        self.set_text_color(90)
        self.cell(0, 5, self.title_text, align="L")
        self.ln(7)
        self.set_text_color(0)

    def footer(self) -> None:
        self.set_y(-13)
        self.set_font("DejaVuMono", "", 6.5)
        self.set_text_color(90)
        self.cell(0, 4, f"Record SHA-256 {self.record_hash}", align="L")
        self.set_font("DejaVu", "", 7)
        self.cell(0, 4, f"page {self.page_no()} of {{nb}}", align="R")
        self.set_text_color(0)

    def h1(self, text: str) -> None:
        if self.get_y() > 240:
            self.add_page()
        self.ln(3)
        self.set_font("DejaVu", "B", 13)
        self.cell(0, 8, text, new_x="LMARGIN", new_y="NEXT")
        self.set_font("DejaVu", "", 8.5)

    def h2(self, text: str) -> None:
        self.ln(1)
        self.set_font("DejaVu", "B", 10)
        self.cell(0, 6, text, new_x="LMARGIN", new_y="NEXT")
        self.set_font("DejaVu", "", 8.5)

    def para(self, text: str, size: float = 8.5) -> None:
        self.set_font("DejaVu", "", size)
        self.multi_cell(0, 4.2, text, align="L", new_x="LMARGIN", new_y="NEXT")
        self.ln(1)

    def grid(self, header: list[str], rows: list[list], widths: tuple, size: float = 7.0, mono: tuple = ()) -> None:
        self.set_font("DejaVu", "", size)
        with self.table(
            col_widths=widths, text_align="LEFT", line_height=size * 0.5, headings_style=HEAD, padding=0.8
        ) as table:
            table.row([str(h) for h in header])
            for values in rows:
                row = table.row()
                for i, v in enumerate(values):
                    style = FontFace(family="DejaVuMono", size_pt=size - 0.5) if i in mono else None
                    row.cell("" if v is None else str(v), style=style)
        self.ln(2)

    def figure(self, path: Path | None, width: float = 150) -> None:
        if path is None or not Path(path).is_file():
            return
        from PIL import Image

        with Image.open(path) as im:
            height = width * im.height / im.width
        if self.get_y() + height > self.h - 20:
            self.add_page()
        self.image(str(path), x=(self.w - width) / 2, w=width)
        self.ln(3)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def _short(value, n: int = 12) -> str:
    return value[:n] + "…" if isinstance(value, str) and len(value) > n else _fmt(value)


def _sessions(pdf: _ReportPDF, summary: dict) -> None:
    """The sessions of a resumed run and the sites that timed out; nothing for one session without
    timeouts, so such a report reads as before (``get``: older records have neither)."""
    sessions = summary.get("sessions") or []
    if len(sessions) > 1:
        pdf.h2("Sessions")
        redone = ", ".join(str(r) for r in summary.get("interrupted_rounds") or []) or "none"
        pdf.para(
            f"The run was resumed: {len(sessions)} sessions, each opened by a ledger entry (run_started, then "
            f"run_resumed). Rounds interrupted and redone under new numbers: {redone}."
        )
        last = len(sessions) - 1
        pdf.grid(
            ["session", "ledger seq", "started (UTC)", "first round", "after round", "from checkpoint"]
            + ["previous session ended", "reason", "engine", "git commit", "this session ended"],
            [
                [
                    s["session"],
                    s["started_seq"],
                    (s.get("ts") or "").replace("T", " ")[:19],
                    s["first_round"],
                    _fmt(s["from_round"]),
                    _short(s["checkpoint_hash"]) if s["checkpoint_hash"] else ("initial model" if i else ""),
                    s["previous_status"] or ("without run_ended (interrupted)" if i else ""),
                    _fmt(s["reason"]),
                    _fmt(s["engine"]),
                    _short(s.get("git_commit"), 10),
                    s["ended_status"]
                    or ("no run_ended entry: incomplete" if i == last else "ended without run_ended (interrupted)"),
                ]
                for i, s in enumerate(sessions)
            ],
            (10, 10, 22, 10, 11, 20, 24, 26, 11, 14, 24),
            size=6.0,
            mono=(5, 9),
        )
    if summary.get("timed_out"):
        pdf.h2("Sites that timed out")
        pdf.grid(
            ["round", "site", "timeout (s)", "waited (s)"],
            [[t["round"], t["site"], _fmt(t["timeout_s"]), _fmt(t["waited_s"])] for t in summary["timed_out"]],
            (20, 30, 30, 30),
            size=6.5,
        )


def render_pdf(record: dict, record_hash: str, signatures: list[dict], plots: dict[str, Path], path: Path) -> Path:
    """Write the PDF of ``record`` with ``signatures`` (e_signature payloads) to ``path``."""
    meta, summary, privacy, lineage = record["meta"], record["summary"], record["privacy"], record["lineage"]
    pdf = _ReportPDF(f"pharmafl compliance report · run {meta['run_id']}", record_hash)
    stamp = datetime.strptime(meta["generated_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    pdf.set_creation_date(stamp)
    pdf.set_title(f"Compliance report, run {meta['run_id']}")
    pdf.set_author(meta["generated_by"]["printed_name"])
    pdf.add_page()
    pdf.set_font("DejaVu", "B", 16)
    pdf.multi_cell(0, 8, f"Compliance report: run {meta['run_id']}", align="L", new_x="LMARGIN", new_y="NEXT")
    by = meta["generated_by"]
    pdf.para(
        f"Generated {meta['generated_at']} by {by['printed_name']} (user:{by['user_id']}, {by['role']}) from "
        f"a ledger that verified: {record['certificate']['verification']}."
    )
    pdf.para(f"Record SHA-256 (what signatures are bound to): {record_hash}", size=7.5)
    pdf.h2("Signatures (21 CFR 11.50)")
    if signatures:
        pdf.grid(
            ["manifestation", "meaning", "signed at (UTC)", "signature"],
            [[manifestation(s), s["meaning"], s["signed_at"], s["signature"][:24] + "…"] for s in signatures],
            (85, 20, 38, 39),
            size=7.5,
            mono=(3,),
        )
    else:
        pdf.para("NOT SIGNED. This copy carries no electronic signature.")

    cert = record["certificate"]
    pdf.h1("1. Verification certificate")
    pdf.para(
        f"Verification result: {cert['verification']}. Ledger head: tree size {cert['tree_size']}, Merkle root "
        f"{cert['root_hash']}. Verified with pharmafl's standalone verifier (stdlib + cryptography)."
    )
    pdf.para(
        f"E-signatures on this record: {len(signatures)}"
        + "".join(f"\n  • {manifestation(s)}; signature {s['signature'][:32]}…" for s in signatures)
    )
    pdf.grid(
        ["tree size", "signed at", "signer", "root hash"],
        [[c["tree_size"], c["ts"], c["signer"], c["root_hash"]] for c in cert["checkpoints"]],
        (18, 40, 24, 100),
        size=6.5,
        mono=(3,),
    )

    pdf.h1("2. Run summary")
    pdf.para(
        f"Status: {summary['status']}; rounds: {summary['rounds']}; engine: {summary['engine']}; seed: "
        f"{summary['seed']}; git commit: {summary['git_commit']}; config SHA-256: {summary['config_hash']}."
    )
    _sessions(pdf, summary)
    if summary["global_metrics"]:
        pdf.h2("Global model on the benchmark test set")
        pdf.grid(["metric", "value"], [[k, _fmt(v)] for k, v in summary["global_metrics"].items()], (60, 60))
    if summary["site_metrics"]:
        pdf.h2("Per-site metrics (final model)")
        keys = sorted({k for m in summary["site_metrics"].values() for k in m if not k.endswith("_pairs")})[:8]
        pdf.grid(
            ["site", *keys],
            [[s, *[_fmt(m.get(k)) for k in keys]] for s, m in summary["site_metrics"].items()],
            tuple([24] + [158 / max(len(keys), 1)] * len(keys)),
            size=6.5,
        )
    pdf.figure(plots.get("global_test_ci"), 120)
    pdf.figure(plots.get("global_test_mse"), 120)
    pdf.figure(plots.get("site_validation_ci"), 140)
    pdf.figure(plots.get("site_validation_mse"), 140)
    if summary["cosine_to_mean_by_round"]:
        pdf.h2("Cosine similarity of each site's update to the mean update")
        sites = sorted({k for r in summary["cosine_to_mean_by_round"] for k in r if k != "round"})
        pdf.grid(
            ["round", *sites],
            [[r["round"], *[_fmt(r.get(s)) for s in sites]] for r in summary["cosine_to_mean_by_round"]],
            tuple([14] + [168 / max(len(sites), 1)] * len(sites)),
            size=6.5,
        )
    pdf.figure(plots.get("cosine_heatmap"), 110)
    pdf.h2("Configuration")
    pdf.grid(["key", "value"], [[k, _fmt(v)] for k, v in summary["config"].items()], (70, 112), size=6.5)
    pdf.h2("Versions")
    pdf.grid(["package", "version"], [[k, v] for k, v in sorted(summary["versions"].items())], (70, 112), size=6.5)

    pdf.h1("3. Privacy statement")
    pdf.para(privacy["statement"])
    if privacy["enabled"]:
        pdf.grid(
            ["party", "ε spent", "budget", "respected", "δ", "accountant", "unit", "noise σ", "sample rate"],
            [
                [
                    s["party"],
                    _fmt(s["epsilon_total"]),
                    _fmt(s.get("budget")),
                    "yes" if s["respected"] else "NO",
                    _fmt(s.get("delta")),
                    s.get("accountant"),
                    s.get("privacy_unit"),
                    _fmt(s.get("noise_multiplier")),
                    _fmt(s.get("sample_rate")),
                ]
                for s in privacy["sites"]
            ],
            (20, 18, 16, 18, 22, 20, 16, 20, 22),
            size=6.5,
        )
        pdf.figure(plots.get("privacy_epsilon"), 140)

    pdf.h1("4. Model lineage")
    pdf.para(
        f"Data manifests (SHA-256 of each site store's manifest) → each round's site updates (under secure "
        f"aggregation also each site's commitment and the secure sum) → aggregate → final model. Final model "
        f"SHA-256: {lineage['model_hash']}"
        + (
            ""
            if lineage["model_file_matches"] is None
            else f"; model.safetensors in the run {'matches' if lineage['model_file_matches'] else 'DIFFERS'}."
        )
    )
    pdf.grid(
        ["site", "data manifest SHA-256"],
        [[s, h] for s, h in lineage["manifests"].items()],
        (24, 158),
        size=6.5,
        mono=(1,),
    )
    rows = []
    for r in lineage["rounds"]:
        for site, u in sorted(r["updates"].items()):
            note = u.get("kind", "") if u.get("accepted", True) else "rejected"
            rows.append([r["round"], site, u["update_hash"], note])
            if u.get("commitment") and u["commitment"] != u["update_hash"]:
                rows.append([r["round"], site, u["commitment"], "commitment"])
        if r.get("secure"):
            rows.append([r["round"], "secure sum", r["secure"].get("sum_hash"), "sum of shares"])
        rows.append([r["round"], "aggregate", r.get("aggregate_hash"), r.get("strategy")])
    pdf.grid(["round", "party", "SHA-256", "note"], rows, (14, 22, 124, 22), size=6.5, mono=(2,))

    trail = record["audit_trail"]
    pdf.h1("5. Audit trail")
    filt = record["meta"]["filter"]
    shown = ", ".join(f"{k}: {v}" for k, v in filt.items() if v) or "none (every entry)"
    pdf.para(
        f"{len(trail)} entries in ledger order; who (actor; 'site-01 via server': the site's signed statement "
        "in the coordinator's entry), what (event and payload), when (UTC), why. "
        f"Filter: {shown}."
    )
    pdf.grid(
        ["seq", "when (UTC)", "who", "what", "why"],
        [[r["seq"], r["ts"].replace("T", " ")[:23], _who(r), f"{r['type']}: {r['what']}", r["why"]] for r in trail],
        (10, 27, 20, 80, 45),
        size=5.8,
    )

    pdf.h1("6. 21 CFR Part 11 matrix")
    pdf.para(
        "Who: 'pharmafl' = a technical control the software enforces; 'shared' = pharmafl provides part and "
        "the organisation the rest; 'organisation' = procedural, outside any software."
    )
    pdf.grid(
        ["requirement", "who", "control in pharmafl", "evidence"],
        [[f"{r['requirement']}: {r['asks']}", r["who"], r["control"], r["evidence"]] for r in record["part11"]],
        (34, 18, 65, 65),
        size=6.2,
    )
    pdf.h2("Who signs what")
    pdf.grid(
        ["what", "signed by", "key", "checked by"],
        [[r["what"], r["signed_by"], r["key"], r["checked_by"]] for r in record.get("signers", [])],
        (50, 28, 60, 44),
        size=6.2,
    )
    pdf.h2("ALCOA+")
    pdf.grid(["attribute", "how"], [[a["attribute"], a["how"]] for a in record["alcoa"]], (30, 152), size=6.5)
    pdf.output(str(path))
    return path


def _who(row: dict) -> str:
    return f"{row['signed_by']} via {row['actor']}" if row.get("signed_by") else row["actor"]
