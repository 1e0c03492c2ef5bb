"""The ``pharmafl`` command line (Typer; ``--help`` on every command).

Every command keeps to these conventions (``tests/pipeline/test_cli_contract.py`` checks them
on the whole command tree, so a new command is covered without writing a test for it):

* **Exit codes** (:mod:`pharmafl.errors`): ``0`` success; ``1`` verification failed or the
  action was refused (:class:`~pharmafl.errors.RefusedError`); ``2`` usage error or unreadable
  input (a missing file, a bad value, a bad option; any other
  :class:`~pharmafl.errors.PharmaflError`). Ctrl-C exits ``130``.
* **Errors** print one line on stderr, ``error: <what> (<how to fix>)``, and never a traceback:
  :func:`invoke` turns Typer's usage exceptions (``typer._click``'s ``UsageError`` family:
  Typer 0.29 vendors click, so ``click``'s own classes never match) and ``PharmaflError`` into
  that line and the exit code above.
* **Choices** are ``typing.Literal[...]`` annotations, e.g.
  ``batching: Annotated[Literal["grouped", "random"], typer.Option(help=...)] = "grouped"``:
  Typer 0.29 (which has no ``click_type``) lists them in ``--help`` (``<grouped|random>``) and
  refuses any other value as a usage error that names the valid ones; the value stays a plain
  ``str``, as in the pydantic config's ``Literal`` fields.
* **Paths**: what a command reads is positional (``pharmafl site card HOME``); what it writes
  or creates is an option (``--out``, ``--home`` of ``init``).
* **Fast help**: a command module imports nothing heavy (torch, torch_geometric, rdkit, opacus,
  nvflare, crypten, pandas, pyarrow) at import time; those imports go inside the command body,
  so ``pharmafl --help`` and every ``--help`` stay under a second.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from typer._click import exceptions as click_exc

from pharmafl import __version__
from pharmafl.errors import EXIT_FAILED, EXIT_USAGE, PharmaflError

EXIT_INTERRUPTED = 130  # Ctrl-C, the Unix convention (128 + SIGINT)
DEPENDENCIES = ("torch", "torch-geometric", "rdkit", "opacus", "nvflare", "crypten", "cryptography", "pydantic")

EPILOG = (
    "Exit codes: 0 success; 1 verification failed or action refused; "
    "2 usage error or unreadable input (one 'error: ...' line on stderr).\n\n"
    "Results go to stdout, progress and errors to stderr. 'pharmafl COMMAND --help' for each command."
)

app = typer.Typer(
    name="pharmafl",
    help="Auditable federated learning for drug-target interaction.",
    epilog=EPILOG,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


# --- --version -------------------------------------------------------------------------------


def git_commit(where: Path | None = None) -> str | None:
    """The commit of the git checkout the package sits in (``+dirty`` with local changes), or None
    when it is installed outside one. ``safe.directory``: a checkout owned by another user."""
    here = (where or Path(__file__).resolve().parents[1]).resolve()
    git = ["git", "-c", f"safe.directory={here}", "-C", str(here)]
    try:
        top = subprocess.run([*git, "rev-parse", "--show-toplevel", "HEAD"], capture_output=True, text=True, timeout=5)
        lines = top.stdout.split()
        if top.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != here:
            return None  # not a checkout, or the package is a folder inside some other repository
        dirty = subprocess.run([*git, "diff", "--quiet", "HEAD"], capture_output=True, timeout=5).returncode == 1
    except (OSError, subprocess.SubprocessError):
        return None
    return lines[1] + ("+dirty" if dirty else "")


def version_text() -> str:
    """``pharmafl X (git C)``, then the key dependencies' versions, read from their metadata
    (never imported: ``--version`` stays fast and loads no torch)."""
    commit = git_commit()
    lines = [f"pharmafl {__version__}" + (f" (git {commit})" if commit else "")]
    lines.append(f"python {sys.version.split()[0]}")
    for name in DEPENDENCIES:
        try:
            lines.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            lines.append(f"{name} not installed")
    return "\n".join(lines)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(version_text())
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            is_eager=True,
            callback=_show_version,
            help="Show the version, the git commit and the key dependencies' versions, and exit.",
        ),
    ] = False,
) -> None:
    """Auditable federated learning for drug-target interaction."""


# --- the command tree ------------------------------------------------------------------------


def mount_subcommands() -> typer.Typer:
    """The whole command tree on :data:`app` (once; :func:`main` does it, so that importing this
    module for :func:`invoke` stays cheap)."""
    if app.registered_groups:
        return app
    from pharmafl.audit import cli as cli_ledger
    from pharmafl.compliance import cli as cli_compliance
    from pharmafl.pipeline import cli_central, cli_run, cli_secure

    cli_run.register(app)
    cli_central.register(app)
    cli_compliance.register(app)  # report, sign, users, evidence
    cli_secure.register(cli_ledger.app)  # ledger prove-update: mounted here, audit imports no pipeline
    for module, name, help_text in (
        ("pharmafl.sites.data_cli", "data", "Fetch, validate and import datasets."),
        ("pharmafl.audit.cli", "ledger", "Verify, export and prove the audit ledger; a site proves its update."),
        ("pharmafl.sites.site_cli", "site", "A site's home: init, card, accept a consortium, audit a ledger."),
        ("pharmafl.pipeline.cli_consortium", "consortium", "The coordinator's roster of site cards."),
        ("pharmafl.pipeline.secure_agg.cli_party", "party", "An aggregation party: init, card, accept, serve."),
    ):
        sub = __import__(module, fromlist=["app"]).app
        app.add_typer(sub, name=name, help=help_text)
    return app


# --- running it: exit codes and one-line errors ----------------------------------------------


def _error(message: str) -> None:
    from rich.text import Text

    from pharmafl.console import stderr

    stderr.print(Text.assemble(("error:", "bold red"), " ", message))


def _usage_line(exc: click_exc.UsageError, prog_name: str) -> str:
    """One line: what is wrong, and where the help is."""
    what = " ".join(exc.format_message().split()).rstrip(".").replace(": Value error, ", ": ")  # pydantic's prefix
    command = exc.ctx.command_path if exc.ctx is not None else prog_name
    return f"{what} (see '{command} --help')"


def invoke(typer_app: typer.Typer, argv: list[str] | None = None, prog_name: str = "pharmafl") -> int:
    """Run ``typer_app`` on ``argv`` (default ``sys.argv[1:]``); the exit code, never a traceback
    for a usage error, a :class:`PharmaflError`, an abort or an interrupt."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        code = typer_app(args=args, prog_name=prog_name, standalone_mode=False)  # typer.Exit(n) returns n
    except click_exc.NoArgsIsHelpError:
        return EXIT_USAGE  # the help is printed already: a group needs a command
    except click_exc.UsageError as exc:
        _error(_usage_line(exc, prog_name))
        return EXIT_USAGE
    except click_exc.FileError as exc:
        _error(" ".join(exc.format_message().split()))
        return EXIT_USAGE
    except click_exc.ClickException as exc:
        _error(" ".join(exc.format_message().split()))
        return exc.exit_code
    except PharmaflError as exc:
        _error(str(exc))
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        _error("aborted")
        return EXIT_FAILED
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED
    return code if isinstance(code, int) else 0


def main(argv: list[str] | None = None) -> int:
    """The ``pharmafl`` entry point (pyproject ``[project.scripts]``)."""
    return invoke(mount_subcommands(), argv)


if __name__ == "__main__":
    sys.exit(main())
