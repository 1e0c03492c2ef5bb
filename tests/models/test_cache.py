import numpy as np
import pytest

from pharmafl.errors import FeaturizationError
from pharmafl.models.cache import FeatureCache, content_key
from pharmafl.models.featurize import mol_graph


def test_cache_roundtrip_and_reuse(tmp_path):
    smiles = ["CCO", "c1ccncc1", "CC(=O)Oc1ccccc1C(=O)O"]
    first = FeatureCache(tmp_path).graphs(smiles)
    assert len(list(tmp_path.glob("graphs-*.npz"))) == 1
    again = FeatureCache(tmp_path).graphs(list(reversed(smiles)))  # fresh instance: read from disk
    for s, g, h in zip(smiles, first, reversed(again)):
        np.testing.assert_array_equal(g.x, h.x)
        np.testing.assert_array_equal(g.edge_index, h.edge_index)
        np.testing.assert_array_equal(h.x, mol_graph(s).x)


def test_cache_adds_new_molecules_and_keys_by_content(tmp_path):
    cache = FeatureCache(tmp_path)
    cache.graphs(["CCO"])
    cache.graphs(["CCN"])
    keys = set(np.load(cache.path)["keys"].tolist())
    assert keys == {content_key("CCO"), content_key("CCN")}
    assert content_key("CCO") != content_key("CCO", version="other")


def test_cache_left_intact_when_a_molecule_fails(tmp_path):
    cache = FeatureCache(tmp_path)
    cache.graphs(["CCO"])
    before = cache.path.read_bytes()
    with pytest.raises(FeaturizationError):
        FeatureCache(tmp_path).graphs(["CCN", "C1CC"])
    assert cache.path.read_bytes() == before
    assert not list(tmp_path.glob("*.tmp"))
