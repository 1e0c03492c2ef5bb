"""The report as one self-contained HTML file (plots inlined), with the signature block and a
filter box over the audit trail. Every value is HTML-escaped."""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path

from pharmafl.compliance.signatures import manifestation

_CSS = """body{font-family:DejaVu Sans,Helvetica,Arial,sans-serif;font-size:13px;margin:2em;max-width:1100px}
table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #bbb;padding:2px 6px;vertical-align:top}
th{background:#e1e6f0;text-align:left}.mono{font-family:DejaVu Sans Mono,monospace;font-size:11px}
.sig{border:2px solid #335;padding:.5em 1em;background:#f6f7fb}.warn{color:#a00;font-weight:bold}
footer{margin-top:2em;border-top:1px solid #999;font-size:11px}img{max-width:100%}"""

_FILTER = """<script>function filt(){const q=document.getElementById('q').value.toLowerCase();
for(const tr of document.querySelectorAll('#trail tbody tr')){tr.style.display=
tr.textContent.toLowerCase().includes(q)?'':'none'}}</script>"""


def _table(header: list[str], rows: list[list], mono: tuple = (), ident: str = "") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td{' class=mono' if i in mono else ''}>{escape('' if v is None else str(v))}</td>"
            for i, v in enumerate(r)
        )
        + "</tr>"
        for r in rows
    )
    return f"<table{f' id={ident}' if ident else ''}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(path: Path | None, alt: str) -> str:
    if path is None or not Path(path).is_file():
        return ""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<p><img alt="{escape(alt)}" src="data:image/png;base64,{data}"></p>'


def _ended(session: dict, last: bool) -> str:
    if session["ended_status"]:
        return session["ended_status"]
    return "no run_ended entry: incomplete" if last else "ended without run_ended (interrupted)"


def _sessions(summary: dict) -> str:
    """The sessions of a resumed run and the sites that timed out; empty for one session without timeouts,
    so such a report reads as before (``get``: a record made before sessions were reported has neither)."""
    out = ""
    sessions = summary.get("sessions") or []
    if len(sessions) > 1:
        redone = ", ".join(str(r) for r in summary.get("interrupted_rounds") or []) or "none"
        out += (
            f"<h3>Sessions</h3><p>The run was resumed: {len(sessions)} sessions. Rounds interrupted and redone "
            f"under new numbers: {escape(redone)}.</p>"
        )
        header = ["session", "ledger seq", "started (UTC)", "first round", "resumed after round", "from checkpoint"]
        header += ["previous session ended", "reason", "engine", "git commit", "this session ended"]
        rows = [
            [
                s["session"],
                s["started_seq"],
                s.get("ts"),
                s["first_round"],
                s["from_round"],
                s["checkpoint_hash"] or ("initial model" if i else None),
                s["previous_status"] or ("without run_ended (interrupted)" if i else None),
                s["reason"],
                s["engine"],
                s.get("git_commit"),
                _ended(s, i == len(sessions) - 1),
            ]
            for i, s in enumerate(sessions)
        ]
        out += _table(header, rows, (5, 9), ident="sessions")
    if summary.get("timed_out"):
        out += "<h3>Sites that timed out</h3>" + _table(
            ["round", "site", "timeout (s)", "waited (s)"],
            [[t["round"], t["site"], t["timeout_s"], t["waited_s"]] for t in summary["timed_out"]],
            ident="timed-out",
        )
    return out


