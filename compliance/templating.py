"""The Jinja2 environment that the HTML report and the web explorer share: one rendering of each section.

The templates are ``compliance/templates/``: ``sections.html`` holds a macro per section body
(``table``, ``signature_block``, ``certificate``, ``summary``, ``privacy``, ``lineage``,
``trail_table``, ``part11``), ``report.html`` the self-contained report page around them, and
``explorer/`` the explorer's pages. Every value is HTML-escaped (autoescape for ``.html``) and a
missing key fails the rendering (``StrictUndefined``) instead of printing nothing.

What the macros use besides their arguments:

==================  ==========================================================================
``manifestation``   global: the 21 CFR 11.50 line of an e-signature (:mod:`.signatures`)
``lineage_rows``    global: the lineage section's ``[round, party, SHA-256]`` rows, sorted
``short``           filter: a hash as its first 12 characters and "…"
``union_keys``      filter: the sorted union of the keys of some dicts (a table's columns)
==================  ==========================================================================
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from pathlib import Path

import jinja2

from pharmafl.compliance.signatures import manifestation

TEMPLATES = Path(__file__).parent / "templates"


def short(value: object) -> str:
    """``value`` (a hash) cut to its first 12 characters and "…"; a shorter one whole, None as ""."""
    text = "" if value is None else str(value)
    return text if len(text) <= 12 else text[:12] + "…"


def union_keys(dicts: Iterable[dict]) -> list[str]:
    """The sorted union of the keys of ``dicts`` (site metrics, a round's cosines: the columns)."""
    return sorted({k for d in dicts for k in d})


def lineage_rows(lineage: dict) -> list[list]:
    """Each round's site updates, secure-aggregation commitments, secure sum and aggregate as
    ``[round, party, SHA-256]``, sorted by round (none first) then party."""
    rounds = lineage["rounds"]
    updates = [(r["round"], s, u) for r in rounds for s, u in sorted(r["updates"].items())]
    rows = [[rnd, s, u["update_hash"]] for rnd, s, u in updates]
    rows += [
        [rnd, f"{s} (commitment)", u["commitment"]]
        for rnd, s, u in updates
        if u.get("commitment") and u["commitment"] != u["update_hash"]
    ]
    rows += [[r["round"], "secure sum", r["secure"].get("sum_hash")] for r in rounds if r.get("secure")]
    rows += [[r["round"], "aggregate", r.get("aggregate_hash")] for r in rounds]
    return sorted(rows, key=lambda row: (row[0] or 0, row[1]))


@cache
def environment() -> jinja2.Environment:
    """The shared environment (built once): loader over :data:`TEMPLATES`, the globals and filters above."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(manifestation=manifestation, lineage_rows=lineage_rows)
    env.filters.update(short=short, union_keys=union_keys)
    return env
