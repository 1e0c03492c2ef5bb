"""The ``pharmafl`` command line (Typer; ``--help`` on every command).

User errors (:class:`~pharmafl.errors.PharmaflError`) print one line saying what is wrong
and how to fix it, and exit with status 1; no traceback. Usage errors exit with 2.
"""

from __future__ import annotations

import sys

import click
import typer
from rich.console import Console

from pharmafl.errors import PharmaflError

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    name="pharmafl",
    help="Auditable federated learning for drug-target interaction.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _mount_subcommands() -> None:
    from pharmafl.compliance import cli as cli_compliance
    from pharmafl.pipeline import cli_central, cli_run, cli_secure

    cli_run.register(app)
    cli_central.register(app)
    cli_secure.register(app)
    cli_compliance.register(app)  # report, sign, users, evidence
    for module, name, help_text in (
        ("pharmafl.sites.data_cli", "data", "Fetch, validate and import datasets."),
        ("pharmafl.audit.cli", "ledger", "Verify, export and prove the audit ledger."),
        ("pharmafl.sites.site_cli", "site", "A site's home: init, card, accept a consortium, audit a ledger."),
        ("pharmafl.pipeline.cli_consortium", "consortium", "The coordinator's roster of site cards."),
        ("pharmafl.pipeline.secure_agg.cli_party", "party", "An aggregation party: init, card, accept, serve."),
    ):
        sub = __import__(module, fromlist=["app"]).app
        app.add_typer(sub, name=name, help=help_text)


def main(argv: list[str] | None = None) -> int:
    _mount_subcommands()
    try:
        code = app(args=argv, standalone_mode=False)  # a command's typer.Exit(n) comes back as n
    except PharmaflError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return 1
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        err_console.print("aborted")
        return 1
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
