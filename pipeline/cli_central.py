"""``pharmafl train-central``: the centralized baseline from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pharmafl.console import stderr, stdout

# The choices, as the CLI lists them (the registries behind them import torch; a test keeps them equal:
# sites/batching.py BATCHINGS, pipeline/central.py LR_SCHEDULES, models/drug_encoders.py DRUG_ENCODERS).
Batching = Literal["grouped", "random"]
LrSchedule = Literal["cosine", "constant"]
DrugEncoder = Literal["gin", "gcn", "gat"]


def train_central_command(
    out: Annotated[Path, typer.Option(help="Run directory for metrics.json, model.safetensors, plots.")],
    dataset: Annotated[str, typer.Option(help="davis, kiba, or a directory of tables.")] = "davis",
    epochs: Annotated[int, typer.Option(help="Maximum epochs; the kept one is picked on validation.")] = 100,
    patience: Annotated[
        int, typer.Option(help="Stop after this many epochs without a better validation MSE (0: never).")
    ] = 0,
    val_fraction: Annotated[float, typer.Option(help="Share of the training folds used to pick the epoch.")] = 0.1,
    batch_size: Annotated[int, typer.Option(help="Pairs per step.")] = 512,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 5e-4,
    batching: Annotated[Batching, typer.Option(help="grouped (same-target chunks per batch) or random.")] = "grouped",
    lr_schedule: Annotated[LrSchedule, typer.Option(help="cosine (decay to 0 over --epochs) or constant.")] = "cosine",
    drug_encoder: Annotated[DrugEncoder, typer.Option(help="The drug graph encoder.")] = "gin",
    seed: Annotated[int, typer.Option(help="Seed of split, batches and weights.")] = 0,
    data_dir: Annotated[
        Path | None, typer.Option(envvar="PHARMAFL_DATA", help="Dataset directory (default ~/.cache/pharmafl).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar on stderr.")] = False,
) -> None:
    """Train one model on all training folds, pick the epoch on validation, score the test fold."""
    from pharmafl.models.cache import default_cache_dir
    from pharmafl.models.dti import ModelConfig
    from pharmafl.pipeline.central import CentralConfig, train_central
    from pharmafl.sites.training import TrainConfig

    cfg = CentralConfig(
        dataset=dataset,
        epochs=epochs,
        patience=patience,
        lr_schedule=lr_schedule,
        val_fraction=val_fraction,
        seed=seed,
        model=ModelConfig(drug_encoder=drug_encoder),
        train=TrainConfig(batch_size=batch_size, lr=lr, batching=batching),
    )
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=stderr, disable=quiet) as progress:  # progress on stderr, the result on stdout
        epoch_task = progress.add_task("epochs", total=epochs, status="")
        pair_task = progress.add_task("pairs", total=None, status="")

        def on_step(n: int) -> None:
            progress.advance(pair_task, n)

        def on_epoch(r: dict) -> None:
            progress.update(
                epoch_task,
                advance=1,
                status=f"val MSE {r['val_mse']:.3f} CI {r['val_ci']:.3f} | "
                f"test MSE {r['test_mse']:.3f} CI {r['test_ci']:.3f}",
            )
            progress.reset(pair_task, total=progress.tasks[pair_task].completed or None)

        metrics = train_central(
            cfg, out, data_dir=data_dir, cache_dir=default_cache_dir(), on_epoch=on_epoch, on_step=on_step
        )

    table = Table(title=f"{metrics['dataset']} centralized: kept epoch {metrics['best_epoch']} of {metrics['epochs']}")
    for col in ("test MSE", "test CI", "test Pearson", "test Spearman", "seconds"):
        table.add_column(col, justify="right")
    table.add_row(
        f"{metrics['test_mse']:.4f}",
        f"{metrics['test_ci']:.4f}",
        f"{metrics['test_pearson']:.4f}",
        f"{metrics['test_spearman']:.4f}",
        f"{metrics['seconds']:.0f}",
    )
    stdout.print(table)
    stderr.print(f"wrote {out / 'metrics.json'}, {out / 'learning_curve.png'}, {out / 'model.safetensors'}")


def register(app: typer.Typer) -> None:
    app.command("train-central")(train_central_command)
