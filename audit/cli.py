"""``pharmafl ledger ...``: verify, export, prove, head, keys (a Typer sub-app).

Mounted by the main CLI as ``app.add_typer(ledger_app, name="ledger")``. Every command
takes a ledger as a SQLite path, a run directory holding ``ledger.db``, or a
``postgresql+psycopg://`` URL; ``verify`` also takes an exported bundle directory (a
database is read by :mod:`pharmafl.audit.dbsource` and checked by the same functions).

Exit codes: 0 success; 1 verification failed (``FAIL: seq N: why``), a proof did not
verify, or ``export`` refused a ledger that does not verify; 2 bad input (``error: ...``
on stderr, saying what to fix).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pharmafl.audit.errors import LedgerError

app = typer.Typer(
    name="ledger",
    help="Verify, export and prove the audit ledger.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Source = Annotated[str, typer.Argument(help="ledger.db path, run directory, or postgresql+psycopg:// URL")]


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@app.command()
def verify(
    path: Annotated[str, typer.Argument(help="bundle directory, SQLite file, run directory, or postgresql:// URL")],
    trusted_head: Annotated[Path | None, typer.Option(help="checkpoint JSON received out of band")] = None,
    trusted_keys: Annotated[Path | None, typer.Option(help="keys.json (or bundle) received out of band")] = None,
    roster: Annotated[Path | None, typer.Option(help="the consortium.json the sites agreed to")] = None,
    witnesses: Annotated[
        int | None,
        typer.Option(help="cosignatures each checkpoint of the run needs (default: a majority of the pinned sites)"),
    ] = None,
    jobs: Annotated[int | None, typer.Option(help="processes for signature checks (default: all cores)")] = None,
) -> None:
    """Recompute every hash, link, signature, statement, checkpoint and cosignature; print OK or the first bad seq."""
    from pharmafl.audit.dbsource import verify_target
    from pharmafl.audit.verify import VerificationError

    try:
        typer.echo(
            verify_target(
                path,
                trusted_head=trusted_head and str(trusted_head),
                trusted_keys=trusted_keys and str(trusted_keys),
                roster=roster and str(roster),
                witnesses=witnesses,
                jobs=jobs,
            )
        )
    except VerificationError as err:
        typer.echo(f"{'ERROR' if err.unreadable else 'FAIL'}: {err}")
        raise typer.Exit(2 if err.unreadable else 1) from None


@app.command()
def export(
    source: Source,
    out: Annotated[Path, typer.Option("--out", help="new (or empty) directory for the bundle")],
    force: Annotated[
        bool, typer.Option(help="export a ledger that does not verify, every row as it is (for investigation)")
    ] = False,
) -> None:
    """Write an evidence bundle: entries (JSONL, Parquet), keys, checkpoints, cosignatures, manifest.

    Refuses a ledger that does not verify (exit 1, naming the first bad seq) unless --force.
    """
    from pharmafl.audit.bundle import ExportRefused, export as export_bundle

    try:
        path = export_bundle(source, out, force=force)
    except ExportRefused as err:
        typer.echo(f"FAIL: {err}", err=True)
        raise typer.Exit(1) from None
    except LedgerError as err:
        _fail(str(err))
    manifest = json.loads((path / "manifest.json").read_text())
    typer.echo(
        f"exported {manifest['entries']} entries, {manifest['checkpoints']} checkpoints, "
        f"{manifest['cosignatures']} cosignatures to {path} (root {manifest['root_hash']})"
    )


@app.command()
def prove(
    source: Source,
    inclusion: Annotated[int | None, typer.Option(help="prove entry SEQ is in the tree", metavar="SEQ")] = None,
    consistency: Annotated[
        tuple[int, int] | None, typer.Option(help="prove tree OLD is a prefix of tree NEW", metavar="OLD NEW")
    ] = None,
    tree_size: Annotated[
        int | None, typer.Option(help="tree size for --inclusion (default: latest checkpoint covering SEQ)")
    ] = None,
) -> None:
    """Print an RFC 9162 inclusion or consistency proof as JSON, verified."""
    from pharmafl.audit import proofs
    from pharmafl.audit.ledger import Ledger

    if (inclusion is None) == (consistency is None):
        _fail("give exactly one of --inclusion SEQ or --consistency OLD NEW")
    try:
        with Ledger.open(source) as ledger:
            proof = (
                proofs.inclusion(ledger, inclusion, tree_size)
                if inclusion is not None
                else proofs.consistency(ledger, *consistency)
            )
    except LedgerError as err:
        _fail(str(err))
    typer.echo(json.dumps(proof, indent=2))
    if not proof["verified"]:
        typer.echo("FAIL: the proof does not verify against the ledger's roots and checkpoints", err=True)
        raise typer.Exit(1)


@app.command()
def head(
    source: Source,
    out: Annotated[Path | None, typer.Option(help="write the checkpoint here (else stdout)")] = None,
) -> None:
    """The latest signed checkpoint, to hand to a regulator as --trusted-head."""
    from pharmafl.audit.ledger import Ledger

    try:
        with Ledger.open(source) as ledger:
            checkpoints = ledger.checkpoints()
    except LedgerError as err:
        _fail(str(err))
    if not checkpoints:
        _fail(f"{source} has no checkpoint yet; a run writes one after every round (or call Ledger.checkpoint())")
    line = checkpoints[-1].to_json_line() + "\n"
    if out is None:
        typer.echo(line, nl=False)
    else:
        out.write_text(line, encoding="utf-8")
        typer.echo(f"wrote checkpoint of tree size {checkpoints[-1].tree_size} to {out}")


@app.command()
def keys(
    keystore: Annotated[Path, typer.Argument(help="key-store directory (e.g. RUN/keys)")],
    ledger: Annotated[str | None, typer.Option(help="also show where each key is registered in this ledger")] = None,
) -> None:
    """List the actors in a key store with their public-key fingerprints (no passphrase needed)."""
    from pharmafl.audit.keys import FORMAT

    files = sorted(keystore.glob("*.key.json")) if keystore.is_dir() else []
    if not files:
        _fail(f"{keystore}: no *.key.json key files there; pass the key-store directory (e.g. RUN/keys)")
    registered: dict = {}
    if ledger is not None:
        from pharmafl.audit.ledger import Ledger

        try:
            with Ledger.open(ledger) as opened:
                registered = opened.registered_keys()
        except LedgerError as err:
            _fail(str(err))
    for file in files:
        record = json.loads(file.read_text())
        if record.get("format") != FORMAT:
            _fail(f"{file}: not a {FORMAT} key file")
        actor, fp = record["actor"], record["fingerprint"]
        where = ""
        if ledger is not None:
            reg = registered.get(actor)
            where = (
                "  not registered"
                if reg is None
                else f"  registered at seq {reg['seq']}"
                if reg["fingerprint"] == fp
                else f"  MISMATCH: ledger has {reg['fingerprint']}"
            )
        typer.echo(f"{actor}\t{fp}{where}")
