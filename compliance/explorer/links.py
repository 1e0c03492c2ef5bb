"""Where a page links to: the live server's URLs, or the static export's relative file names.

The templates never write a URL themselves; they ask ``link`` (one of these two), so the same
template renders a served page and a file of the static site that opens from ``file://``.
"""

from __future__ import annotations

from urllib.parse import urlencode

PAGES = ("overview", "trail", "privacy", "lineage", "signatures", "alarms")


class ServerLinks:
    """URLs of :mod:`.app` (the access token travels in a cookie, never in a link)."""

    static = False

    def page(self, name: str) -> str:
        return "/" if name == "overview" else f"/{name}"

    def entry(self, seq: int) -> str:
        return f"/entry/{int(seq)}"

    def trail(self, query: dict | None = None, **keys) -> str:
        params = {**(query or {}), **{k: v for k, v in keys.items() if v is not None}}
        return "/trail" + (f"?{urlencode(params)}" if params else "")

    def lineage(self, first: int | None) -> str:
        return "/lineage" if first is None else f"/lineage?first={int(first)}"

    def asset(self, name: str) -> str:
        return f"/static/{name}"

    def plot(self, name: str) -> str:
        return f"/plots/{name}.png"


class StaticLinks:
    """File names inside ``explorer/`` of an evidence package; ``depth`` 1 for pages in a subfolder."""

    static = True

    def __init__(self, depth: int = 0, first_round: int = 0):
        self.up = "../" * depth
        self.first_round = first_round

    def page(self, name: str) -> str:
        if name == "trail":
            return self.trail_page(1)
        if name == "lineage":
            return self.lineage(None)
        return f"{self.up}{'index' if name == 'overview' else name}.html"

    def entry(self, seq: int) -> str:
        return f"{self.up}entries/{int(seq):06d}.html"

    def trail_page(self, number: int) -> str:
        return f"{self.up}trail/page-{int(number):06d}.html"

    def trail(self, query: dict | None = None, **keys) -> str:
        return self.trail_page(keys.get("page") or 1)

    def lineage(self, first: int | None) -> str:
        return f"{self.up}lineage/rounds-{int(self.first_round if first is None else first):06d}.html"

    def asset(self, name: str) -> str:
        return f"{self.up}static/{name}"

    def plot(self, name: str) -> str:
        return f"{self.up}plots/{name}.png"
