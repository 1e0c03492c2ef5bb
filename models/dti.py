"""The drug-target interaction model: drug encoder + protein encoder + regression head.

GraphDTA (Nguyen et al. 2021, https://doi.org/10.1093/bioinformatics/btaa921):

.. math::
    \\hat{y} = \\mathrm{MLP}\\big([\\,f_{\\mathrm{drug}}(G) \\,\\Vert\\, f_{\\mathrm{prot}}(s)\\,]\\big)

The model takes a batch of *entities* and, optionally, an index per pair. Encoding each
unique drug and target of a batch once and gathering per pair gives the same outputs and
gradients as encoding every pair (tested), at a fraction of the cost. Without indices the
model encodes one drug and one target per pair, every tensor with the pair as its first
dimension: the form Opacus takes per-sample gradients of (with dense drug graphs).

The constructor seeds its own initialisation (``ModelConfig.seed``) without touching the
global RNG, so whoever rebuilds the model from its class and arguments (the NVFlare server,
a site) gets the same initial weights.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch_geometric.data import Batch

from pharmafl.errors import ConfigError
from pharmafl.models.drug_encoders import DRUG_ENCODERS, drug_encoder_class
from pharmafl.models.featurize import NUM_ATOM_FEATURES, DenseGraphs
from pharmafl.models.sequence import DEFAULT_MAX_LEN, VOCAB_SIZE


@dataclass(frozen=True)
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

    drug_encoder: str = "gin"
    max_len: int = DEFAULT_MAX_LEN
    embed_dim: int = 128
    n_filters: int = 32
    kernel_size: int = 8
    latent_dim: int = 128
    dropout: float = 0.2
    seed: int = 0
    label_offset: float = 0.0

    def __post_init__(self):
        if self.drug_encoder not in DRUG_ENCODERS:
            drug_encoder_class(self.drug_encoder)  # raises with the valid choices
        for name in ("max_len", "embed_dim", "n_filters", "kernel_size", "latent_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"model.{name} must be a positive integer, got {value!r}")
        if self.kernel_size > self.embed_dim:
            raise ConfigError(
                f"model.kernel_size ({self.kernel_size}) must not exceed model.embed_dim "
                f"({self.embed_dim}): the protein convolution runs along the embedding"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout!r}")
        if not (isinstance(self.label_offset, (int, float)) and math.isfinite(self.label_offset)):
            raise ConfigError(f"model.label_offset must be a finite number, got {self.label_offset!r}")


class WindowConv1d(nn.Conv1d):
    """``nn.Conv1d`` (stride 1, no padding): the same layer, a type of its own so that DP
    training can register a faster Opacus per-sample gradient for it
    (:mod:`pharmafl.sites.dp_training`)."""


class ProteinCNN(nn.Module):
    """GraphDTA's protein encoder: embedding, one 1D convolution, linear projection.

    As in GraphDTA, the convolution takes the ``max_len`` sequence positions as input
    channels and slides along the embedding dimension:
    ``[B, L] -> [B, L, E] -> Conv1d(L, F, k) -> [B, F, E-k+1] -> Linear -> [B, out_dim]``.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed = nn.Embedding(VOCAB_SIZE, cfg.embed_dim)
        self.conv = WindowConv1d(cfg.max_len, cfg.n_filters, cfg.kernel_size)
        self.fc = nn.Linear(cfg.n_filters * (cfg.embed_dim - cfg.kernel_size + 1), cfg.latent_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(self.embed(tokens)).flatten(1))


class DTIModel(nn.Module):
    """Drug encoder + :class:`ProteinCNN` + MLP head regressing the affinity label."""

    def __init__(self, **config):
        super().__init__()
        self.config = ModelConfig(**config)
        cfg = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.drug = drug_encoder_class(cfg.drug_encoder)(NUM_ATOM_FEATURES, cfg.latent_dim, cfg.dropout)
            self.protein = ProteinCNN(cfg)
            self.head = nn.Sequential(
                nn.Linear(2 * cfg.latent_dim, 1024),
                nn.ReLU(),
                nn.Dropout(cfg.dropout),
                nn.Linear(1024, 512),
                nn.ReLU(),
                nn.Dropout(cfg.dropout),
                nn.Linear(512, 1),
            )

    def config_dict(self) -> dict:
        return asdict(self.config)

    def forward(
        self,
        drugs: Batch | DenseGraphs,
        targets: torch.Tensor,
        drug_index: torch.Tensor | None = None,
        target_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict one label per pair.

        Args:
            drugs: ``D`` drug graphs (sparse or dense).
            targets: ``long[T, max_len]`` protein tokens.
            drug_index, target_index: ``long[P]`` entity of each pair; omitted, pair ``p``
                is ``(drugs[p], targets[p])``.

        Returns:
            ``float[P]`` predicted labels.
        """
        d = self.drug(drugs)
        t = self.protein(targets)
        if drug_index is not None:
            d = d[drug_index]
        if target_index is not None:
            t = t[target_index]
        return self.head(torch.cat([d, t], dim=1)).squeeze(-1) + self.config.label_offset
