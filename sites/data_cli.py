"""``pharmafl data``: fetch public datasets, validate site tables, import them into a store.

Mounted by the main CLI as ``pharmafl data ...``. Every command prints one ``error: ...`` line
naming file, row, id and fix on bad input, and exits with status 1.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from pharmafl.errors import PharmaflError
from pharmafl.sites.fetch import BASE_URL, fetch
from pharmafl.sites.tables import UNITS, DTIDataset, load_dataset, read_tables, save_dataset

app = typer.Typer(help="Public datasets and site data tables: fetch, validate, import.", no_args_is_help=True)

T = TypeVar("T")

Source = Annotated[str | None, typer.Argument(help="davis, kiba, a directory of tables, or a dataset store")]
Drugs = Annotated[Path | None, typer.Option("--drugs", help="drugs table (instead of SOURCE)")]
Targets = Annotated[Path | None, typer.Option("--targets", help="targets table (instead of SOURCE)")]
Measurements = Annotated[Path | None, typer.Option("--measurements", help="measurements table (instead of SOURCE)")]
Unit = Annotated[str | None, typer.Option("--unit", help=f"unit of an 'affinity' column: {', '.join(UNITS)}")]
DataDir = Annotated[Path | None, typer.Option("--data-dir", help="where davis/kiba live (default $PHARMAFL_DATA)")]
Quarantine = Annotated[Path | None, typer.Option("--quarantine", help="write bad rows to this CSV and drop them")]
Name = Annotated[str | None, typer.Option("--name", help="dataset name (default: from SOURCE)")]


def _run(action: Callable[[], T]) -> T:
    try:
        return action()
    except PharmaflError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


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


def _report(ds: DTIDataset, quarantine: Path | None) -> None:
    typer.echo(json.dumps(ds.summary(), indent=2))
    if quarantine is not None:
        typer.echo(f"quarantined {ds.quarantined} row(s); report: {quarantine}", err=True)


@app.command("fetch")
def fetch_command(
    name: Annotated[str, typer.Argument(help="davis or kiba")],
    cache_dir: Annotated[
        Path | None, typer.Option("--cache-dir", help="default $PHARMAFL_DATA, else ~/.cache/pharmafl")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="download and convert again")] = False,
    mirror: Annotated[str, typer.Option("--mirror", help="base URL holding the upstream paths")] = BASE_URL,
) -> None:
    """Download the DeepDTA raw files, verify their pinned SHA-256, convert them to a store."""
    store = _run(lambda: fetch(name, cache_dir=cache_dir, force=force, base_url=mirror))
    if store.name != name:  # the cache already holds the tidy tables
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
) -> None:
    """Check every row; print a summary, or the first problem (all of them with --quarantine)."""
    _report(_load(source, drugs, targets, measurements, unit, data_dir, quarantine, None), quarantine)


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
) -> None:
    """Validate tables and write them as a Parquet store with a SHA-256 manifest."""
    ds = _load(source, drugs, targets, measurements, unit, data_dir, quarantine, name)
    store = _run(lambda: save_dataset(ds, out))
    _report(ds, quarantine)
    typer.echo(f"wrote {store}", err=True)
