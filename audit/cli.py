"""``pharmafl ledger ...``: verify, export, prove, head, keys (a Typer sub-app).

Mounted by the main CLI as ``app.add_typer(ledger_app, name="ledger")``. Every command
takes a ledger as a SQLite path, a run directory holding ``ledger.db``, or a
``postgresql+psycopg://`` URL; ``verify`` also takes an exported bundle directory (a
database is read by :mod:`pharmafl.audit.dbsource` and checked by the same functions).

Exit codes: 0 success; 1 verification failed (``FAIL: seq N: why``), a proof did not
verify, or ``export`` refused a ledger that does not verify; 2 bad or unreadable input, a
missing ledger included (``error: ...`` on stderr, saying what to fix). ``--json`` puts the
result (or the verification failure) on stdout as one JSON document; progress bars draw on
stderr (``--quiet``: none). Imports stay light here: the database and the verifier load
inside the commands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pharmafl.audit.errors import LedgerError
from pharmafl.console import emit_json, progress

app = typer.Typer(
    name="ledger",
    help="Verify, export and prove the audit ledger.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Source = Annotated[str, typer.Argument(help="ledger.db path, run directory, or postgresql+psycopg:// URL")]
Json = Annotated[bool, typer.Option("--json", help="print the result as one JSON document on stdout")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar on stderr")]


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _open(source: str):
    """The ledger at ``source``, read-only; a missing one is bad input (exit 2), naming what is accepted."""
    from pharmafl.audit.ledger import Ledger

    try:
        return Ledger.open(source)
    except LedgerError as err:
        hint = ""
        if Path(source).is_dir() and any(Path(source).glob("*.key.json")):
            hint = f"; {source} is a key store: pass the run (or its ledger) and --keystore {source}"
        _fail(f"{err}{hint}")


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
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Recompute every hash, link, signature, statement, checkpoint and cosignature; print OK or the first bad seq.

    Prints ``OK: N entries, ...`` (exit 0) or ``FAIL: seq N: why`` (exit 1); ``ERROR: why`` on stderr
    when the input cannot be read (exit 2). With --json: the result, or
    ``{"ok": false, "seq": N, "reason": ..., "unreadable": ...}``, on stdout, same exit codes.
    """
    from pharmafl.audit.dbsource import verify_target
    from pharmafl.audit.verify import VerificationError

    try:
        with progress(quiet=quiet) as bar:
            task = bar.add_task("verifying entries", total=None)
            result = verify_target(
                path,
                trusted_head=trusted_head and str(trusted_head),
                trusted_keys=trusted_keys and str(trusted_keys),
                roster=roster and str(roster),
                witnesses=witnesses,
                jobs=jobs,
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


@app.command()
def export(
    source: Source,
    out: Annotated[Path, typer.Option("--out", help="new (or empty) directory for the bundle")],
    force: Annotated[
        bool, typer.Option(help="export a ledger that does not verify, every row as it is (for investigation)")
    ] = False,
    quiet: Quiet = False,
) -> None:
    """Write an evidence bundle: entries (JSONL, Parquet), keys, checkpoints, cosignatures, manifest.

    Refuses a ledger that does not verify (exit 1, naming the first bad seq) unless --force.
    """
    from pharmafl.audit.bundle import ExportRefused, export as export_bundle

    try:
        with progress(quiet=quiet) as bar:
            bar.add_task(f"exporting and verifying {source}", total=None)
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

    if (inclusion is None) == (consistency is None):
        _fail("give exactly one of --inclusion SEQ or --consistency OLD NEW")
    try:
        with _open(source) as ledger:
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
    as_json: Annotated[
        bool, typer.Option("--json", help="print the checkpoint as a JSON document on stdout (also with --out)")
    ] = False,
) -> None:
    """The latest signed checkpoint, to hand to a regulator as --trusted-head."""
    try:
        with _open(source) as ledger:
            checkpoints = ledger.checkpoints()
    except LedgerError as err:
        _fail(str(err))
    if not checkpoints:
        _fail(f"{source} has no checkpoint yet; a run writes one after every round (or call Ledger.checkpoint())")
    line = checkpoints[-1].to_json_line() + "\n"
    if out is not None:
        out.write_text(line, encoding="utf-8")
    if as_json:
        emit_json(json.loads(line))
    elif out is None:
        typer.echo(line, nl=False)
    else:
        typer.echo(f"wrote checkpoint of tree size {checkpoints[-1].tree_size} to {out}")


def _key_rows(store: dict[str, str] | None, registered: dict[str, dict]) -> list[dict]:
    """One row per actor of the key store or the ledger: fingerprints, registration seq, status
    (without a key store: the ledger's keys, each as registered)."""
    if store is None:
        store = {actor: reg["fingerprint"] for actor, reg in registered.items()}
    rows = []
    for actor in sorted(set(store) | set(registered)):
        reg, fp = registered.get(actor), store.get(actor)
        status = (
            "not in key store"
            if fp is None
            else "not registered"
            if reg is None
            else "registered"
            if reg["fingerprint"] == fp
            else "mismatch"
        )
        rows.append(
            {
                "actor": actor,
                "fingerprint": fp if fp is not None else reg["fingerprint"],
                "ledger_fingerprint": None if reg is None else reg["fingerprint"],
                "seq": None if reg is None else reg["seq"],
                "status": status,
            }
        )
    return rows


def _key_store(keystore: Path) -> dict[str, str]:
    """``actor -> fingerprint`` of the key files in ``keystore`` (no passphrase needed)."""
    from pharmafl.audit.keys import FORMAT

    files = sorted(keystore.glob("*.key.json")) if keystore.is_dir() else []
    if not files:
        _fail(f"{keystore}: no *.key.json key files there; pass the key-store directory (e.g. RUN/keys)")
    store = {}
    for file in files:
        try:
            record = json.loads(file.read_text())
            if record.get("format") != FORMAT:
                raise ValueError
            store[record["actor"]] = record["fingerprint"]
        except (OSError, ValueError, AttributeError, KeyError):
            _fail(f"{file}: not a {FORMAT} key file; restore it from backup or remove it from the key store")
    return store


@app.command()
def keys(
    source: Source,
    keystore: Annotated[
        Path | None,
        typer.Option(help="compare with this key-store directory (default: RUN/keys beside the ledger, if there)"),
    ] = None,
    as_json: Json = False,
) -> None:
    """The actors registered in the ledger and the keys in its key store, with public-key fingerprints.

    Status per actor: registered (at seq N, same key), not registered (key store only), not in key store
    (ledger only: e.g. a user's own key), mismatch (the ledger holds another key). No passphrase needed.
    """
    if keystore is None:
        beside = Path(source) if Path(source).is_dir() else Path(source).parent
        keystore = beside / "keys" if "://" not in source and (beside / "keys").is_dir() else None
    store = None if keystore is None else _key_store(keystore)
    try:
        with _open(source) as ledger:
            registered = ledger.registered_keys()
    except LedgerError as err:
        _fail(str(err))
    rows = _key_rows(store, registered)
    if as_json:
        emit_json({"ledger": source, "keystore": None if keystore is None else str(keystore), "keys": rows})
        return
    for row in rows:
        where = {
            "registered": f"registered at seq {row['seq']}",
            "not registered": "not registered",
            "not in key store": f"registered at seq {row['seq']}, not in the key store",
            "mismatch": f"MISMATCH: ledger has {row['ledger_fingerprint']}",
        }[row["status"]]
        typer.echo(f"{row['actor']}\t{row['fingerprint']}\t{where}")
