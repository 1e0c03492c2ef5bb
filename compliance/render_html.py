"""The report as one self-contained HTML file (plots inlined), with the signature block and a filter box
over the audit trail. The markup is ``templates/report.html`` around the section macros the web explorer
shares (:mod:`.templating`); every value is HTML-escaped."""

from __future__ import annotations

import base64
from pathlib import Path

from pharmafl.compliance.templating import environment


def data_uris(plots: dict[str, Path]) -> dict[str, str]:
    """Each plot PNG that exists as a ``data:`` URI, so the page needs no other file; a missing one is left out."""
    return {
        name: "data:image/png;base64," + base64.b64encode(Path(p).read_bytes()).decode()
        for name, p in plots.items()
        if p is not None and Path(p).is_file()
    }


def render_html(record: dict, record_hash: str, signatures: list[dict], plots: dict[str, Path], path: Path) -> Path:
    """Write the HTML copy of ``record`` (with its e-signatures so far) to ``path``; returns ``path``."""
    page = (
        environment()
        .get_template("report.html")
        .render(record=record, record_hash=record_hash, signatures=signatures, plots=data_uris(plots))
    )
    path.write_text(page + "\n", encoding="utf-8")
    return path
