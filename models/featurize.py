"""RDKit molecules -> graphs, in the sparse PyG form and the dense padded form.

Atom features follow GraphDTA (Nguyen et al. 2021, Bioinformatics 37:1140,
https://doi.org/10.1093/bioinformatics/btaa921): a one-hot of the element over 44 symbols
(last = unknown), one-hots of degree, total hydrogen count and implicit valence (0..10 each)
and an aromaticity flag: 78 features. Bond features (type one-hot, conjugated, in ring:
6 features) travel as ``edge_attr`` for encoders that use them.

Two forms of a batch of graphs:

* sparse: a :class:`torch_geometric.data.Batch` (``x[ΣN, F]``, ``edge_index[2, ΣE]``,
  ``batch[ΣN]``), what PyG's message passing takes;
* dense: :class:`DenseGraphs` ``x[B, N, F]``, ``adj[B, N, N]``, ``mask[B, N]``, padded to
  the largest graph. Every tensor has the graph as its first dimension, so Opacus can take
  per-sample gradients (it silently clips per node on sparse batches).

PyG's ``from_smiles`` returns an empty graph for an invalid SMILES; :func:`parse_smiles`
raises instead, with RDKit's own message.

torch and PyG load when a graph is turned into tensors, not on import: checking SMILES
(``pharmafl data validate``) needs RDKit alone.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from rdkit import Chem, rdBase

from pharmafl.errors import FeaturizationError

if TYPE_CHECKING:
    import torch
    from torch_geometric.data import Batch, Data

FEATURIZER_VERSION = "graphdta-78-v1"

ATOM_SYMBOLS = (
    "C N O S F Si P Cl Br Mg Na Ca Fe As Al I B V K Tl Yb Sb Sn Ag Pd Co Se Ti Zn H Li Ge Cu "
    "Au Ni Cd In Mn Zr Cr Pt Hg Pb Unknown"
).split()
_SMALL_INT = tuple(range(11))
NUM_ATOM_FEATURES = len(ATOM_SYMBOLS) + 3 * len(_SMALL_INT) + 1  # 78
_BOND_TYPES = (
    Chem.BondType.SINGLE,
    Chem.BondType.DOUBLE,
    Chem.BondType.TRIPLE,
    Chem.BondType.AROMATIC,
)
NUM_BOND_FEATURES = len(_BOND_TYPES) + 2


_LOG_STAMP = re.compile(r"^\[\d\d:\d\d:\d\d\]\s*")


def parse_smiles(smiles: str) -> Chem.Mol:
    """Parse ``smiles`` with RDKit, raising :class:`FeaturizationError` with RDKit's message."""
    if not isinstance(smiles, str) or not smiles.strip():
        raise FeaturizationError(f"empty SMILES {smiles!r}")
    if re.search(r"\s", smiles):
        raise FeaturizationError(f"SMILES {smiles!r} contains whitespace (RDKit would silently drop what follows it)")
    with rdBase.CaptureErrorLog() as capture:
        mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        lines = [_LOG_STAMP.sub("", line).strip() for line in capture.messages.splitlines()]
        reason = "; ".join(line for line in lines if line)
        raise FeaturizationError(f"RDKit cannot parse SMILES {smiles!r}: {reason or 'no reason given'}")
    if mol.GetNumAtoms() == 0:
        raise FeaturizationError(f"SMILES {smiles!r} has no atoms")
    return mol


def _one_hot(value, choices: Sequence, unknown_last: bool = True) -> list[float]:
    if value not in choices:
        value = choices[-1] if unknown_last else None
    return [float(value == choice) for choice in choices]


def atom_features(atom: Chem.Atom) -> list[float]:
    """GraphDTA's 78 atom features."""
    return (
        _one_hot(atom.GetSymbol(), ATOM_SYMBOLS)
        + _one_hot(atom.GetDegree(), _SMALL_INT)
        + _one_hot(atom.GetTotalNumHs(), _SMALL_INT)
        + _one_hot(atom.GetValence(Chem.ValenceType.IMPLICIT), _SMALL_INT)
        + [float(atom.GetIsAromatic())]
    )


