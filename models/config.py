"""The architecture settings of a :class:`~pharmafl.models.dti.DTIModel` (the ``model`` section
of a run config), kept apart from the model so that reading a config loads no torch."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import StrictFloat, StrictInt

from pharmafl.errors import ConfigError
from pharmafl.typedconfig import section

DEFAULT_MAX_LEN = 1000  # pharmafl.models.sequence.DEFAULT_MAX_LEN (a test keeps them equal)

DrugEncoderName = Literal["gin", "gcn", "gat"]  # the keys of pharmafl.models.drug_encoders.DRUG_ENCODERS


@section("model")
class ModelConfig:
    """Architecture of a :class:`DTIModel`.

    Args:
        drug_encoder: registry name, one of ``gin`` (default), ``gcn``, ``gat``.
        max_len: protein tokens per sequence (longer ones truncated). Default 1000.
        embed_dim: protein token embedding width. Default 128.
        n_filters: protein convolution filters. Default 32.
        kernel_size: protein convolution width. Default 8.
        latent_dim: width of each encoder's output. Default 128.
        dropout: dropout rate everywhere. Default 0.2.
        seed: seed of the weight initialisation. Default 0.
        label_offset: a constant added to every prediction: a public prior of the label
            scale (5.0 = pKd of a 10 µM non-binder, DAVIS's floor), so training need not
            first climb from 0 to the label range. Default 0 (GraphDTA). DP-SGD's clipped,
            noised steps move the output bias slowly; the DP demo config sets 5.0.
    """

    drug_encoder: DrugEncoderName = "gin"
    max_len: StrictInt = DEFAULT_MAX_LEN
    embed_dim: StrictInt = 128
    n_filters: StrictInt = 32
    kernel_size: StrictInt = 8
    latent_dim: StrictInt = 128
    dropout: StrictFloat = 0.2
    seed: StrictInt = 0
    label_offset: StrictFloat = 0.0

    def __post_init__(self):
        for name in ("max_len", "embed_dim", "n_filters", "kernel_size", "latent_dim"):
            value = getattr(self, name)
            if value < 1:
                raise ConfigError(f"model.{name} must be a positive integer, got {value!r}")
        if self.kernel_size > self.embed_dim:
            raise ConfigError(
                f"model.kernel_size ({self.kernel_size}) must not exceed model.embed_dim "
                f"({self.embed_dim}): the protein convolution runs along the embedding"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout!r}")
        if not math.isfinite(self.label_offset):
            raise ConfigError(f"model.label_offset must be a finite number, got {self.label_offset!r}")
