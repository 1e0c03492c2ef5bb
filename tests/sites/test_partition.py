"""Partitioners: seeded, complete, and true to their promise."""

from __future__ import annotations

import numpy as np
import pytest

from pharmafl.errors import ConfigError
from pharmafl.sites.partition import PARTITIONS, compound_clusters, deal_groups, partition
from pharmafl.sites.tables import load_dataset


@pytest.fixture(scope="module")
def davis(shared_data_dir):
    ds = load_dataset("davis", data_dir=shared_data_dir)
    m = ds.measurements
    d_pos = {d: i for i, d in enumerate(ds.drugs.drug_id)}
    t_pos = {t: i for i, t in enumerate(ds.targets.target_id)}
    return dict(
        drug_of_row=m.drug_id.map(d_pos).to_numpy(),
        target_of_row=m.target_id.map(t_pos).to_numpy(),
        labels=m.label.to_numpy(float),
        smiles=list(ds.drugs.smiles),
        sequences=list(ds.targets.sequence),
    )


@pytest.mark.parametrize("strategy", PARTITIONS)
def test_every_row_gets_one_of_n_sites_reproducibly(davis, strategy):
    a = partition(strategy, 10, seed=3, **davis)
    b = partition(strategy, 10, seed=3, **davis)
    assert np.array_equal(a, b)
    assert a.shape == davis["labels"].shape and set(np.unique(a)) == set(range(10))


def test_compound_partition_gives_whole_compounds(davis):
    site = partition("compound", 10, seed=0, **davis)
    for drug in np.unique(davis["drug_of_row"]):
        assert len(np.unique(site[davis["drug_of_row"] == drug])) == 1


def test_target_family_partition_gives_whole_targets_and_identical_sequences_together(davis):
    site = partition("target-family", 10, seed=0, **davis)
    seqs = np.asarray(davis["sequences"], dtype=object)
    by_seq = {}
    for t in np.unique(davis["target_of_row"]):
        owners = np.unique(site[davis["target_of_row"] == t])
        assert len(owners) == 1
        by_seq.setdefault(seqs[t], set()).add(int(owners[0]))
    assert all(len(owners) == 1 for owners in by_seq.values())  # mutants stay with their kinase


def test_dirichlet_small_alpha_skews_labels_more(davis):
    def skew(alpha):
        site = partition("dirichlet", 10, alpha=alpha, seed=0, **davis)
        means = [davis["labels"][site == s].mean() for s in range(10) if (site == s).any()]
        return np.std(means)

    assert skew(0.1) > skew(100.0)


def test_quantity_partition_sizes_are_skewed(davis):
    sizes = np.bincount(partition("quantity", 10, alpha=0.3, seed=0, **davis))
    assert sizes.min() >= 1 and sizes.max() > 5 * np.median(sizes) / 2


def test_similar_scaffolds_cluster_together():
    c = compound_clusters(["c1ccccc1CCN", "c1ccccc1CCO", "C1CCNCC1C(=O)O"])
    assert c[0] == c[1] != c[2]


def test_deal_groups_balances_load():
    site = deal_groups(np.array([5, 4, 3, 3, 2, 1]), 3, np.random.default_rng(0))
    loads = np.bincount(site, weights=[5, 4, 3, 3, 2, 1], minlength=3)
    assert loads.max() - loads.min() <= 1


def test_too_many_sites_for_compounds_is_a_clear_error(davis):
    with pytest.raises(ConfigError, match="fewer than 100 sites"):
        partition("compound", 100, seed=0, **davis)
    with pytest.raises(ConfigError, match="Could not resolve partition"):
        partition("scaffold", 10, seed=0, **davis)
