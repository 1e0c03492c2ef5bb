"""``pharmafl ledger prove-update``: a site proves what it sent under secure aggregation.

The site shows its kept update and salt (in its own home: ``SITE_HOME/runs/<run_id>/kept/
round-NNNN.*``); the command recomputes the salted commitment and finds the ledger's
``secure_shares`` entry for that site and round — the site's own signed statement — which
must hold the same commitment. Exit 0 and ``OK: ...``, or 1 and ``FAIL: ...``; 2 when the run
or the kept update is missing.

A ledger command, but it reads the site's secure-aggregation files, so it lives here and
``pipeline/cli.py`` mounts it onto the ``ledger`` sub-app (``audit`` imports nothing of ``pipeline``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pharmafl.errors import EXIT_FAILED, ConfigError


def prove_update(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="Run directory (holds ledger.db).")],
    site: Annotated[str, typer.Option(help="Site id, e.g. site-03.")],
    round: Annotated[int, typer.Option("--round", help="Round number.")],
    site_home: Annotated[
        Path | None, typer.Option(help="The site's home (default: the simulated site's, RUN/sites/<site>).")
    ] = None,
) -> None:
    """Recompute a site's commitment from its kept update and salt; match it to the ledger."""
    from pharmafl.audit import Ledger
    from pharmafl.audit.records import asserted
    from pharmafl.sites.secure_site import open_commitment

    if not (run / "ledger.db").is_file():
        raise ConfigError(f"{run} holds no ledger.db; give the run directory of a run with the ledger enabled")
    with Ledger.open(run / "ledger.db") as ledger:
        entries = list(ledger.entries())
    started = next((e.data for e in entries if e.type == "run_started"), None)
    if started is None:
        raise ConfigError(f"the ledger of {run} records no run_started; it is not a run's ledger")
    folder = (site_home or run / "sites" / site) / "runs" / started["run_id"] / "kept"
    if not (folder / f"round-{round:04d}.json").is_file():
        raise ConfigError(
            f"{folder} holds no kept update for round {round} (round-{round:04d}.json); the site "
            f"keeps them only with secure_aggregation.keep_updates: true"
        )
    opened = open_commitment(folder, round)
    if opened["site"] != site:
        raise ConfigError(f"{folder}/round-{round:04d}.json belongs to {opened['site']}, not {site}")
    recorded = [
        (e, d)
        for e in entries
        if e.type == "secure_shares"
        for who, d in [asserted(e)]
        if who == site and d.get("round") == round
    ]
    if not recorded:
        typer.echo(f"FAIL: the ledger records no shares from {site} in round {round}")
        raise typer.Exit(EXIT_FAILED)
    entry, data = recorded[0]
    if data["commitment"] != opened["commitment"]:
        typer.echo(
            f"FAIL: {site} round {round}: the kept update commits to {opened['commitment']}, "
            f"the ledger (seq {entry.seq}) records {data['commitment']}"
        )
        raise typer.Exit(EXIT_FAILED)
    typer.echo(
        f"OK: {site} round {round}: update sha256 {opened['update_sha256']} opens commitment "
        f"{opened['commitment']} recorded at ledger seq {entry.seq}, signed by {site}"
    )


def register(ledger_app: typer.Typer) -> None:
    """Add ``prove-update`` to the ``ledger`` sub-app (once)."""
    if all(c.callback is not prove_update for c in ledger_app.registered_commands):
        ledger_app.command("prove-update")(prove_update)
