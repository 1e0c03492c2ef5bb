"""Local training and evaluation of a DTI model on one set of pairs.

What a site runs each round, and what the centralized baseline runs each epoch. The loop
reads as a recipe: plan batches, collate, forward, loss (+ the strategy's extra term),
backward, the strategy's gradient hook, optimizer step. Its settings,
:class:`~pharmafl.sites.train_config.TrainConfig`, are re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from pharmafl.models.dti import DTIModel
from pharmafl.models.metrics import regression_metrics
from pharmafl.models.pairs import PairTensors
from pharmafl.sites.batching import plan_batches
from pharmafl.sites.train_config import TrainConfig

__all__ = ["TrainConfig", "evaluate", "make_optimizer", "predict", "train_epoch"]


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def train_epoch(
    model: DTIModel,
    optimizer: torch.optim.Optimizer,
    pairs: PairTensors,
    cfg: TrainConfig,
    rng: np.random.Generator,
    *,
    extra_loss: Callable[[DTIModel], torch.Tensor] | None = None,
    after_backward: Callable[[DTIModel], None] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """One pass over ``pairs``; returns ``{"loss": mean MSE, "steps": n}``.

    Args:
        extra_loss: added to the batch loss (e.g. FedProx's proximal term).
        after_backward: called between backward and step (e.g. SCAFFOLD's correction).
        on_step: called with the number of pairs of each finished step (progress).
    """
    model.train()
    total, steps = 0.0, 0
    for index in plan_batches(pairs.target.numpy(), cfg.batch_size, cfg.batching, rng, cfg.group_size):
        batch = pairs.collate(index, unique=cfg.encode == "unique")
        loss = F.mse_loss(model(*batch.args()), batch.labels)
        objective = loss if extra_loss is None else loss + extra_loss(model)
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        if after_backward is not None:
            after_backward(model)
        optimizer.step()
        total += loss.item() * len(batch)
        steps += 1
        if on_step is not None:
            on_step(len(batch))
    return {"loss": total / max(len(pairs), 1), "steps": steps}


@torch.no_grad()
def predict(model: DTIModel, pairs: PairTensors, chunk: int = 16384) -> np.ndarray:
    """Predicted labels of every pair, entities encoded once per chunk, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        out = [
            model(*pairs.collate(np.arange(i, min(i + chunk, len(pairs)))).args()).numpy()
            for i in range(0, len(pairs), chunk)
        ]
    finally:
        model.train(was_training)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def evaluate(model: DTIModel, pairs: PairTensors) -> dict[str, float]:
    """MSE, CI, Pearson, Spearman of ``model`` on ``pairs``."""
    return regression_metrics(pairs.label.numpy(), predict(model, pairs))
