import numpy as np
import pytest
import torch

from pharmafl.errors import FeaturizationError
from pharmafl.models.featurize import (
    NUM_ATOM_FEATURES,
    NUM_BOND_FEATURES,
    dense_batch,
    mol_graph,
    parse_smiles,
    sparse_batch,
)

ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"


def test_graph_shapes_and_symmetric_edges():
    g = mol_graph(ASPIRIN)
    assert g.x.shape == (13, NUM_ATOM_FEATURES) == (13, 78)
    assert g.edge_index.shape == (2, 26)  # 13 bonds, both directions
    assert g.edge_attr.shape == (26, NUM_BOND_FEATURES)
    pairs = set(map(tuple, g.edge_index.T.tolist()))
    assert all((j, i) in pairs for i, j in pairs)


def test_atom_one_hots_sum_to_one_per_group():
    x = mol_graph(ASPIRIN).x
    assert (x[:, :44].sum(1) == 1).all()  # element
    for lo in (44, 55, 66):  # degree, total Hs, implicit valence
        assert (x[:, lo : lo + 11].sum(1) == 1).all()
    assert x[:, 77].sum() == 6  # six aromatic atoms


@pytest.mark.parametrize(
    "smiles, fragment",
    [("C1CC", "unclosed ring"), ("CN(C)(C)(C)C", "valence"), ("Cx", "syntax error")],
)
def test_invalid_smiles_raise_rdkit_message(smiles, fragment):
    with pytest.raises(FeaturizationError, match=fragment):
        parse_smiles(smiles)


@pytest.mark.parametrize("smiles", ["", "   "])
def test_empty_smiles_rejected(smiles):
    with pytest.raises(FeaturizationError, match="empty SMILES"):
        mol_graph(smiles)


def test_dense_batch_matches_sparse_structure():
    graphs = [mol_graph(s) for s in (ASPIRIN, "CCO", "c1ccncc1")]
    dense = dense_batch(graphs)
    sparse = sparse_batch(graphs)
    assert dense.x.shape == (3, 13, 78)
    assert dense.mask.sum().item() == sparse.num_nodes == 13 + 3 + 6
    assert dense.adj.sum().item() == sparse.edge_index.shape[1]
    # padded rows are zero
    assert torch.all(dense.x[1, 3:] == 0) and torch.all(dense.adj[1, 3:, :] == 0)
    np.testing.assert_array_equal(dense.x[2, :6].numpy(), graphs[2].x)


def test_dense_batch_refuses_too_small_max_nodes():
    with pytest.raises(FeaturizationError, match="max_nodes"):
        dense_batch([mol_graph(ASPIRIN)], max_nodes=5)