def render_html(record: dict, record_hash: str, signatures: list[dict], plots: dict[str, Path], path: Path) -> Path:
    meta, summary, privacy, lineage, cert = (
        record[k] for k in ("meta", "summary", "privacy", "lineage", "certificate")
    )
    by = meta["generated_by"]
    parts = [
        f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>Compliance report, run "
        f"{escape(meta['run_id'])}</title><style>{_CSS}</style>{_FILTER}</head><body>",
        f"<h1>Compliance report: run {escape(meta['run_id'])}</h1>",
        f"<p>Generated {escape(meta['generated_at'])} by {escape(by['printed_name'])} "
        f"(user:{escape(by['user_id'])}, {escape(by['role'])}) from a ledger that verified: "
        f"{escape(cert['verification'])}.</p>",
        f"<p>Record SHA-256 (what signatures are bound to): <span class=mono>{record_hash}</span></p>",
        "<div class=sig><h2>Signatures (21 CFR 11.50)</h2>",
    ]
    if signatures:
        parts.append(
            "<ul>"
            + "".join(
                f"<li>{escape(manifestation(s))}<br><span class=mono>signature {escape(s['signature'])}</span></li>"
                for s in signatures
            )
            + "</ul>"
        )
    else:
        parts.append("<p class=warn>NOT SIGNED. This copy carries no electronic signature.</p>")
    parts.append("</div><h2>1. Verification certificate</h2>")
    parts.append(
        f"<p>Ledger head: tree size {cert['tree_size']}, Merkle root <span class=mono>{cert['root_hash']}</span>.</p>"
    )
    parts.append(
        _table(
            ["tree size", "signed at", "signer", "root hash"],
            [[c["tree_size"], c["ts"], c["signer"], c["root_hash"]] for c in cert["checkpoints"]],
            (3,),
        )
    )
    parts.append(
        f"<h2>2. Run summary</h2><p>Status: {escape(str(summary['status']))}; rounds: {summary['rounds']}; "
        f"engine: {escape(str(summary['engine']))}; seed: {summary['seed']}; git commit: "
        f"<span class=mono>{escape(str(summary['git_commit']))}</span>.</p>"
    )
    parts.append(_sessions(summary))
    parts.append(_table(["metric", "value"], [[k, v] for k, v in summary["global_metrics"].items()]))
    if summary["site_metrics"]:
        keys = sorted({k for m in summary["site_metrics"].values() for k in m})
        parts.append(
            _table(["site", *keys], [[s, *[m.get(k) for k in keys]] for s, m in summary["site_metrics"].items()])
        )
    for name in ("global_test_ci", "global_test_mse", "site_validation_ci", "site_validation_mse", "cosine_heatmap"):
        parts.append(_img(plots.get(name), name))
    if summary["cosine_to_mean_by_round"]:
        sites = sorted({k for r in summary["cosine_to_mean_by_round"] for k in r if k != "round"})
        parts.append(
            "<h3>Cosine to the mean update</h3>"
            + _table(
                ["round", *sites],
                [[r["round"], *[r.get(s) for s in sites]] for r in summary["cosine_to_mean_by_round"]],
            )
        )
    parts.append("<h3>Configuration</h3>" + _table(["key", "value"], [[k, v] for k, v in summary["config"].items()]))
    parts.append("<h3>Versions</h3>" + _table(["package", "version"], sorted(summary["versions"].items())))
    parts.append(f"<h2>3. Privacy statement</h2><p>{escape(privacy['statement'])}</p>")
    if privacy["enabled"]:
        parts.append(
            _table(
                ["party", "ε spent", "budget", "respected", "δ", "accountant", "unit", "ε by round"],
                [
                    [
                        s["party"],
                        s["epsilon_total"],
                        s.get("budget"),
                        "yes" if s["respected"] else "NO",
                        s.get("delta"),
                        s.get("accountant"),
                        s.get("privacy_unit"),
                        "; ".join(f"r{r}: {t:.4g}" for r, _, t in s["epsilon_by_round"] if t is not None),
                    ]
                    for s in privacy["sites"]
                ],
            )
        )
        parts.append(_img(plots.get("privacy_epsilon"), "privacy_epsilon"))
    parts.append(
        f"<h2>4. Model lineage</h2><p>Final model SHA-256 <span class=mono>{lineage['model_hash']}</span>"
        + (
            ""
            if lineage["model_file_matches"] is None
            else f"; model.safetensors {'matches' if lineage['model_file_matches'] else 'DIFFERS'}"
        )
        + ".</p>"
    )
    parts.append(_table(["site", "data manifest SHA-256"], list(lineage["manifests"].items()), (1,)))
    rows = [[r["round"], s, u["update_hash"]] for r in lineage["rounds"] for s, u in sorted(r["updates"].items())]
    rows += [
        [r["round"], f"{s} (commitment)", u["commitment"]]
        for r in lineage["rounds"]
        for s, u in sorted(r["updates"].items())
        if u.get("commitment") and u["commitment"] != u["update_hash"]
    ]
    rows += [[r["round"], "secure sum", r["secure"].get("sum_hash")] for r in lineage["rounds"] if r.get("secure")]
    rows += [[r["round"], "aggregate", r.get("aggregate_hash")] for r in lineage["rounds"]]
    parts.append(_table(["round", "party", "SHA-256"], sorted(rows, key=lambda x: (x[0] or 0, x[1])), (2,)))
    parts.append(
        f"<h2>5. Audit trail</h2><p>{len(record['audit_trail'])} entries. Filter rows: "
        "<input id=q oninput=filt() placeholder='round, site, event type...'></p>"
    )
    parts.append(
        _table(
            ["seq", "when (UTC)", "who", "signed by", "event", "round", "site", "what", "why"],
            [
                [
                    r["seq"],
                    r["ts"],
                    r["actor"],
                    r.get("signed_by") or "",
                    r["type"],
                    r["round"],
                    r["site"],
                    r["what"],
                    r["why"],
                ]
                for r in record["audit_trail"]
            ],
            ident="trail",
        )
    )
    parts.append(
        "<h2>6. 21 CFR Part 11 matrix</h2>"
        + _table(
            ["requirement", "asks", "who", "control in pharmafl", "evidence"],
            [[r["requirement"], r["asks"], r["who"], r["control"], r["evidence"]] for r in record["part11"]],
        )
    )
    parts.append(
        "<h3>Who signs what</h3>"
        + _table(
            ["what", "signed by", "key", "checked by"],
            [[r["what"], r["signed_by"], r["key"], r["checked_by"]] for r in record.get("signers", [])],
        )
    )
    parts.append(
        "<h3>ALCOA+</h3>" + _table(["attribute", "how"], [[a["attribute"], a["how"]] for a in record["alcoa"]])
    )
    parts.append(f"<footer>Record SHA-256 <span class=mono>{record_hash}</span></footer></body></html>\n")
    path.write_text("".join(parts), encoding="utf-8")
    return path