def bond_features(bond: Chem.Bond) -> list[float]:
    return [float(bond.GetBondType() == t) for t in _BOND_TYPES] + [
        float(bond.GetIsConjugated()),
        float(bond.IsInRing()),
    ]


@dataclass(frozen=True)
class MolGraph:
    """A molecule as arrays: ``x[N, 78]``, ``edge_index[2, E]`` (both directions), ``edge_attr[E, 6]``."""

    x: np.ndarray
    edge_index: np.ndarray
    edge_attr: np.ndarray

    @property
    def num_nodes(self) -> int:
        return int(self.x.shape[0])

    def to_data(self) -> Data:
        import torch
        from torch_geometric.data import Data

        return Data(
            x=torch.from_numpy(self.x).float(),
            edge_index=torch.from_numpy(self.edge_index).long(),
            edge_attr=torch.from_numpy(self.edge_attr).float(),
            num_nodes=self.num_nodes,
        )


def mol_graph(smiles: str) -> MolGraph:
    """Featurize one SMILES string (hydrogens implicit, as in GraphDTA)."""
    mol = parse_smiles(smiles)
    x = np.asarray([atom_features(a) for a in mol.GetAtoms()], dtype=np.float32)
    src, dst, attrs = [], [], []
    for bond in mol.GetBonds():
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        feats = bond_features(bond)
        src += [i, j]
        dst += [j, i]
        attrs += [feats, feats]
    edge_index = np.asarray([src, dst], dtype=np.int64).reshape(2, -1)
    edge_attr = np.asarray(attrs, dtype=np.float32).reshape(-1, NUM_BOND_FEATURES)
    return MolGraph(x=x, edge_index=edge_index, edge_attr=edge_attr)


@dataclass(frozen=True)
class DenseGraphs:
    """A padded batch of graphs: ``x[B, N, F]``, ``adj[B, N, N]`` (0/1), ``mask[B, N]`` (bool)."""

    x: torch.Tensor
    adj: torch.Tensor
    mask: torch.Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def to(self, device) -> DenseGraphs:
        return DenseGraphs(self.x.to(device), self.adj.to(device), self.mask.to(device))

    def index_select(self, index: torch.Tensor) -> DenseGraphs:
        return DenseGraphs(self.x[index], self.adj[index], self.mask[index])


def sparse_batch(graphs: Sequence[MolGraph | Data]) -> Batch:
    """Collate graphs into one PyG :class:`Batch`."""
    from torch_geometric.data import Batch

    return Batch.from_data_list([g.to_data() if isinstance(g, MolGraph) else g for g in graphs])


def dense_batch(graphs: Sequence[MolGraph], max_nodes: int | None = None) -> DenseGraphs:
    """Pad graphs to ``max_nodes`` (default: the largest in the batch)."""
    import torch

    if not graphs:
        raise ValueError("dense_batch needs at least one graph")
    largest = max(g.num_nodes for g in graphs)
    n = largest if max_nodes is None else max_nodes
    if largest > n:
        raise FeaturizationError(f"a molecule has {largest} atoms, more than max_nodes={n}; raise max_nodes")
    b, f = len(graphs), graphs[0].x.shape[1]
    x = torch.zeros(b, n, f)
    adj = torch.zeros(b, n, n)
    mask = torch.zeros(b, n, dtype=torch.bool)
    for i, g in enumerate(graphs):
        k = g.num_nodes
        x[i, :k] = torch.from_numpy(g.x)
        if g.edge_index.size:
            ei = torch.from_numpy(g.edge_index)
            adj[i, ei[1], ei[0]] = 1.0  # adj[dst, src]: row i aggregates its sources
        mask[i, :k] = True
    return DenseGraphs(x=x, adj=adj, mask=mask)
