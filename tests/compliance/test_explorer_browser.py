"""The web explorer in a real browser: the real ``pharmafl explore`` server driven by Chromium
(Playwright), and the static explorer of an evidence package opened from ``file://``.

What only a browser shows: the pages render and link under the strict CSP with no console error,
the trail's filter form works, the entry page's script re-checks the inclusion proof with WebCrypto
(on the server and from ``file://``), the token gate refuses a browser without the token, and a
tampered ledger turns the banner red. Each test saves a screenshot (``$PHARMAFL_SCREENSHOTS``: the
docs' images). The data are ``test_explorer.py``'s: the recorded 3-site DP run, report r1 authored
by dana and approved by quinn. Skipped without Debian's chromium unless ``PHARMAFL_REQUIRE_BROWSER=1``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from .explorer_server import CHROMIUM_FLAGS, VIEWPORT, explore, require_chromium, save_screenshot, with_token
from .test_explorer import package, signed_run, tampered_copy  # noqa: F401  (module-scoped fixtures: the same data)

EVENT, SITE = 4, 6  # columns of the trail table (seq, when, who, signed by, event, round, site, what, why)


@pytest.fixture(scope="module")
def browser() -> Browser:
    executable = require_chromium()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(executable), args=CHROMIUM_FLAGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(browser: Browser, signed_run: Path) -> str:  # noqa: F811
    """The URL ``pharmafl explore`` printed for the signed run (the browser first: no server without it)."""
    with explore(signed_run) as url:
        yield url


@pytest.fixture
def console() -> list[str]:
    """Every console error (CSP violations among them) and uncaught exception of the test's page."""
    return []


@pytest.fixture
def page(browser: Browser, console: list[str]) -> Page:
    context = browser.new_context(viewport=VIEWPORT)
    tab = context.new_page()

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            console.append(f"{tab.url}: {msg.text} ({msg.location['url']})")

    tab.on("console", on_console)
    tab.on("pageerror", lambda err: console.append(f"{tab.url}: uncaught {err}"))
    yield tab
    context.close()


def quiet(page: Page, console: list[str]) -> list[str]:
    """``console`` once the page's network is idle (a late request's failure is logged by then)."""
    page.wait_for_load_state("networkidle")
    return console


def cells(page: Page, column: int) -> list[str]:
    return page.locator(f"#trail tbody tr td:nth-child({column + 1})").all_text_contents()


def expect_browser_check_ok(page: Page) -> None:
    """The entry page's script folded the audit path into the signed root (WebCrypto)."""
    check = page.locator("#browser-check")
    expect(check).to_have_attribute("data-result", "ok", timeout=10_000)
    expect(check).to_contain_text("inclusion proved")


def test_overview_shows_the_green_banner_and_the_run(page: Page, console: list[str], server: str, tmp_path) -> None:
    page.goto(server)
    assert "token=" not in page.url  # swapped for a cookie, gone from the address bar and history
    expect(page.locator(".banner.ok")).to_contain_text("Ledger verified.")
    expect(page.locator(".brand .mono")).to_have_text("run")
    expect(page.locator("#counts")).to_contain_text("signed checkpoints")
    save_screenshot(page, "overview", tmp_path)
    assert quiet(page, console) == []


def test_the_trail_form_filters_by_type_and_site(page: Page, console: list[str], server: str, tmp_path) -> None:
    page.goto(with_token(server, "/trail"))
    form = page.locator("form#trail-filter")
    form.locator("select[name=type]").select_option("privacy_spent")
    form.locator("select[name=site]").select_option("site-02")
    with page.expect_navigation():
        form.locator("button[type=submit]").click()
    assert "type=privacy_spent" in page.url and "site=site-02" in page.url
    events, sites = cells(page, EVENT), cells(page, SITE)
    assert len(events) == 2  # one per round
    assert set(events) == {"privacy_spent"} and set(sites) == {"site-02"}
    expect(page.locator("#trail-count")).to_contain_text("2 matching entries")
    save_screenshot(page, "trail", tmp_path)
    assert quiet(page, console) == []


def test_an_entry_opened_from_the_trail_passes_every_check_in_the_browser_too(
    page: Page, console: list[str], server: str, tmp_path
) -> None:
    page.goto(with_token(server, "/trail?type=privacy_spent"))
    link = page.locator("#trail tbody tr").first.locator("td a").first
    seq = link.inner_text()
    link.click()
    expect(page.locator("h1")).to_have_text(f"Entry {seq}")
    expect_browser_check_ok(page)
    checks = page.locator("ul.checks li")
    assert checks.count() >= 6  # hash, chain, signature, site statement, inclusion, the browser's own
    assert [c.get_attribute("class") for c in checks.all()] == ["ok"] * checks.count()
    save_screenshot(page, "entry", tmp_path)
    assert quiet(page, console) == []


