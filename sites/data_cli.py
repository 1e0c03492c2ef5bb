"""``pharmafl data``: fetch public datasets, validate site tables, import them into a store.

Mounted by the main CLI as ``pharmafl data ...``. Results (a JSON summary, a store path) go to
stdout; progress, warnings and errors to stderr. Bad input prints one ``error: ...`` line naming
file, row, id and fix, and exits with status 2 (:data:`~pharmafl.errors.EXIT_USAGE`).

The dataset folder is ``--data-dir`` in every command (``$PHARMAFL_DATA``, else
``~/.cache/pharmafl``). A target sequence longer than the model's window (``--max-len``, the
run's ``model.max_len``, default 1000) is valid but cut when tokenized: ``validate`` and
``import`` say so on stderr and in the summary's ``targets_truncated``.

Imports nothing heavy at module level (pandas, RDKit and pooch load inside the commands), so
``pharmafl data --help`` stays fast.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from pharmafl import console
from pharmafl.errors import PharmaflError
from pharmafl.sites.validation import MODEL_WINDOW, UNITS

if TYPE_CHECKING:
    from pharmafl.sites.tables import DTIDataset

app = typer.Typer(help="Public datasets and site data tables: fetch, validate, import.", no_args_is_help=True)

T = TypeVar("T")

Source = Annotated[str | None, typer.Argument(help="davis, kiba, a directory of tables, or a dataset store")]
Drugs = Annotated[Path | None, typer.Option("--drugs", help="drugs table (instead of SOURCE)")]
Targets = Annotated[Path | None, typer.Option("--targets", help="targets table (instead of SOURCE)")]
Measurements = Annotated[Path | None, typer.Option("--measurements", help="measurements table (instead of SOURCE)")]
Unit = Annotated[str | None, typer.Option("--unit", help=f"unit of an 'affinity' column: {', '.join(UNITS)}")]
DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="PHARMAFL_DATA",
        show_envvar=True,
        help="the dataset folder, where davis and kiba live (default ~/.cache/pharmafl)",
    ),
]
Quarantine = Annotated[Path | None, typer.Option("--quarantine", help="write bad rows to this CSV and drop them")]
Name = Annotated[str | None, typer.Option("--name", help="dataset name (default: from SOURCE)")]
MaxLen = Annotated[
    int,
    typer.Option(
        "--max-len",
        min=1,
        help="the model window (a run's model.max_len): warn about target sequences longer than this",
    ),
]


def _run(action: Callable[[], T]) -> T:
    try:
        return action()
    except PharmaflError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from exc


def _load(
    source: str | None,
    drugs: Path | None,
    targets: Path | None,
    measurements: Path | None,
    unit: str | None,
    data_dir: Path | None,
    quarantine: Path | None,
    name: str | None,
) -> DTIDataset:
    from pharmafl.sites.tables import DTIDataset, load_dataset, read_tables

    files = (drugs, targets, measurements)
    if source is not None and any(files):
        raise typer.BadParameter("give SOURCE or --drugs/--targets/--measurements, not both")
    if source is None and not all(files):
        raise typer.BadParameter("give SOURCE, or all three of --drugs, --targets and --measurements")
    if source is None:
        return _run(
            lambda: read_tables(
                drugs,
                targets,
                measurements,
                unit=unit,
                quarantine=quarantine,
                name=name or measurements.name.split(".")[0],
            )
        )
    ds = _run(lambda: load_dataset(source, data_dir=data_dir, quarantine=quarantine, unit=unit))
    return DTIDataset(name, ds.drugs, ds.targets, ds.measurements, ds.quarantined) if name else ds


def _report(ds: DTIDataset, quarantine: Path | None, max_len: int) -> None:
    long = ds.long_targets(max_len)
    typer.echo(json.dumps({**ds.summary(), "targets_truncated": long.as_dict()}, indent=2))
    warning = long.warning(ds.name)
    if warning:
        typer.echo(f"warning: {warning}", err=True)
    if quarantine is not None:
        typer.echo(f"quarantined {ds.quarantined} row(s); report: {quarantine}", err=True)


@app.command("fetch")
def fetch_command(
    name: Annotated[str, typer.Argument(help="davis or kiba")],
    data_dir: DataDir = None,
    force: Annotated[bool, typer.Option("--force", help="download what does not match its pin, convert again")] = False,
    mirror: Annotated[
        str | None,
        typer.Option(
            "--mirror",
            help="base URL holding the upstream paths: https://, http:// or file:// (default: "
            "DeepDTA on GitHub at the pinned commit)",
        ),
    ] = None,
    retries: Annotated[
        int | None, typer.Option("--retries", min=0, help="further tries of a failed download (default 3)")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Download the DeepDTA raw files, verify their pinned SHA-256, convert them to a store."""
    from pharmafl.sites.fetch import BASE_URL, RETRIES, fetch

    with console.progress(quiet=quiet) as bar:
        store = _run(
            lambda: fetch(
                name,
                data_dir=data_dir,
                force=force,
                base_url=mirror or BASE_URL,
                retries=RETRIES if retries is None else retries,
                progress=bar,
            )
        )
    if store.name != name:  # the data folder already holds the tidy tables
        typer.echo(
            f"{name}: the tidy DeepDTA tables are already in {store} (their SHA-256 pins are "
            "checked whenever they are loaded); nothing to fetch",
            err=True,
        )
    typer.echo(str(store))


@app.command("validate")
def validate_command(
    source: Source = None,
    drugs: Drugs = None,
    targets: Targets = None,
    measurements: Measurements = None,
    unit: Unit = None,
    data_dir: DataDir = None,
    quarantine: Quarantine = None,
    max_len: MaxLen = MODEL_WINDOW,
) -> None:
    """Check every row; print a summary, or the first problem (all of them with --quarantine)."""
    _report(_load(source, drugs, targets, measurements, unit, data_dir, quarantine, None), quarantine, max_len)


@app.command("import")
def import_command(
    out: Annotated[Path, typer.Option("--out", help="store directory to write")],
    source: Source = None,
    drugs: Drugs = None,
    targets: Targets = None,
    measurements: Measurements = None,
    unit: Unit = None,
    data_dir: DataDir = None,
    quarantine: Quarantine = None,
    name: Name = None,
    max_len: MaxLen = MODEL_WINDOW,
) -> None:
    """Validate tables and write them as a Parquet store with a SHA-256 manifest."""
    from pharmafl.sites.tables import save_dataset

    ds = _load(source, drugs, targets, measurements, unit, data_dir, quarantine, name)
    store = _run(lambda: save_dataset(ds, out))
    _report(ds, quarantine, max_len)
    typer.echo(f"wrote {store}", err=True)
