"""The explorer's pages as a static site: files that open from ``file://`` with no server.

``pharmafl evidence export`` writes one into ``PKG/explorer/`` so a regulator can browse the run
offline; the package's manifest covers every file and the ledger records their SHA-256
(``explorer_rendered``), so the offline verifier checks them like the reports' copies::

    explorer/index.html                 overview
    explorer/trail/page-NNNNNN.html     the audit trail, 500 entries a page (a box filters a page's rows)
    explorer/entries/NNNNNN.html        every entry, with its checks and inclusion proof
    explorer/lineage/rounds-NNNNNN.html the lineage graph, 5 rounds a page
    explorer/privacy.html, signatures.html, alarms.html
    explorer/static/, explorer/plots/   the stylesheet, the script, the PNG plots

The pages are the live explorer's templates with relative links (:class:`~.links.StaticLinks`).
A page per entry suits a run's ledger (thousands of entries); a million-entry ledger is better
explored live (``pharmafl explore``).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from pharmafl.compliance.explorer.index import Query
from pharmafl.compliance.explorer.links import StaticLinks
from pharmafl.compliance.explorer.render import Renderer
from pharmafl.compliance.explorer.views import Explorer

STATIC = Path(__file__).parent / "static"
TRAIL_PAGE = 500


def write_site(explorer: Explorer, out: Path) -> Path:
    """Every page of ``explorer`` under ``out`` (new or empty); returns ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    n = explorer.index.size
    pages = max(1, math.ceil(n / TRAIL_PAGE))
    lo, hi = explorer.index.facets()["rounds"]
    first_round = lo or 0
    top = Renderer(explorer, StaticLinks(0, first_round))
    sub = Renderer(explorer, StaticLinks(1, first_round))
    _write(out / "index.html", top.overview())
    _write(out / "privacy.html", top.privacy())
    _write(out / "signatures.html", top.signatures())
    _write(out / "alarms.html", top.alarms())
    after = None
    for number in range(1, pages + 1):
        data = explorer.trail(Query(), after=after, limit=TRAIL_PAGE)
        data.update(page=number, pages=pages)
        _write(out / "trail" / f"page-{number:06d}.html", sub.trail(data))
        after = data["rows"][-1]["seq"] if data["rows"] else after
    for seq in range(n):
        _write(out / "entries" / f"{seq:06d}.html", sub.entry(explorer.entry(seq)))
    first = first_round
    while True:
        data = explorer.lineage(first)
        _write(out / "lineage" / f"rounds-{data['first']:06d}.html", sub.lineage(data))
        if data["next"] is None or hi is None:
            break
        first = data["next"]
    (out / "static").mkdir(exist_ok=True)
    for asset in sorted(STATIC.iterdir()):
        shutil.copyfile(asset, out / "static" / asset.name)
    if explorer.plots:
        (out / "plots").mkdir(exist_ok=True)
        for name, path in sorted(explorer.plots.items()):
            shutil.copyfile(path, out / "plots" / f"{name}.png")
    return out


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
