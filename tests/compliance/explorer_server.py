"""What the browser tests of ``pharmafl explore`` drive: the real server, started as a user starts it
(``python -m pharmafl.pipeline.cli explore RUN --quiet``, its URL read from stdout), and Debian's
Chromium under Playwright.

Playwright's own browser download is not used: the tests launch the system's ``/usr/bin/chromium``
(Debian package ``chromium``; ``.ci/run`` installs it). Without it they skip, unless
``PHARMAFL_REQUIRE_BROWSER=1`` (CI), where they fail.
"""

from __future__ import annotations

import io
import os
import queue
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .conftest import REPO_ROOT

CHROMIUM = Path("/usr/bin/chromium")
# Chromium on a closed network as root in a container: no sandbox (root), no GPU, and none of the
# background fetches (QUIC probes, component updates, sync) that would stall waiting for the network.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}
STARTUP_S = 90  # verification, indexing and plotting of the recorded run take a few seconds


def require_chromium() -> Path:
    """The Chromium executable; skips the test without it (fails under ``PHARMAFL_REQUIRE_BROWSER=1``)."""
    if CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    reason = f"the browser tests need Debian's chromium at {CHROMIUM}: apt-get install chromium"
    if os.environ.get("PHARMAFL_REQUIRE_BROWSER") == "1":
        pytest.fail(f"PHARMAFL_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


@contextmanager
def explore(path: Path) -> Iterator[str]:
    """``pharmafl explore PATH --quiet`` in a subprocess; yields the URL it prints (token included)
    and stops the server afterwards. Fails with the server's stderr if no URL comes."""
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pharmafl.pipeline.cli", "explore", str(path), "--quiet"],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=REPO_ROOT.parent,
        )
        try:
            yield _url(proc, stderr)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()


def _url(proc: subprocess.Popen, stderr) -> str:
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()
    try:
        line = lines.get(timeout=STARTUP_S).strip()
    except queue.Empty:
        line = ""
    if line.startswith("http://127.0.0.1:") and "?token=" in line:
        return line
    stderr.seek(0)
    why = stderr.read().decode(errors="replace").strip() or "(nothing on stderr)"
    state = f"exit status {proc.poll()}" if proc.poll() is not None else f"no URL within {STARTUP_S} s"
    pytest.fail(f"pharmafl explore printed {line!r} on stdout ({state}); stderr:\n{why}")


def with_token(url: str, path: str) -> str:
    """``path`` on the server of ``url`` (the printed one), carrying its token (the gate swaps it for
    a cookie and redirects to ``path`` without it)."""
    base, token = url.split("/?token=")
    return f"{base}{path}{'&' if '?' in path else '?'}token={token}"


def save_screenshot(page, name: str, folder: Path) -> Path:
    """A PNG of the viewport as ``folder/explorer-NAME.png``; also into ``$PHARMAFL_SCREENSHOTS``
    when set (how the docs' images in docs/img/ are made), there as a 256-colour PNG: a third of the
    size (under 100 KB) and, for flat page colours and text, no visible difference."""
    png = page.screenshot(type="png", full_page=False)
    out = folder / f"explorer-{name}.png"
    out.write_bytes(png)
    if extra := os.environ.get("PHARMAFL_SCREENSHOTS"):
        Path(extra).mkdir(parents=True, exist_ok=True)
        _palette_png(png, Path(extra) / out.name)
    return out


def _palette_png(png: bytes, path: Path) -> None:
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    image.quantize(256, method=Image.Quantize.MAXCOVERAGE, dither=Image.Dither.NONE).save(path, "PNG", optimize=True)
