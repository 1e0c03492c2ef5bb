"""The explorer's web application: read-only pages and JSON over one :class:`~.views.Explorer`.

Served on 127.0.0.1 only (:mod:`.cli`). Every request passes one gate (:class:`Gate`), in order:

1. **GET only**: any other method is 405 (there is nothing to change, so nothing to forge).
2. **Host header** must name the address the server was started on (``127.0.0.1:PORT`` or
   ``localhost:PORT``): a page on another origin that rebinds its DNS name to 127.0.0.1 is refused.
3. **Token**: the per-launch token printed with the URL (``?token=...``) is exchanged once for an
   HttpOnly, SameSite=Strict cookie scoped to the port, and the browser is redirected to the same
   URL without it (so it is not kept in history or sent as a referrer); without the token or the
   cookie a request is 403.

Every response carries a strict Content-Security-Policy (scripts, styles and images from this
server only; no inline script, no frames, no form posts elsewhere), ``nosniff``, ``no-referrer``
and ``no-store``. Every asset is vendored (``static/``); nothing is fetched from a CDN, and
FastAPI's own docs pages (which would load one) are off.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response

from pharmafl.compliance.explorer.index import Query
from pharmafl.compliance.explorer.links import ServerLinks
from pharmafl.compliance.explorer.render import Renderer
from pharmafl.compliance.explorer.views import Explorer

STATIC = Path(__file__).parent / "static"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Cross-Origin-Resource-Policy": "same-origin",
}


class Gate:
    """ASGI middleware: method, Host and token checks, then the security headers on every response."""

    def __init__(self, app, *, token: str, hosts: set[str], cookie: str):
        self.app, self.token, self.hosts, self.cookie = app, token, hosts, cookie

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        if scope["method"] != "GET":
            response = _refusal(405, "read-only: only GET is served", {"Allow": "GET"})
        elif headers.get("host") not in self.hosts:
            response = _refusal(400, f"Host {headers.get('host')!r} is not this explorer's address")
        elif "token" in query:
            if not hmac.compare_digest(query["token"].encode(), self.token.encode()):
                response = _refusal(403, "wrong token: open the URL `pharmafl explore` printed")
            else:
                rest = urlencode({k: v for k, v in query.items() if k != "token"})
                response = RedirectResponse(scope["path"] + (f"?{rest}" if rest else ""), status_code=303)
                response.set_cookie(self.cookie, self.token, httponly=True, samesite="strict", path="/")
        elif not hmac.compare_digest(_cookie(headers.get("cookie", ""), self.cookie).encode(), self.token.encode()):
            response = _refusal(403, "no access token: open the URL `pharmafl explore` printed (it carries one)")
        else:
            return await self.app(scope, receive, _with_headers(send))
        return await response(scope, receive, _with_headers(send))


def _cookie(header: str, name: str) -> str:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return ""


def _refusal(status: int, why: str, headers: dict | None = None) -> Response:
    return Response(f"{status}: {why}\n", status_code=status, media_type="text/plain", headers=headers)


def _with_headers(send):
    async def wrapped(message):
        if message["type"] == "http.response.start":
            message["headers"] = [
                *[(k, v) for k, v in message.get("headers", []) if k.decode().lower() not in _LOWER],
                *[(k.lower().encode(), v.encode()) for k, v in HEADERS.items()],
            ]
        await send(message)

    return wrapped


_LOWER = {k.lower() for k in HEADERS}


def _int(value: str | None, name: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise HTTPException(400, f"{name}={value!r}: give a whole number") from None


def query_of(params) -> Query:
    return Query(
        round=_int(params.get("round"), "round"),
        site=params.get("site") or None,
        actor=params.get("actor") or None,
        type=params.get("type") or None,
        text=params.get("q") or None,
    )


def create_app(explorer: Explorer, *, token: str, hosts: set[str], cookie: str = "pharmafl_explore") -> Gate:
    """The gated ASGI application over ``explorer``; ``hosts``: the Host header values to accept."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None, title="pharmafl explorer")
    pages = Renderer(explorer, ServerLinks())

    def html(text: str) -> HTMLResponse:
        return HTMLResponse(text)

    def trail_data(request: Request) -> dict:
        p = request.query_params
        limit = _int(p.get("limit"), "limit") or 50
        return explorer.trail(
            query_of(p), after=_int(p.get("after"), "after"), before=_int(p.get("before"), "before"), limit=limit
        )

    def entry_data(seq: int) -> dict:
        data = explorer.entry(seq)
        if data is None:
            raise HTTPException(404, f"no entry {seq}: the ledger has entries 0..{explorer.index.size - 1}")
        return data

    @app.get("/", response_class=HTMLResponse)
    def overview():
        return html(pages.overview())

    @app.get("/trail", response_class=HTMLResponse)
    def trail(request: Request):
        return html(pages.trail(trail_data(request)))

    @app.get("/entry/{seq}", response_class=HTMLResponse)
    def entry(seq: int):
        return html(pages.entry(entry_data(seq)))

    @app.get("/privacy", response_class=HTMLResponse)
    def privacy():
        return html(pages.privacy())

    @app.get("/lineage", response_class=HTMLResponse)
    def lineage(request: Request):
        return html(pages.lineage(explorer.lineage(_int(request.query_params.get("first"), "first"))))

    @app.get("/signatures", response_class=HTMLResponse)
    def signatures():
        return html(pages.signatures())

    @app.get("/alarms", response_class=HTMLResponse)
    def alarms():
        return html(pages.alarms())

    @app.get("/api/overview")
    def api_overview():
        return JSONResponse(explorer.overview())

    @app.get("/api/trail")
    def api_trail(request: Request):
        return JSONResponse(trail_data(request))

    @app.get("/api/entry/{seq}")
    def api_entry(seq: int):
        return JSONResponse(entry_data(seq))

    @app.get("/api/privacy")
    def api_privacy():
        return JSONResponse(explorer.privacy_page())

    @app.get("/api/lineage")
    def api_lineage(request: Request):
        return JSONResponse(explorer.lineage(_int(request.query_params.get("first"), "first")))

    @app.get("/api/signatures")
    def api_signatures():
        return JSONResponse(explorer.signatures())

    @app.get("/api/alarms")
    def api_alarms():
        return JSONResponse(explorer.alarms())

    @app.get("/plots/{name}.png")
    def plot(name: str):
        path = explorer.plots.get(name)
        if path is None:
            raise HTTPException(404, f"no plot {name!r}; this run has {sorted(explorer.plots)}")
        return FileResponse(path, media_type="image/png")

    @app.get("/static/{name}")
    def static(name: str):
        path = STATIC / name
        if name not in {p.name for p in STATIC.iterdir()}:
            raise HTTPException(404, f"no asset {name!r}")
        return FileResponse(path)

    return Gate(app, token=token, hosts=hosts, cookie=cookie)
