"""Graph convolutions with a sparse and a dense form over the same parameters.

Each layer computes the same function two ways: ``forward(x, edge_index)`` on a sparse
PyG batch and ``dense(x, adj, mask)`` on a padded batch (``adj[b, i, j] = 1`` when node
``i`` receives from node ``j``). The tests check both forms against PyG's own
``GINConv``/``DenseGINConv``, ``GCNConv``/``DenseGCNConv`` and ``GATConv``/``DenseGATConv``.

Trainable weights live in ``nn.Linear`` where the math allows it, so Opacus can compute
per-sample gradients of the dense form (GIN and GCN are fully supported; GAT's attention
vectors are plain parameters).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.utils import add_self_loops, scatter, softmax


def _mask(out: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return out if mask is None else out * mask.unsqueeze(-1).to(out.dtype)


def sparse_adjacency(edge_index: torch.Tensor, num_nodes: int, self_loops: bool = False) -> torch.Tensor:
    """Coalesced COO adjacency ``A[dst, src] = 1`` (optionally with ``A[i, i] = 1``).

    Neighbour sums as ``torch.sparse.mm(A, x)`` run ~50x faster on CPU than PyG's
    ``scatter`` over gathered edges, forward and backward.
    """
    if edge_index.layout != torch.strided:  # already an adjacency
        return edge_index
    if self_loops:
        edge_index, _ = add_self_loops(edge_index, num_nodes=num_nodes)
    values = torch.ones(edge_index.size(1), dtype=torch.float32, device=edge_index.device)
    return torch.sparse_coo_tensor(
        edge_index.flip(0), values, (num_nodes, num_nodes), check_invariants=False
    ).coalesce()


class GINLayer(nn.Module):
    r"""Graph isomorphism layer (Xu et al. 2019, https://arxiv.org/abs/1810.00826), :math:`\epsilon = 0`:

    .. math::
        \mathbf{x}'_i = \mathrm{MLP}\Big(\mathbf{x}_i + \sum_{j \in \mathcal{N}(i)} \mathbf{x}_j\Big)

    with a two-layer MLP ``Linear(in, out) -> ReLU -> Linear(out, out)`` (GraphDTA's choice).
    Equals PyG's ``GINConv(mlp)`` and ``DenseGINConv(mlp)`` with ``train_eps=False``.
    """

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU(), nn.Linear(out_dim, out_dim))

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """``edge_index``: ``long[2, E]`` (source, target) or a sparse adjacency ``A[dst, src]``."""
        adj = sparse_adjacency(edge_index, x.size(0))
        return self.mlp(x + torch.sparse.mm(adj, x))

    def dense(self, x: torch.Tensor, adj: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return _mask(self.mlp(x + adj @ x), mask)


class GCNLayer(nn.Module):
    r"""Graph convolution (Kipf & Welling 2017, https://arxiv.org/abs/1609.02907):

    .. math::
        \mathbf{X}' = \hat{\mathbf{D}}^{-1/2} \hat{\mathbf{A}} \hat{\mathbf{D}}^{-1/2}
        \mathbf{X} \mathbf{W} + \mathbf{b},
        \qquad \hat{\mathbf{A}} = \mathbf{A} + \mathbf{I}

    computed as ``Linear(Â_norm X)``, which equals PyG's ``GCNConv`` (that computes
    ``Â_norm (X W) + b``) up to float rounding, and keeps W and b in one ``nn.Linear``.
    """

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.lin = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """``edge_index``: ``long[2, E]`` (source, target), without self-loops."""
        n = x.size(0)
        adj = sparse_adjacency(edge_index, n, self_loops=True)
        dst, src = adj.indices()
        inv_sqrt = torch.sparse.sum(adj, dim=1).to_dense().pow(-0.5)
        norm = torch.sparse_coo_tensor(
            adj.indices(), inv_sqrt[dst] * inv_sqrt[src], (n, n), is_coalesced=True, check_invariants=False
        )
        return self.lin(torch.sparse.mm(norm, x))

    def dense(self, x: torch.Tensor, adj: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        n = adj.size(-1)
        adj = adj.clone()
        idx = torch.arange(n, device=adj.device)
        adj[:, idx, idx] = 1.0
        inv_sqrt = adj.sum(-1).clamp(min=1.0).pow(-0.5)
        adj = inv_sqrt.unsqueeze(-1) * adj * inv_sqrt.unsqueeze(-2)
        return _mask(self.lin(adj @ x), mask)


class GATLayer(nn.Module):
    r"""Graph attention (Veličković et al. 2018, https://arxiv.org/abs/1710.10903):

    .. math::
        \alpha_{ij} = \mathrm{softmax}_{j \in \mathcal{N}(i) \cup \{i\}}
            \mathrm{LeakyReLU}\big(\mathbf{a}_s^\top \mathbf{W}\mathbf{x}_j
                + \mathbf{a}_d^\top \mathbf{W}\mathbf{x}_i\big),
        \qquad \mathbf{x}'_i = \big\Vert_{h} \sum_j \alpha^h_{ij} \mathbf{W}^h \mathbf{x}_j + \mathbf{b}

    Heads are concatenated. Equals PyG's ``GATConv``/``DenseGATConv`` (self-loops added,
    negative slope 0.2). ``dropout`` applies to the attention coefficients in training.
    """

    def __init__(self, in_dim: int, out_dim: int, heads: int = 1, dropout: float = 0.0):
        super().__init__()
        self.heads, self.out_dim, self.dropout = heads, out_dim, dropout
        self.lin = nn.Linear(in_dim, heads * out_dim, bias=False)
        self.att_src = nn.Parameter(torch.empty(1, heads, out_dim))
        self.att_dst = nn.Parameter(torch.empty(1, heads, out_dim))
        self.bias = nn.Parameter(torch.zeros(heads * out_dim))
        nn.init.xavier_uniform_(self.att_src)
        nn.init.xavier_uniform_(self.att_dst)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        n, h, c = x.size(0), self.heads, self.out_dim
        edge_index, _ = add_self_loops(edge_index, num_nodes=n)
        src, dst = edge_index
        z = self.lin(x).view(n, h, c)
        logits = (z * self.att_src).sum(-1)[src] + (z * self.att_dst).sum(-1)[dst]
        alpha = softmax(F.leaky_relu(logits, 0.2), dst, num_nodes=n)
        alpha = F.dropout(alpha, p=self.dropout, training=self.training)
        out = scatter(z[src] * alpha.unsqueeze(-1), dst, dim=0, dim_size=n, reduce="sum")
        return out.reshape(n, h * c) + self.bias

    def dense(self, x: torch.Tensor, adj: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, _ = x.shape
        h, c = self.heads, self.out_dim
        adj = adj.clone()
        idx = torch.arange(n, device=adj.device)
        adj[:, idx, idx] = 1.0
        z = self.lin(x).view(b, n, h, c)
        a_src = (z * self.att_src).sum(-1)  # [B, N, H]
        a_dst = (z * self.att_dst).sum(-1)
        logits = F.leaky_relu(a_src.unsqueeze(1) + a_dst.unsqueeze(2), 0.2)  # [B, i, j, H]
        logits = logits.masked_fill(adj.unsqueeze(-1) == 0, float("-inf"))
        alpha = F.dropout(logits.softmax(dim=2), p=self.dropout, training=self.training)
        out = torch.einsum("bijh,bjhc->bihc", alpha, z).reshape(b, n, h * c) + self.bias
        return _mask(out, mask)
