"""``pharmafl users ...``, ``pharmafl report``, ``pharmafl sign``, ``pharmafl evidence ...``.

Every command that acts for a user asks for that user's password (hidden prompt; for
scripts ``$PHARMAFL_PASSWORD``, and ``$PHARMAFL_NEW_PASSWORD`` for a new one) and records
the action in the run's ledger, which needs the run's key-store passphrase
(``$PHARMAFL_KEY_PASSPHRASE``, asked for on a terminal when unset). Refusals print one
``error:`` line and exit 1, after being recorded; a missing run or ledger, or any other
unreadable input, exits 2. ``users list --json`` and ``evidence verify --json`` print one JSON
document on stdout; ``report`` and ``evidence`` draw progress on stderr (``--quiet``: none).
Heavy imports (the database, pandas, the renderers) stay inside the commands.
"""

from __future__ import annotations

import enum
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Literal

import typer

from pharmafl.console import emit_json, progress

PASSWORD_ENV, NEW_PASSWORD_ENV = "PHARMAFL_PASSWORD", "PHARMAFL_NEW_PASSWORD"

users_app = typer.Typer(
    name="users",
    help="Users, roles and credentials (21 CFR 11.10(d), 11.300).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
evidence_app = typer.Typer(
    name="evidence",
    help="Evidence packages for regulators: export and verify.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Run = Annotated[Path, typer.Argument(help="run directory (holds ledger.db or names ledger.url in config.yaml)")]
Acting = Annotated[str, typer.Option("--user", help="your user id (you are asked for your password)")]
Target = Annotated[str, typer.Option("--id", help="the user id acted upon")]
Json = Annotated[bool, typer.Option("--json", help="print the result as one JSON document on stdout")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar on stderr")]
RoleName = Literal["data_scientist", "qa", "regulator", "admin"]  # compliance.roles.Role
Meaning = Literal["authored", "reviewed", "approved"]  # compliance.roles.MEANINGS


class ReportFormat(str, enum.Enum):
    """``report --format`` (repeatable: Typer 0.29 takes a list of an Enum, not of a Literal)."""

    PDF = "pdf"
    HTML = "html"
    PARQUET = "parquet"
    ALL = "all"  # compliance.report.FORMATS


def _secret(env: str, prompt: str, confirm: bool = False) -> str:
    value = os.environ.get(env)
    if value:
        return value
    if not sys.stdin.isatty():
        from pharmafl.compliance.errors import ComplianceError

        raise ComplianceError(f"{prompt}: no terminal to ask on; run interactively or set {env}")
    return typer.prompt(prompt, hide_input=True, confirmation_prompt=confirm)


def _system_passphrase() -> str:
    from pharmafl.audit.keys import PASSPHRASE_ENV

    return _secret(PASSPHRASE_ENV, "Key-store passphrase of the run (system signing keys)")


@contextmanager
def _access(run: Path) -> Iterator:
    from pharmafl.compliance.access import AccessControl, ledger_target

    ledger_target(run)  # a missing run is exit 2 before any passphrase is asked for
    with AccessControl.open(run, _system_passphrase()) as ac:
        yield ac


def _login(ac, user: str):
    return ac.login(user, _secret(PASSWORD_ENV, f"Password for {user}"))


@users_app.command("init")
def init(
    run: Run,
    admin: Annotated[str, typer.Option(help="user id of the first admin")],
    name: Annotated[str, typer.Option(help="the admin's full (printed) name")],
    min_password_length: Annotated[int, typer.Option(help="shortest password accepted, in characters")] = 12,
    password_max_age_days: Annotated[
        int, typer.Option(help="days after which a password expires and must be changed")
    ] = 90,
    max_failed_logins: Annotated[
        int, typer.Option(help="failed logins in a row that lock an account until an admin unlocks it")
    ] = 5,
) -> None:
    """Create the first admin (only while the run has no users) and the password policy."""
    from pharmafl.compliance.credentials import PasswordPolicy

    policy = PasswordPolicy(
        min_length=min_password_length, max_age_days=password_max_age_days, max_failed_logins=max_failed_logins
    )
    with _access(run) as ac:
        user = ac.init(admin, name, _secret(NEW_PASSWORD_ENV, f"New password for {admin}", confirm=True), policy)
    typer.echo(f"created admin {user.user_id} ({user.full_name}); policy: {policy.as_dict()}")


@users_app.command("create")
def create(
    run: Run,
    user: Acting,
    id: Target,
    name: Annotated[str, typer.Option(help="full (printed) name")],
    role: Annotated[RoleName, typer.Option(help="the user's role")],
) -> None:
    """Create a user with a temporary password; they set their own with `users passwd` before anything else."""
    with _access(run) as ac:
        session = _login(ac, user)
        made = ac.create_user(
            session, id, name, role, _secret(NEW_PASSWORD_ENV, f"Temporary password for {id}", confirm=True)
        )
    typer.echo(
        f"created {made.user_id} ({made.full_name}, {made.role.value}); they must now run "
        f"`pharmafl users passwd {run} --user {made.user_id}`"
    )


@users_app.command("passwd")
def passwd(run: Run, user: Acting) -> None:
    """Change your password (also when expired); the first change enrols your signing key."""
    with _access(run) as ac:
        changed = ac.change_password(
            user,
            _secret(PASSWORD_ENV, f"Current password for {user}"),
            _secret(NEW_PASSWORD_ENV, f"New password for {user}", confirm=True),
        )
    typer.echo(f"password changed for {changed.user_id}; signing key {changed.public_key[:16]}...")


@users_app.command("role")
def role(run: Run, user: Acting, id: Target, role: Annotated[RoleName, typer.Option(help="the new role")]) -> None:
    """Change a user's role (admin)."""
    with _access(run) as ac:
        changed = ac.set_role(_login(ac, user), id, role)
    typer.echo(f"{changed.user_id} is now {changed.role.value}")


@users_app.command("unlock")
def unlock(run: Run, user: Acting, id: Target) -> None:
    """Unlock an account locked after failed logins (admin)."""
    with _access(run) as ac:
        ac.unlock(_login(ac, user), id)
    typer.echo(f"{id} unlocked")


@users_app.command("disable")
def disable(run: Run, user: Acting, id: Target) -> None:
    """Disable an account for good, e.g. lost credentials (admin); its id is never reused."""
    with _access(run) as ac:
        ac.disable(_login(ac, user), id)
    typer.echo(f"{id} disabled")


@users_app.command("login")
def login(run: Run, user: Acting) -> None:
    """Check your credentials (recorded as user_login)."""
    with _access(run) as ac:
        session = _login(ac, user)
    typer.echo(f"authenticated {session.user.user_id} ({session.user.role.value}) at seq {session.login_seq}")


@users_app.command("list")
def list_users(run: Run, as_json: Json = False) -> None:
    """Users, roles and status (no secrets; no login needed): one tab-separated line each, or --json."""
    from pharmafl.audit.storage import Storage, refuse_missing, resolve_target
    from pharmafl.compliance.access import ledger_target
    from pharmafl.compliance.users import UserStore

    storage = Storage(resolve_target(ledger_target(run)))
    try:
        refuse_missing(storage)  # exit 2: no ledger there
        users = [u.public_view() for u in UserStore(storage).all()]
    finally:
        storage.dispose()
    if as_json:
        emit_json({"run": str(run), "users": users})
        return
    for v in users:
        typer.echo(
            f"{v['user_id']}\t{v['role']}\t{v['status']}\t{'enrolled' if v['enrolled'] else 'not enrolled'}"
            f"\t{v['full_name']}"
        )


def report_command(
    run: Run,
    user: Acting,
    out: Annotated[Path, typer.Option(help="new (or empty) folder for the report, e.g. RUN/reports/r1")],
    format: Annotated[list[ReportFormat] | None, typer.Option(help="what to write (repeatable; default: all)")] = None,
    round: Annotated[list[int] | None, typer.Option(help="audit trail: only these rounds")] = None,
    site: Annotated[list[str] | None, typer.Option(help="audit trail: only these sites")] = None,
    event_type: Annotated[list[str] | None, typer.Option(help="audit trail: only these event types")] = None,
    quiet: Quiet = False,
) -> None:
    """Generate the Part 11-style report of a run (only from a ledger that verifies: else exit 1)."""
    from pharmafl.compliance.report import generate_report, load_report, parse_formats
    from pharmafl.compliance.trail import TrailFilter

    chosen = [f.value for f in format or [ReportFormat.ALL]]
    formats = parse_formats("all" if "all" in chosen else ",".join(dict.fromkeys(chosen)))
    keep = TrailFilter(tuple(round or ()), tuple(site or ()), tuple(event_type or ()))
    with _access(run) as ac:
        session = _login(ac, user)  # before the bar: the password prompt must not fight it
        with progress(quiet=quiet) as bar:
            task = bar.add_task("verifying the ledger, then writing the report", total=None)
            path = generate_report(
                ac,
                session,
                run,
                out,
                formats=formats,
                keep=keep,
                on_progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
    typer.echo(
        f"report in {path} (record SHA-256 {load_report(path)[1]}); sign it with "
        f"`pharmafl sign {path} --user QA_ID --meaning approved`"
    )


def _run_of(record: Path) -> Path:
    for folder in [record if record.is_dir() else record.parent, *record.resolve().parents]:
        if (folder / "ledger.db").is_file() or (folder / "plan.json").is_file():
            return folder
    from pharmafl.compliance.errors import ComplianceError

    raise ComplianceError(f"cannot tell which run {record} belongs to; pass --run RUN")


def sign_command(
    record: Annotated[Path, typer.Argument(help="a report folder (or its report.json), or RUN/model.safetensors")],
    user: Acting,
    meaning: Annotated[Meaning, typer.Option(help="what the signature means (21 CFR 11.50)")],
    run: Annotated[
        Path | None, typer.Option(help="the run (default: the folder above RECORD holding ledger.db)")
    ] = None,
) -> None:
    """E-sign a record: user id and password at every signing, bound to the record's SHA-256."""
    from pharmafl.compliance.signatures import manifestation
    from pharmafl.compliance.signing import sign

    with _access(run or _run_of(record)) as ac:
        payload = sign(ac, _login(ac, user), record, meaning)
    typer.echo(f"signed: {manifestation(payload)}; record SHA-256 {payload['record_hash']}")


@evidence_app.command("export")
def evidence_export(
    run: Run,
    user: Acting,
    report: Annotated[list[Path], typer.Option(help="a report folder to include (repeatable)")],
    out: Annotated[Path, typer.Option(help="new (or empty) folder for the package")],
    quiet: Quiet = False,
) -> None:
    """Ledger export + reports + signatures + key bundle + checkpoints + SHA-256 manifest."""
    from pharmafl.compliance.evidence import export_evidence

    with _access(run) as ac:
        session = _login(ac, user)
        with progress(quiet=quiet) as bar:
            bar.add_task("exporting and verifying the evidence package", total=None)
            path = export_evidence(ac, session, report, out)
    typer.echo(
        f"evidence package in {path}; verify it offline with "
        f"`python -m pharmafl.audit.evidence {path} --trusted-head HEAD.json`"
    )


@evidence_app.command("verify")
def evidence_verify(
    package: Annotated[Path, typer.Argument(help="the evidence package folder")],
    trusted_head: Annotated[Path | None, typer.Option(help="checkpoint received out of band")] = None,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """The standalone verifier (same as `python -m pharmafl.audit.evidence`); no login needed.

    Prints ``OK: ...`` (exit 0) or ``FAIL: why`` (exit 1); ``ERROR: why`` on stderr when the package
    cannot be read (exit 2). With --json: the result, or ``{"ok": false, "seq", "reason", "unreadable"}``.
    """
    from pharmafl.audit.evidence import verify_package
    from pharmafl.audit.verify import VerificationError

    try:
        with progress(quiet=quiet) as bar:
            task = bar.add_task("verifying the package's ledger", total=None)
            result = verify_package(
                str(package),
                trusted_head=trusted_head and str(trusted_head),
                on_progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
    except VerificationError as err:
        if as_json:
            emit_json(err.as_dict())
        else:
            typer.echo(f"{'ERROR' if err.unreadable else 'FAIL'}: {err}", err=err.unreadable)
        raise typer.Exit(2 if err.unreadable else 1) from None
    if as_json:
        emit_json(result.as_dict())
    else:
        typer.echo(result.line())


def register(app: typer.Typer) -> None:
    """Mount on the main CLI: ``report``, ``sign``, ``explore``, ``users ...``, ``evidence ...``."""
    from pharmafl.compliance.explorer.cli import explore_command

    app.command("report")(report_command)
    app.command("explore")(explore_command)
    app.command("sign")(sign_command)
    app.add_typer(users_app, name="users")
    app.add_typer(evidence_app, name="evidence")
