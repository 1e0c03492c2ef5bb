"""The drug-target interaction model: drug encoder + protein encoder + regression head.

GraphDTA (Nguyen et al. 2021, https://doi.org/10.1093/bioinformatics/btaa921):

.. math::
    \\hat{y} = \\mathrm{MLP}\\big([\\,f_{\\mathrm{drug}}(G) \\,\\Vert\\, f_{\\mathrm{prot}}(s)\\,]\\big)

The model takes a batch of *entities* and, optionally, an index per pair. Encoding each
unique drug and target of a batch once and gathering per pair gives the same outputs and
gradients as encoding every pair (tested), at a fraction of the cost. Without indices the
model encodes one drug and one target per pair, every tensor with the pair as its first
dimension: the form Opacus takes per-sample gradients of (with dense drug graphs).

The architecture settings are :class:`~pharmafl.models.config.ModelConfig` (re-exported
here). The constructor seeds its own initialisation (``ModelConfig.seed``) without touching the
global RNG, so whoever rebuilds the model from its class and arguments (the NVFlare server,
a site) gets the same initial weights.
"""

from __future__ import annotations

from dataclasses import asdict

import torch
from torch import nn
from torch_geometric.data import Batch

from pharmafl.models.config import ModelConfig
from pharmafl.models.drug_encoders import drug_encoder_class
from pharmafl.models.featurize import NUM_ATOM_FEATURES, DenseGraphs
from pharmafl.models.sequence import VOCAB_SIZE

__all__ = ["DTIModel", "ModelConfig", "ProteinCNN", "WindowConv1d"]


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
    """Drug encoder + :class:`ProteinCNN` + MLP head regressing the affinity label.

    Built from a :class:`~pharmafl.models.config.ModelConfig` with :meth:`from_config`, or
    from its fields as keywords (how a saved model's ``config_dict`` rebuilds it).
    """

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

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> DTIModel:
        """The model of architecture ``cfg`` (weights seeded with ``cfg.seed``)."""
        if not isinstance(cfg, ModelConfig):
            raise TypeError(f"DTIModel.from_config takes a ModelConfig, got {type(cfg).__name__}")
        return cls(**asdict(cfg))

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
