"""Each layer's sparse and dense forms equal PyG's own convolutions with the same weights."""

import pytest
import torch
from torch_geometric.nn import DenseGATConv, DenseGCNConv, DenseGINConv, GATConv, GCNConv, GINConv

from pharmafl.models.featurize import dense_batch, mol_graph, sparse_batch
from pharmafl.models.layers import GATLayer, GCNLayer, GINLayer

SMILES = ["CC(=O)Oc1ccccc1C(=O)O", "CCO", "c1ccncc1", "C"]


@pytest.fixture
def graphs():
    torch.manual_seed(0)
    gs = [mol_graph(s) for s in SMILES]
    return sparse_batch(gs), dense_batch(gs)


def dense_rows(dense_out, mask):
    return dense_out[mask]


def test_gin_equals_pyg(graphs):
    sparse, dense = graphs
    layer = GINLayer(78, 32)
    ref_sparse = GINConv(layer.mlp, train_eps=False)
    ref_dense = DenseGINConv(layer.mlp, train_eps=False)
    out = layer(sparse.x, sparse.edge_index)
    torch.testing.assert_close(out, ref_sparse(sparse.x, sparse.edge_index))
    out_dense = layer.dense(dense.x, dense.adj, dense.mask)
    torch.testing.assert_close(out_dense, ref_dense(dense.x, dense.adj, dense.mask))
    torch.testing.assert_close(dense_rows(out_dense, dense.mask), out, atol=1e-5, rtol=1e-5)


def test_gcn_equals_pyg(graphs):
    sparse, dense = graphs
    layer = GCNLayer(78, 16)
    ref_sparse, ref_dense = GCNConv(78, 16), DenseGCNConv(78, 16)
    with torch.no_grad():
        ref_sparse.lin.weight.copy_(layer.lin.weight)
        ref_sparse.bias.copy_(layer.lin.bias)
        ref_dense.lin.weight.copy_(layer.lin.weight)
        ref_dense.bias.copy_(layer.lin.bias)
    out = layer(sparse.x, sparse.edge_index)
    torch.testing.assert_close(out, ref_sparse(sparse.x, sparse.edge_index), atol=1e-5, rtol=1e-5)
    out_dense = layer.dense(dense.x, dense.adj, dense.mask)
    torch.testing.assert_close(out_dense, ref_dense(dense.x, dense.adj, dense.mask), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dense_rows(out_dense, dense.mask), out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("heads", [1, 3])
def test_gat_equals_pyg(graphs, heads):
    sparse, dense = graphs
    layer = GATLayer(78, 8, heads=heads).eval()
    ref_sparse = GATConv(78, 8, heads=heads).eval()
    ref_dense = DenseGATConv(78, 8, heads=heads).eval()
    with torch.no_grad():
        torch.nn.init.normal_(layer.bias)
        for ref in (ref_sparse, ref_dense):
            ref.lin.weight.copy_(layer.lin.weight)
            ref.att_src.copy_(layer.att_src.view_as(ref.att_src))
            ref.att_dst.copy_(layer.att_dst.view_as(ref.att_dst))
            ref.bias.copy_(layer.bias)
    out = layer(sparse.x, sparse.edge_index)
    torch.testing.assert_close(out, ref_sparse(sparse.x, sparse.edge_index), atol=1e-5, rtol=1e-5)
    out_dense = layer.dense(dense.x, dense.adj, dense.mask)
    torch.testing.assert_close(out_dense, ref_dense(dense.x, dense.adj, dense.mask), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dense_rows(out_dense, dense.mask), out, atol=1e-5, rtol=1e-5)
