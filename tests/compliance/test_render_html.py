"""The HTML report from the Jinja2 templates: values escaped, macros usable alone (as the explorer uses them),
plots inlined only when drawn, every e-signature shown, no inline script or style inside the section macros."""

from __future__ import annotations

import re

import jinja2
import pytest

from pharmafl.compliance.render_html import render_html
from pharmafl.compliance.templating import environment, lineage_rows, short

from .test_resumed_run import entries_of, record_of

EVIL = '<script>alert("x")</script>&'
ESCAPED = "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&amp;"
SECTIONS = ("certificate", "summary", "privacy", "lineage", "trail_table", "part11")


@pytest.fixture
def record(ledger_run) -> dict:
    return record_of(entries_of(ledger_run))


def sections():
    return environment().get_template("sections.html").module


def signature(meaning: str, hex_char: str) -> dict:
    return {
        "meaning": meaning,
        "printed_name": "Quinn <Quality>",
        "role": "qa",
        "signed_at": "2026-12-02T10:00:00.000000Z",
        "signer": "user:quinn",
        "record": "report",
        "record_hash": "0" * 64,
        "signature": hex_char * 128,
    }


def test_a_script_in_a_site_name_or_config_value_comes_out_escaped(record, tmp_path) -> None:
    record["summary"]["config"]["note"] = EVIL
    record["privacy"]["sites"][0]["party"] = EVIL
    record["lineage"]["manifests"][EVIL] = "a" * 64
    html = render_html(record, "0" * 64, [], {}, tmp_path / "report.html").read_text()
    assert EVIL not in html and html.count(ESCAPED) >= 3
    assert html.count("<script>") == 1  # the trail's filter, in <head>


def test_the_macros_render_alone_from_the_environment() -> None:
    cell = str(sections().table(["name", "hash"], [[EVIL, None]], (1,), "t"))
    assert cell.startswith("<table id=t><thead><tr><th>name</th><th>hash</th></tr></thead><tbody>")
    assert f"<tr><td>{ESCAPED}</td><td class=mono></td></tr>" in cell
    rows = [{"seq": 7, "ts": "t", "actor": "server", "type": "x", "round": None, "site": None, "what": "", "why": ""}]
    linked = str(sections().trail_table(rows, entry_href=lambda seq: f"/entry/{seq}?a=1&b=2"))
    assert '<tr><td><a href="/entry/7?a=1&amp;b=2">7</a></td><td>t</td>' in linked
    unsigned = str(sections().signature_block([]))
    assert "NOT SIGNED" in unsigned and "<ul>" not in unsigned


def test_every_section_macro_is_fit_for_a_strict_csp(record) -> None:
    plots = {"global_test_ci": "/plots/global_test_ci.png", "privacy_epsilon": "/plots/privacy_epsilon.png"}
    module = sections()
    bodies = [module.signature_block([signature("approved", "a")])]
    bodies += [module.certificate(record["certificate"]), module.summary(record["summary"], plots)]
    bodies += [module.privacy(record["privacy"], plots), module.lineage(record["lineage"])]
    bodies += [module.trail_table(record["audit_trail"]), module.part11(record)]
    text = "".join(map(str, bodies))
    assert (
        '<img alt="global_test_ci" src="/plots/global_test_ci.png">' in text
        and 'src="/plots/privacy_epsilon.png"' in text
    )
    assert "<table id=trail>" in text and "<h2>" not in text
    assert not re.search(r"<script|\son\w+=|\sstyle=", text)


def test_a_record_without_plots_has_no_image_and_a_drawn_plot_is_inlined(record, tmp_path) -> None:
    assert "<img" not in render_html(record, "0" * 64, [], {}, tmp_path / "none.html").read_text()
    png = tmp_path / "global_test_ci.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    plots = {"global_test_ci": png, "cosine_heatmap": tmp_path / "not-drawn.png"}
    html = render_html(record, "0" * 64, [], plots, tmp_path / "one.html").read_text()
    assert html.count("<img") == 1 and 'src="data:image/png;base64,iVBORw0KGgo="' in html


def test_every_signature_shows_with_its_hex_and_none_shows_the_warning(record, tmp_path) -> None:
    signatures = [signature("reviewed", "b"), signature("approved", "c")]
    html = render_html(record, "0" * 64, signatures, {}, tmp_path / "signed.html").read_text()
    assert "NOT SIGNED" not in html and "Reviewed by Quinn &lt;Quality&gt; (user:quinn, qa) on " in html
    assert all(f"signature {s['signature']}" in html for s in signatures)
    assert "NOT SIGNED" in render_html(record, "0" * 64, [], {}, tmp_path / "unsigned.html").read_text()


def test_a_missing_field_fails_the_rendering(record, tmp_path) -> None:
    del record["certificate"]["root_hash"]
    with pytest.raises(jinja2.UndefinedError, match="root_hash"):
        render_html(record, "0" * 64, [], {}, tmp_path / "report.html")


def test_lineage_rows_sort_by_round_then_party_and_short_cuts_a_hash() -> None:
    lineage = {
        "rounds": [
            {"round": 2, "updates": {"site-01": {"update_hash": "u2"}}, "aggregate_hash": "a2"},
            {"round": 1, "updates": {"s": {"update_hash": "u1", "commitment": "c1"}}, "secure": {"sum_hash": "s1"}},
        ]
    }
    assert lineage_rows(lineage) == [
        [1, "aggregate", None],
        [1, "s", "u1"],
        [1, "s (commitment)", "c1"],
        [1, "secure sum", "s1"],
        [2, "aggregate", "a2"],
        [2, "site-01", "u2"],
    ]
    assert (short("ab" * 32), short("abc"), short(None)) == ("abababababab…", "abc", "")