def test_the_signatures_page_shows_both_manifestations_verified(
    page: Page, console: list[str], server: str, tmp_path
) -> None:
    page.goto(with_token(server, "/signatures"))
    rows = page.locator("#signature-table tbody tr")
    expect(rows).to_have_count(2)
    for row, shown in zip(rows.all(), ("Authored by Dana Scientist", "Approved by Quinn Quality"), strict=True):
        expect(row.locator("td").nth(1)).to_contain_text(shown)
        status = row.locator("td").nth(4)
        expect(status).to_have_class("ok")
        expect(status).to_contain_text("verifies")
    save_screenshot(page, "signatures", tmp_path)
    assert quiet(page, console) == []


def test_every_page_loads_without_a_console_error(page: Page, console: list[str], server: str) -> None:
    page.goto(server)
    for label in ("Audit trail", "Privacy", "Lineage", "Signatures", "Anomalies and alarms", "Overview"):
        with page.expect_navigation():
            page.locator("nav a", has_text=label).click()
        expect(page.locator("h1")).to_have_text(label)
        expect(page.locator(".banner.ok")).to_be_visible()
        assert page.evaluate("getComputedStyle(document.body).margin") == "0px"  # the stylesheet was allowed
    assert quiet(page, console) == []


def test_the_browser_enforces_the_csp_and_the_console_check_sees_a_violation(
    page: Page, console: list[str], server: str
) -> None:
    page.goto(server)
    page.evaluate(
        "document.head.append(Object.assign(document.createElement('script'), {textContent: 'window.ran = 1'}))"
    )
    assert page.evaluate("window.ran") is None  # an inline script does not run
    assert any("Content Security Policy" in line for line in quiet(page, console)), console


def test_a_browser_without_the_token_is_refused(browser: Browser, server: str) -> None:
    context = browser.new_context()
    try:
        tab = context.new_page()
        response = tab.goto(server.split("?token=")[0])
        assert response.status == 403
        expect(tab.locator("body")).to_contain_text("no access token: open the URL `pharmafl explore` printed")
    finally:
        context.close()


def test_a_tampered_ledger_shows_the_red_banner_naming_the_entry(
    page: Page,
    console: list[str],
    signed_run: Path,
    tmp_path: Path,  # noqa: F811
) -> None:
    run, victim = tampered_copy(signed_run, tmp_path / "run")
    with explore(run) as url:
        page.goto(url)
        banner = page.locator(".banner.bad")
        expect(banner).to_contain_text("The ledger does NOT verify.")
        expect(banner.locator("a")).to_have_text(f"seq {victim}")
        expect(page.locator(".banner.ok")).to_have_count(0)
        save_screenshot(page, "tampered", tmp_path)
        banner.locator("a").click()
        expect(page.locator("h1")).to_have_text(f"Entry {victim}")
        expect(page.locator("ul.checks li").first).to_have_class("bad")  # the entry hash differs
        assert quiet(page, console) == []


def test_the_static_explorer_opens_from_file_and_rechecks_a_proof(
    page: Page,
    console: list[str],
    package: Path,  # noqa: F811
) -> None:
    page.goto((package / "explorer" / "index.html").as_uri())
    expect(page.locator(".banner.ok")).to_contain_text("Ledger verified.")
    expect(page.locator(".brand .tag")).to_have_text("static copy")
    page.locator("nav a", has_text="Audit trail").click()
    expect(page.locator("h1")).to_have_text("Audit trail")
    page.locator("#row-filter").fill("privacy_spent")  # the page's script hides the other rows
    shown = page.locator("#trail tbody tr:not([hidden])")
    expect(shown).to_have_count(6)  # 3 sites x 2 rounds
    assert set(cells(page, EVENT)) > {"privacy_spent"}  # hidden rows are still there
    link = shown.first.locator("td a").first
    seq = int(link.inner_text())
    link.click()
    assert page.url.endswith(f"/explorer/entries/{seq:06d}.html")
    expect(page.locator("h1")).to_have_text(f"Entry {seq}")
    assert page.evaluate("window.isSecureContext && !!crypto.subtle"), "no WebCrypto on file:// in this Chromium"
    expect_browser_check_ok(page)
    assert quiet(page, console) == []
