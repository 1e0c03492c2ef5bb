"""The local optimisation settings of a site (the ``train`` section of a run config), kept apart
from the training loop (:mod:`pharmafl.sites.training`) so that reading a config loads no torch."""

from __future__ import annotations

from typing import Literal

from pydantic import StrictFloat, StrictInt

from pharmafl.errors import ConfigError
from pharmafl.typedconfig import section

Batching = Literal["grouped", "random"]  # pharmafl.sites.batching.BATCHINGS (a test keeps them equal)
Encoding = Literal["unique", "pair"]


@section("train")
class TrainConfig:
    """Local optimisation settings.

    Args:
        batch_size: pairs per step. Default 512 (GraphDTA).
        lr: Adam learning rate. Default 5e-4 (GraphDTA).
        weight_decay: Adam weight decay. Default 0.
        batching: ``grouped`` (default; chunks of same-target pairs per batch) or ``random``.
        group_size: pairs of one target per chunk in ``grouped`` batching. Default 32.
        encode: ``unique`` (default; each distinct entity of a batch encoded once) or
            ``pair`` (one drug and one target encoding per pair).
    """

    batch_size: StrictInt = 512
    lr: StrictFloat = 5e-4
    weight_decay: StrictFloat = 0.0
    batching: Batching = "grouped"
    group_size: StrictInt = 32
    encode: Encoding = "unique"

    def __post_init__(self):
        if self.batch_size < 1:
            raise ConfigError(f"train.batch_size must be a positive integer, got {self.batch_size!r}")
        if not self.lr > 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr!r}")
        if self.weight_decay < 0:
            raise ConfigError(f"train.weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.group_size < 1:
            raise ConfigError(f"train.group_size must be a positive integer, got {self.group_size!r}")
