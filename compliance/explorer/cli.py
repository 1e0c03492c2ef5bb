"""``pharmafl explore PATH``: verify a ledger, then serve its read-only explorer on 127.0.0.1.

PATH is a run directory, a ``postgresql://`` ledger URL, a ledger bundle or an evidence package.
The URL printed on stdout carries a per-launch token (``secrets.token_urlsafe(32)``); the port is
random unless ``--port`` is given. Verification progress goes to stderr. Ctrl-C stops the server.
No login is needed: the explorer only reads, as ``pharmafl ledger verify`` does, and it never
reads the users table (password hashes, sealed keys).
"""

from __future__ import annotations

import secrets
import socket
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from pharmafl.console import progress

HOST = "127.0.0.1"


def listen(port: int) -> socket.socket:
    """A listening socket on 127.0.0.1 (``port`` 0: a free one); one clear error when taken."""
    from pharmafl.compliance.errors import ComplianceError

    if not 0 <= port <= 65535:
        raise ComplianceError(f"--port {port}: give 0 (any free port) or 1..65535")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((HOST, port))
    except OSError as err:
        sock.close()
        raise ComplianceError(f"cannot listen on {HOST}:{port}: {err.strerror}; choose another --port or 0") from None
    sock.listen(64)
    return sock


def explore_command(
    path: Annotated[str, typer.Argument(help="run directory, postgresql:// URL, ledger bundle or evidence package")],
    port: Annotated[int, typer.Option(help="port on 127.0.0.1 (0: a random free one)")] = 0,
    trusted_head: Annotated[Path | None, typer.Option(help="checkpoint received out of band")] = None,
    roster: Annotated[Path | None, typer.Option(help="the consortium's cards, received from the sites")] = None,
    witnesses: Annotated[int | None, typer.Option(help="cosignatures required per checkpoint")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar on stderr")] = False,
) -> None:
    """Verify the ledger, then serve a read-only explorer of the run on 127.0.0.1 (open the URL printed)."""
    import uvicorn

    from pharmafl.compliance.explorer.app import create_app
    from pharmafl.compliance.explorer.source import open_ledger
    from pharmafl.compliance.explorer.views import Explorer

    sock = listen(port)
    port = sock.getsockname()[1]
    started = time.perf_counter()
    with progress(quiet=quiet) as bar:
        task = bar.add_task("verifying and indexing the ledger", total=None)
        opened = open_ledger(
            path,
            trusted_head=trusted_head and str(trusted_head),
            roster=roster and str(roster),
            witnesses=witnesses,
            on_progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    try:
        explorer = Explorer(opened)
        token = secrets.token_urlsafe(32)
        hosts = {f"{HOST}:{port}", f"localhost:{port}"}
        app = create_app(explorer, token=token, hosts=hosts, cookie=f"pharmafl_explore_{port}")
        typer.echo(opened.verdict.line, err=True)
        typer.echo(f"ready in {time.perf_counter() - started:.1f} s; Ctrl-C stops it", err=True)
        typer.echo(f"http://{HOST}:{port}/?token={token}")
        sys.stdout.flush()
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        opened.close()
