"""Drug encoders: a graph of a molecule -> a fixed-size vector.

One template (:class:`DrugEncoder`, after PyG's ``BasicGNN``): a stack of graph layers,
each followed by the encoder's activation, a graph pooling and a projection to
``out_dim``. Subclasses fill in the layers (:meth:`DrugEncoder.init_layers`), what happens
around each layer, the pooling and the projection. The architectures are GraphDTA's
(Nguyen et al. 2021, https://doi.org/10.1093/bioinformatics/btaa921) with BatchNorm
replaced by LayerNorm (Opacus refuses BatchNorm: per-sample gradients are undefined when
samples share batch statistics).

Every encoder runs on a sparse PyG :class:`~torch_geometric.data.Batch` or on
:class:`~pharmafl.models.featurize.DenseGraphs`, with the same weights and the same output.

Shapes:
    input: a batch of ``B`` graphs with ``in_dim`` node features; output: ``[B, out_dim]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.data import Batch
from torch_geometric.nn import global_add_pool, global_max_pool

from pharmafl.errors import ConfigError
from pharmafl.models.featurize import DenseGraphs
from pharmafl.models.layers import GATLayer, GCNLayer, GINLayer, sparse_adjacency


class DrugEncoder(nn.Module):
    """Template for graph encoders; see the module docstring."""

    pool: str = "add"  # "add" or "max"

    def __init__(self, in_dim: int, out_dim: int = 128, dropout: float = 0.2):
        super().__init__()
        self.dropout = dropout
        layers, hidden = self.init_layers(in_dim)
        self.layers = nn.ModuleList(layers)
        self.project = self.init_projection(hidden, out_dim)

    def init_layers(self, in_dim: int) -> tuple[list[nn.Module], int]:
        """Return the graph layers and the width of the last one."""
        raise NotImplementedError

    def init_projection(self, hidden: int, out_dim: int) -> nn.Module:
        return nn.Sequential(nn.Linear(hidden, out_dim), nn.ReLU(), nn.Dropout(self.dropout))

    def before(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """Applied to the input of layer ``i`` (default: nothing)."""
        return h

    def after(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """Applied to the output of layer ``i`` (default: ReLU)."""
        return F.relu(h)

    def connectivity(self, graphs: Batch) -> torch.Tensor:
        """What the layers get as ``edge_index`` on a sparse batch (default: the edge list)."""
        return graphs.edge_index

    def forward(self, graphs: Batch | DenseGraphs) -> torch.Tensor:
        if isinstance(graphs, DenseGraphs):
            h, mask = graphs.x, graphs.mask
            keep = mask.unsqueeze(-1).to(h.dtype)
            for i, layer in enumerate(self.layers):
                h = self.after(i, layer.dense(self.before(i, h), graphs.adj, mask)) * keep
            if self.pool == "add":
                pooled = h.sum(dim=1)
            else:
                pooled = h.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(dim=1)
        else:
            h, size, edges = graphs.x, graphs.num_graphs, self.connectivity(graphs)
            for i, layer in enumerate(self.layers):
                h = self.after(i, layer(self.before(i, h), edges))
            pool = global_add_pool if self.pool == "add" else global_max_pool
            pooled = pool(h, graphs.batch, size=size)
        return self.project(pooled)


class GINEncoder(DrugEncoder):
    """GraphDTA's GINConvNet: 5 GIN layers of width 32, ReLU + LayerNorm, sum pooling."""

    pool = "add"
    width, depth = 32, 5

    def init_layers(self, in_dim):
        dims = [in_dim] + [self.width] * self.depth
        self.norms = nn.ModuleList(nn.LayerNorm(self.width) for _ in range(self.depth))
        return [GINLayer(a, b) for a, b in zip(dims[:-1], dims[1:])], self.width

    def after(self, i, h):
        return self.norms[i](F.relu(h))

    def connectivity(self, graphs):
        return sparse_adjacency(graphs.edge_index, graphs.num_nodes)  # built once, used 5 times


class GCNEncoder(DrugEncoder):
    """GraphDTA's GCNNet: 3 GCN layers (F, 2F, 4F), ReLU, max pooling, 2-layer projection."""

    pool = "max"

    def init_layers(self, in_dim):
        dims = [in_dim, in_dim, 2 * in_dim, 4 * in_dim]
        return [GCNLayer(a, b) for a, b in zip(dims[:-1], dims[1:])], dims[-1]

    def init_projection(self, hidden, out_dim):
        return nn.Sequential(
            nn.Linear(hidden, 1024),
            nn.ReLU(),
            nn.Dropout(self.dropout),
            nn.Linear(1024, out_dim),
            nn.Dropout(self.dropout),
        )


class GATEncoder(DrugEncoder):
    """GraphDTA's GATNet: GAT(F -> F, 10 heads) + ELU, GAT(10F -> 128) + ReLU, max pooling."""

    pool = "max"
    heads = 10

    def init_layers(self, in_dim):
        return [
            GATLayer(in_dim, in_dim, heads=self.heads, dropout=self.dropout),
            GATLayer(in_dim * self.heads, 128, heads=1, dropout=self.dropout),
        ], 128

    def before(self, i, h):
        return F.dropout(h, p=self.dropout, training=self.training)

    def after(self, i, h):
        return F.elu(h) if i == 0 else F.relu(h)


DRUG_ENCODERS: dict[str, type[DrugEncoder]] = {
    "gin": GINEncoder,
    "gcn": GCNEncoder,
    "gat": GATEncoder,
}


def drug_encoder_class(name: str) -> type[DrugEncoder]:
    """Resolve a registry name to its class."""
    try:
        return DRUG_ENCODERS[name]
    except KeyError:
        raise ConfigError(f"Could not resolve drug encoder {name!r} among choices {sorted(DRUG_ENCODERS)}") from None
