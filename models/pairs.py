"""Featurized measurements: entity tensors once, pairs as indices into them.

A :class:`PairTensors` holds every drug graph and every target's tokens of a dataset once,
and each measured pair as ``(drug index, target index, label)``. :meth:`PairTensors.collate`
turns a set of pairs into model input, either encoding each unique entity once (the fast
path) or one drug and one target per pair (the per-sample path Opacus needs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Batch, Data

from pharmafl.errors import FeaturizationError
from pharmafl.models.cache import FeatureCache
from pharmafl.models.featurize import DenseGraphs, MolGraph, dense_batch, mol_graph, sparse_batch
from pharmafl.models.sequence import DEFAULT_MAX_LEN, tokenize


@dataclass(frozen=True)
class ModelInput:
    """Arguments of :meth:`DTIModel.forward` plus the labels of the pairs."""

    drugs: Batch | DenseGraphs
    targets: torch.Tensor
    drug_index: torch.Tensor | None
    target_index: torch.Tensor | None
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def args(self) -> tuple:
        return (self.drugs, self.targets, self.drug_index, self.target_index)


@dataclass(frozen=True)
class PairTensors:
    """Entities of a dataset, featurized once, and pairs as indices into them."""

    drug_ids: tuple[str, ...]
    target_ids: tuple[str, ...]
    graphs: tuple[MolGraph, ...]
    data: tuple[Data, ...]
    tokens: torch.Tensor  # long[T, max_len]
    drug: torch.Tensor  # long[P]
    target: torch.Tensor  # long[P]
    label: torch.Tensor  # float32[P]

    def __len__(self) -> int:
        return int(self.label.shape[0])

    @classmethod
    def build(
        cls,
        drugs: Sequence[tuple[str, str]],
        targets: Sequence[tuple[str, str]],
        pairs: Sequence[tuple[str, str, float]],
        *,
        max_len: int = DEFAULT_MAX_LEN,
        cache_dir: str | Path | None = None,
    ) -> PairTensors:
        """Featurize ``(id, smiles)`` drugs, ``(id, sequence)`` targets, ``(drug, target, label)`` pairs."""
        drug_ids = tuple(str(d) for d, _ in drugs)
        target_ids = tuple(str(t) for t, _ in targets)
        smiles = [s for _, s in drugs]
        try:
            if cache_dir is not None:
                graphs = FeatureCache(cache_dir).graphs(smiles)
            else:
                graphs = [mol_graph(s) for s in smiles]
        except FeaturizationError:
            for ident, s in drugs:  # name the molecule that failed
                try:
                    mol_graph(s)
                except FeaturizationError as exc:
                    raise FeaturizationError(f"drug {ident!r}: {exc}") from None
            raise
        token_rows = []
        for ident, seq in targets:
            try:
                token_rows.append(tokenize(seq, max_len))
            except FeaturizationError as exc:
                raise FeaturizationError(f"target {ident!r}: {exc}") from None
        d_pos = {d: i for i, d in enumerate(drug_ids)}
        t_pos = {t: i for i, t in enumerate(target_ids)}
        try:
            drug = [d_pos[str(d)] for d, _, _ in pairs]
            target = [t_pos[str(t)] for _, t, _ in pairs]
        except KeyError as exc:
            raise FeaturizationError(f"a pair names unknown entity {exc.args[0]!r}") from None
        return cls(
            drug_ids=drug_ids,
            target_ids=target_ids,
            graphs=tuple(graphs),
            data=tuple(g.to_data() for g in graphs),
            tokens=torch.from_numpy(np.stack(token_rows)) if token_rows else torch.zeros(0, max_len, dtype=torch.long),
            drug=torch.tensor(drug, dtype=torch.long),
            target=torch.tensor(target, dtype=torch.long),
            label=torch.tensor([float(y) for _, _, y in pairs], dtype=torch.float32),
        )

    def subset(self, index) -> PairTensors:
        """The same entities with only the pairs at ``index``."""
        index = torch.as_tensor(index, dtype=torch.long)
        return PairTensors(
            self.drug_ids,
            self.target_ids,
            self.graphs,
            self.data,
            self.tokens,
            self.drug[index],
            self.target[index],
            self.label[index],
        )

    def collate(self, index, *, unique: bool = True, dense: bool = False) -> ModelInput:
        """Model input for the pairs at ``index``.

        Args:
            unique: encode each distinct drug and target once and gather per pair;
                otherwise one drug and one target per pair (per-sample form).
            dense: drug graphs as :class:`DenseGraphs` instead of a sparse PyG batch.
        """
        index = torch.as_tensor(index, dtype=torch.long)
        d, t = self.drug[index], self.target[index]
        if unique:
            d_ent, d_idx = torch.unique(d, return_inverse=True)
            t_ent, t_idx = torch.unique(t, return_inverse=True)
        else:
            d_ent, t_ent, d_idx, t_idx = d, t, None, None
        ents = d_ent.tolist()
        drugs = dense_batch([self.graphs[i] for i in ents]) if dense else sparse_batch([self.data[i] for i in ents])
        return ModelInput(drugs, self.tokens[t_ent], d_idx, t_idx, self.label[index])
