"""``pharmafl party``: what an aggregation party runs at its own organisation.

    pharmafl party init --id helper-1 --home HOME [--role helper|server]
    pharmafl party card HOME                 # the public card, to hand to the coordinator
    pharmafl party accept HOME consortium.json
    pharmafl party serve HOME --listen HOST:PORT

The passphrase of the party's keys comes from ``$PHARMAFL_PARTY_PASSPHRASE``. ``serve`` runs
until stopped (SIGTERM / Ctrl-C) and serves any number of runs and rounds
(:mod:`pharmafl.pipeline.secure_agg.service`). Runnable as
``python -m pharmafl.pipeline.secure_agg.cli_party`` too (the simulator starts it so).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Literal

import typer

from pharmafl.errors import ConfigError

app = typer.Typer(
    help="An aggregation party: its keys, its card, the consortia it serves, its service.", no_args_is_help=True
)
Home = Annotated[Path, typer.Argument(metavar="HOME", help="the party home (pharmafl party init --home)")]


@app.command("init")
def init_command(
    party: Annotated[str, typer.Option("--id", help="the party id, e.g. helper-1")],
    home: Annotated[Path, typer.Option("--home", help="the party home to create (new or empty directory)")],
    role: Annotated[
        Literal["helper", "server"],
        typer.Option(
            help="'helper' (an independent organisation) or 'server' (the coordinator's "
            "own party, which receives the sum)"
        ),
    ] = "helper",
) -> None:
    """Generate the party's signing, HPKE and TLS keys at the party; write its card."""
    from pharmafl.pipeline.secure_agg.party_home import PASSPHRASE_ENV, PartyHome

    passphrase = os.environ.get(PASSPHRASE_ENV, "")
    if not passphrase:
        raise ConfigError(f"set ${PASSPHRASE_ENV} to the passphrase that will protect {party}'s keys")
    h = PartyHome.init(home, party, role=role, passphrase=passphrase)
    typer.echo(f"{h.party} ({h.role})  signing {h.card['fingerprint']}  tls {h.card['tls_fingerprint']}")
    typer.echo(f"card: {home / 'party-card.json'}", err=True)


@app.command("card")
def card_command(home: Home) -> None:
    """Print the party card (public keys and fingerprints only)."""
    from pharmafl.sites.home import read_json
    from pharmafl.sites.party_card import check_party_card

    card = check_party_card(read_json(home / "party-card.json", "party card"), str(home / "party-card.json"))
    typer.echo(open(home / "party-card.json", encoding="utf-8").read().rstrip())
    del card


@app.command("accept")
def accept_command(
    home: Home,
    consortium: Annotated[Path, typer.Argument(metavar="CONSORTIUM", help="the coordinator's consortium.json")],
):
    """Agree to a consortium: its site and party cards checked, this party's card in it unchanged."""
    from pharmafl.pipeline.secure_agg.party_home import PartyHome
    from pharmafl.sites.home import read_json

    party = PartyHome.open(home)
    digest = party.accept_consortium(read_json(consortium, "consortium"))
    typer.echo(f"{party.party} accepted roster {digest}")


def _listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"--listen {value!r}: expected HOST:PORT, e.g. 127.0.0.1:9101 (port 0: any free one)")
    return host, int(port)


@app.command("serve")
def serve_command(
    home: Home,
    listen: Annotated[str, typer.Option(help="HOST:PORT to listen on (TLS)")] = "127.0.0.1:9101",
    ready_file: Annotated[Path | None, typer.Option(help="write 'HOST PORT' here once listening")] = None,
    transcript: Annotated[
        Path | None, typer.Option(help="tests only: save what the party receives", hidden=True)
    ] = None,
) -> None:
    """Serve runs and rounds until stopped."""
    from pharmafl.fileio import write_bytes_atomic
    from pharmafl.pipeline.secure_agg.party_home import PartyHome
    from pharmafl.pipeline.secure_agg.service import PartyService

    host, port = _listen(listen)
    service = PartyService(PartyHome.open(home), host, port, transcript_dir=transcript)
    signal.signal(signal.SIGTERM, lambda *_: service.shutdown())
    typer.echo(f"{service.home.party} serving on {host}:{service.port}", err=True)
    if ready_file is not None:
        write_bytes_atomic(ready_file, f"{host} {service.port}".encode())
    try:
        service.serve_forever()
    except KeyboardInterrupt:
        service.shutdown()


def main(argv: list[str] | None = None) -> int:
    """``python -m pharmafl.pipeline.secure_agg.cli_party``: the exit codes and one-line errors of
    ``pharmafl party`` (:func:`pharmafl.pipeline.cli.invoke`)."""
    from pharmafl.pipeline.cli import invoke

    return invoke(app, argv, prog_name="pharmafl party")


if __name__ == "__main__":
    sys.exit(main())
