"""The centralized baseline: one model trained on all training folds of a dataset.

Epochs are picked on a validation split carved from the training folds (never on the test
fold, which GraphDTA's published figures did): the model kept is the one with the lowest
validation MSE, and the test fold is scored once with it. A run directory receives
``metrics.json``, ``history.csv``, ``learning_curve.png``, ``model.safetensors`` and ``config.json``.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import asdict, field, replace
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import pandas as pd
import torch
from pydantic import StrictFloat, StrictInt

from pharmafl.errors import ConfigError
from pharmafl.models.dti import DTIModel, ModelConfig
from pharmafl.pipeline.artifacts import save_model, write_bytes_atomic, write_json
from pharmafl.pipeline.plots import plot_learning_curve
from pharmafl.sites.site import featurize_dataset
from pharmafl.sites.splits import Split, split_measurements
from pharmafl.sites.tables import DTIDataset, load_dataset
from pharmafl.sites.training import TrainConfig, evaluate, make_optimizer, train_epoch
from pharmafl.typedconfig import section

LRSchedule = Literal["cosine", "constant"]
LR_SCHEDULES = get_args(LRSchedule)


@section("")
class CentralConfig:
    """Settings of :func:`train_central`.

    Args:
        dataset: a dataset name (``davis``, ``kiba``) or a directory of tables.
        epochs: maximum training epochs. Default 100.
        val_fraction: share of the training folds held out to pick the epoch. Default 0.1.
        patience: stop after this many epochs without a better validation MSE (0: never).
        lr_schedule: ``cosine`` (default; the learning rate decays to 0 over ``epochs``,
            which settles the epoch-to-epoch swing of the predictions' mean) or ``constant``
            (GraphDTA's choice).
        seed: seed of the split, the batches and the model. Default 0.
    """

    dataset: str = "davis"
    epochs: StrictInt = 100
    val_fraction: StrictFloat = 0.1
    patience: StrictInt = 0
    lr_schedule: LRSchedule = "cosine"
    seed: StrictInt = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        if self.epochs < 1:
            raise ConfigError(f"epochs must be a positive integer, got {self.epochs!r}")
        if not 0.0 < self.val_fraction < 0.5:
            raise ConfigError(f"val_fraction must be in (0, 0.5), got {self.val_fraction!r}")
        if self.patience < 0:
            raise ConfigError(f"patience must be a non-negative integer, got {self.patience!r}")


def train_central(
    cfg: CentralConfig,
    out_dir: Path,
    *,
    dataset: DTIDataset | None = None,
    data_dir: Path | None = None,
    cache_dir: Path | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> dict:
    """Train, pick the epoch on validation, score the test fold; return ``metrics.json``'s content."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"output directory {out_dir} is not empty; choose a new --out (runs are never overwritten)")
    torch.manual_seed(cfg.seed)
    ds = dataset if dataset is not None else load_dataset(cfg.dataset, data_dir=data_dir)
    split: Split = split_measurements(ds.measurements, cfg.val_fraction, cfg.seed)
    pairs = featurize_dataset(ds, cfg.model, cache_dir)
    train, val, test = (pairs.subset(split.train), pairs.subset(split.val), pairs.subset(split.test))

    model = DTIModel.from_config(replace(cfg.model, seed=cfg.seed))
    optimizer = make_optimizer(model, cfg.train)
    schedule = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs) if cfg.lr_schedule == "cosine" else None
    )
    rng = np.random.default_rng(cfg.seed)
    history, best, best_state, stale = [], None, None, 0
    for epoch in range(1, cfg.epochs + 1):
        fit = train_epoch(model, optimizer, train, cfg.train, rng, on_step=on_step)
        if schedule is not None:
            schedule.step()
        record = {
            "epoch": epoch,
            "seconds": round(time.perf_counter() - start, 3),
            "train_loss": fit["loss"],
            **{f"val_{k}": v for k, v in evaluate(model, val).items()},
            **{f"test_{k}": v for k, v in evaluate(model, test).items()},
        }
        history.append(record)
        if best is None or record["val_mse"] < best["val_mse"]:
            best, best_state, stale = record, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
        if on_epoch is not None:
            on_epoch(record)
        if cfg.patience and stale >= cfg.patience:
            break

    model.load_state_dict(best_state)
    final = evaluate(model, test)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_hash = save_model(model, out_dir / "model.safetensors")
    metrics = {
        "dataset": ds.name,
        "split": split.kind,
        "pairs": {"train": len(train), "val": len(val), "test": len(test)},
        "test_mse": final["mse"],
        "test_ci": final["ci"],
        "test_pearson": final["pearson"],
        "test_spearman": final["spearman"],
        "best_epoch": best["epoch"],
        "best_val_mse": best["val_mse"],
        "epochs": len(history),
        "seconds": round(time.perf_counter() - start, 3),
        "model_sha256": model_hash,
    }
    used_model = {**asdict(cfg.model), "seed": cfg.seed}  # the weights were seeded with the run's seed
    write_json(out_dir / "config.json", {**asdict(cfg), "model": used_model, "train": asdict(cfg.train)})
    write_bytes_atomic(out_dir / "history.csv", pd.DataFrame(history).to_csv(index=False).encode())
    write_json(out_dir / "metrics.json", metrics)
    plot_learning_curve(history, best["epoch"], out_dir / "learning_curve.png", title=f"{ds.name}: centralized")
    return metrics


def read_metrics(out_dir: Path) -> dict:
    return json.loads((out_dir / "metrics.json").read_text())
