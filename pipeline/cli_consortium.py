"""``pharmafl consortium``: the coordinator builds its roster from the sites' cards."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pharmafl.pipeline.consortium import init_consortium, load_consortium

app = typer.Typer(help="The consortium's roster of site cards.", no_args_is_help=True)


@app.command("init")
def init_command(
    site_card: Annotated[list[Path], typer.Option("--site-card", help="a site's site-card.json (repeat per site)")],
    out: Annotated[Path, typer.Option("--out", help="consortium home: consortium.json is written there")],
) -> None:
    """Check every site card (fingerprint, self-signature, unique id and key); write consortium.json."""
    path = init_consortium(site_card, out)
    doc = load_consortium(path)
    for site, card in doc["cards"].items():
        typer.echo(f"{site}  {card['fingerprint']}")
    typer.echo(f"roster_sha256 {doc['roster_sha256']}")
    typer.echo(f"wrote {path}", err=True)
