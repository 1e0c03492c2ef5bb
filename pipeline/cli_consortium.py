"""``pharmafl consortium``: the coordinator builds its roster from the sites' cards, and (with
``--nvflare-server``, or ``provision`` later) NVFlare's startup kits for it (pipeline/provision.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pharmafl.errors import ConfigError

app = typer.Typer(help="The consortium's roster of site cards.", no_args_is_help=True)


@app.command("init")
def init_command(
    site_card: Annotated[list[Path], typer.Argument(metavar="SITE_CARD", help="each site's site-card.json")],
    out: Annotated[Path, typer.Option("--out", help="consortium home: consortium.json is written there")],
    party_card: Annotated[
        list[Path] | None,
        typer.Option("--party-card", help="an aggregation party's party-card.json (repeat per party)"),
    ] = None,
    nvflare_server: Annotated[
        str | None,
        typer.Option(
            "--nvflare-server",
            metavar="HOST",
            help="also provision NVFlare: the server's host name, as the sites dial "
            "it; writes OUT/nvflare/project.yml and startup kits under OUT/nvflare/workspace",
        ),
    ] = None,
    fl_port: Annotated[int, typer.Option("--fl-port", help="with --nvflare-server: the sites' port")] = 8002,
    admin_port: Annotated[
        int | None,
        typer.Option("--admin-port", help="with --nvflare-server: the admin console's port (default: --fl-port)"),
    ] = None,
    admin: Annotated[
        str | None,
        typer.Option("--admin", metavar="EMAIL", help="with --nvflare-server: the admin who submits jobs (required)"),
    ] = None,
    project: Annotated[str, typer.Option("--project", help="with --nvflare-server: the project")] = "pharmafl",
) -> None:
    """Check every site and party card (fingerprints, self-signature, unique ids and keys); write consortium.json."""
    from pharmafl.pipeline.consortium import init_consortium, load_consortium

    nvflare = _nvflare_settings(nvflare_server, fl_port, admin_port, admin, project, out)  # refused before writing
    path = init_consortium(site_card, out, party_card or [])
    doc = load_consortium(path)
    for site, card in doc["cards"].items():
        typer.echo(f"{site}  {card['fingerprint']}")
    for party, card in doc.get("parties", {}).items():
        typer.echo(f"{party} ({card['role']})  {card['fingerprint']}  tls {card['tls_fingerprint']}")
    typer.echo(f"roster_sha256 {doc['roster_sha256']}")
    typer.echo(f"wrote {path}", err=True)
    if nvflare is not None:
        _provision(doc, out / "nvflare", **nvflare)


@app.command("provision")
def provision_command(
    home: Annotated[Path, typer.Argument(metavar="HOME", help="the consortium home (holding consortium.json)")],
    nvflare_server: Annotated[str, typer.Option("--nvflare-server", metavar="HOST", help="the server's host name")],
    admin: Annotated[str, typer.Option("--admin", metavar="EMAIL", help="the admin who submits jobs")],
    fl_port: Annotated[int, typer.Option("--fl-port", help="the port the sites connect to")] = 8002,
    admin_port: Annotated[int | None, typer.Option("--admin-port", help="the admin port (default: --fl-port)")] = None,
    project: Annotated[str, typer.Option("--project", help="the NVFlare project name")] = "pharmafl",
) -> None:
    """NVFlare project.yml and startup kits for an existing consortium (as init --nvflare-server does)."""
    from pharmafl.pipeline.consortium import load_consortium

    nvflare = _nvflare_settings(nvflare_server, fl_port, admin_port, admin, project, home)
    _provision(load_consortium(home), home / "nvflare", **nvflare)


def _nvflare_settings(
    server: str | None, fl_port: int, admin_port: int | None, admin: str | None, project: str, home: Path
) -> dict | None:
    """The provisioning settings, checked; None without --nvflare-server."""
    from pharmafl.pipeline.provision import check_settings

    if server is None:
        if admin is not None or admin_port is not None:
            raise ConfigError("--admin and --admin-port provision NVFlare and need --nvflare-server HOST")
        return None
    if admin is None:
        raise ConfigError("--nvflare-server needs --admin EMAIL: the admin who will submit the jobs")
    settings = dict(
        server_host=server,
        fl_port=fl_port,
        admin_port=fl_port if admin_port is None else admin_port,
        admin=admin,
        project=project,
    )
    check_settings(**settings)
    if (home / "nvflare").exists():
        raise ConfigError(
            f"{home / 'nvflare'}: already there (an earlier provisioning); provision into a new "
            "consortium home, or move it away"
        )
    return settings


def _provision(doc: dict, where: Path, **settings) -> None:
    """NVFlare's project.yml and startup kits for the consortium (pipeline/provision.py)."""
    from pharmafl.pipeline.provision import provision, write_project

    project_yml = write_project(doc, where, **settings)
    kits = provision(project_yml, where / "workspace")
    typer.echo(f"wrote {project_yml}", err=True)
    for name, kit in kits.items():
        role = (
            "server"
            if name == settings["server_host"]
            else "admin"
            if name == settings["admin"]
            else "site"
            if name in doc["cards"]
            else "party"
        )
        typer.echo(f"kit {role} {name}  {kit}")
    typer.echo(
        "next: hand each kit to its owner; the server's runs `pharmafl consortium nvflare-config "
        "SERVER_KIT --runs RUNS`, each site's `pharmafl site nvflare-config SITE_HOME --kit KIT`; "
        "then each starts KIT/startup/start.sh",
        err=True,
    )


@app.command("nvflare-config")
def nvflare_config_command(
    kit: Annotated[Path, typer.Argument(metavar="KIT", help="the server's NVFlare startup kit")],
    runs: Annotated[Path, typer.Option("--runs", help="the folder holding the coordinator's run directories")],
) -> None:
    """Name, in the server's startup kit, the folder its runs live in (KIT/local/pharmafl.json)."""
    from pharmafl.pipeline.provision import write_server_config

    typer.echo(f"wrote {write_server_config(kit, runs)}")
