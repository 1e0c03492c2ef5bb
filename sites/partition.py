"""Partition a dataset's measurements among sites. Seeded; rows in, a site per row out.

Strategies (``PARTITIONS``):

``compound`` (default, the pharma reality)
    each site owns whole compounds. Compounds are grouped by Bemis-Murcko scaffold, and
    scaffolds by Butina clustering of Morgan fingerprints (Tanimoto distance < ``cutoff``),
    so a chemical series stays at one site; clusters are dealt to sites largest-first to the
    site with the fewest measurements (balanced sizes, skewed chemistry).
``target-family``
    each site owns whole target families: a ``family`` column of the targets table when
    given, else Ward clusters of L2-normalised 3-mer profiles (mutants and constructs of one
    kinase share a sequence, so they stay together), dealt like compound clusters.
``dirichlet``
    label skew (Hsu et al. 2019, https://arxiv.org/abs/1909.06335): labels binned into
    quintiles; each bin's rows are split among sites by proportions drawn from
    Dirichlet(α·1). Small α = strong skew. Tied quantile edges merge bins: on DAVIS, where
    70% of labels sit at the censoring value pKd 5.0, that leaves two bins (censored or
    not), so the skew is in the share of measured binders a site holds.
``quantity``
    size skew: site shares drawn from Dirichlet(α·1), rows assigned at random.
``iid``
    rows shuffled and dealt evenly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rdkit import Chem, DataStructs
from rdkit.Chem import rdFingerprintGenerator
from rdkit.Chem.Scaffolds import MurckoScaffold
from rdkit.ML.Cluster import Butina

from pharmafl.errors import ConfigError

PARTITIONS = ("compound", "target-family", "dirichlet", "quantity", "iid")


def deal_groups(group_sizes: np.ndarray, n_sites: int, rng: np.random.Generator) -> np.ndarray:
    """Site of each group: largest first (ties in random order) to the least-loaded site."""
    order = sorted(rng.permutation(len(group_sizes)), key=lambda g: -group_sizes[g])
    load = np.zeros(n_sites)
    site = np.empty(len(group_sizes), dtype=np.int64)
    for g in order:
        s = int(np.flatnonzero(load == load.min())[0])
        site[g] = s
        load[s] += group_sizes[g]
    return site


def compound_clusters(smiles: Sequence[str], cutoff: float = 0.6) -> np.ndarray:
    """Cluster id of each compound: Butina clusters of its Murcko scaffold's Morgan fingerprint."""
    scaffolds = [MurckoScaffold.MurckoScaffoldSmiles(s) or s for s in smiles]
    unique = sorted(set(scaffolds))
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    fps = [gen.GetFingerprint(Chem.MolFromSmiles(s)) for s in unique]
    dists = []
    for i in range(1, len(fps)):
        dists.extend(1.0 - x for x in DataStructs.BulkTanimotoSimilarity(fps[i], fps[:i]))
    clusters = Butina.ClusterData(dists, len(fps), cutoff, isDistData=True)
    of_scaffold = {}
    for cid, members in enumerate(sorted(clusters, key=lambda c: min(c))):
        for m in members:
            of_scaffold[unique[m]] = cid
    return np.asarray([of_scaffold[s] for s in scaffolds], dtype=np.int64)


def sequence_families(sequences: Sequence[str], n_families: int) -> np.ndarray:
    """Family id of each sequence: Ward clusters of L2-normalised 3-mer count profiles."""
    from scipy.cluster.hierarchy import fcluster, linkage

    unique, inverse = np.unique(np.asarray(sequences, dtype=object), return_inverse=True)
    if len(unique) <= n_families:
        return inverse.astype(np.int64)
    vocab: dict[str, int] = {}
    rows = []
    for seq in unique:
        counts: dict[int, float] = {}
        for i in range(len(seq) - 2):
            k = vocab.setdefault(seq[i : i + 3], len(vocab))
            counts[k] = counts.get(k, 0.0) + 1.0
        rows.append(counts)
    profile = np.zeros((len(unique), len(vocab)), dtype=np.float32)
    for r, counts in enumerate(rows):
        profile[r, list(counts)] = list(counts.values())
    profile /= np.linalg.norm(profile, axis=1, keepdims=True) + 1e-12
    labels = fcluster(linkage(profile, method="ward"), n_families, "maxclust")  # ward: balanced sizes
    return (labels - 1)[inverse].astype(np.int64)


def partition(
    strategy: str,
    n_sites: int,
    *,
    drug_of_row: np.ndarray,
    target_of_row: np.ndarray,
    labels: np.ndarray,
    smiles: Sequence[str],
    sequences: Sequence[str],
    families: Sequence[str] | None = None,
    alpha: float = 0.5,
    seed: int = 0,
) -> np.ndarray:
    """Site index (0..n_sites-1) of every measurement row.

    Args:
        drug_of_row, target_of_row: entity position of each row in ``smiles`` / ``sequences``.
        families: optional family label per target (``target-family``).
        alpha: concentration for ``dirichlet`` and ``quantity``.
    """
    if strategy not in PARTITIONS:
        raise ConfigError(f"Could not resolve partition {strategy!r} among choices {list(PARTITIONS)}")
    if n_sites < 1:
        raise ConfigError(f"the number of sites must be >= 1, got {n_sites}")
    if alpha <= 0:
        raise ConfigError(f"partition alpha must be > 0, got {alpha}")
    rng = np.random.default_rng(seed)
    n = len(labels)
    if strategy == "compound":
        owners = _entity_groups(compound_clusters(smiles), drug_of_row, n_sites, rng, "compound", len(smiles))
        return owners[drug_of_row]
    if strategy == "target-family":
        fam = (
            np.unique(np.asarray(families, dtype=object), return_inverse=True)[1]
            if families is not None
            else sequence_families(sequences, 4 * n_sites)
        )
        owners = _entity_groups(fam, target_of_row, n_sites, rng, "target-family", len(sequences))
        return owners[target_of_row]
    if strategy == "iid":
        site = np.empty(n, dtype=np.int64)
        site[rng.permutation(n)] = np.arange(n) % n_sites
        return site
    if strategy == "quantity":
        shares = rng.dirichlet(np.full(n_sites, alpha))
        sizes = _sizes(shares, n, minimum=1)
        site = np.repeat(np.arange(n_sites), sizes)
        return site[rng.permutation(n)] if n else site
    # dirichlet label skew over label quantile bins
    edges = np.unique(np.quantile(labels, np.linspace(0, 1, 6)[1:-1]))
    bins = np.searchsorted(edges, labels, side="right")
    site = np.empty(n, dtype=np.int64)
    for b in np.unique(bins):
        rows = rng.permutation(np.flatnonzero(bins == b))
        sizes = _sizes(rng.dirichlet(np.full(n_sites, alpha)), len(rows), minimum=0)
        site[rows] = np.repeat(np.arange(n_sites), sizes)
    return site


def _sizes(shares: np.ndarray, n: int, minimum: int) -> np.ndarray:
    """Integer sizes summing to ``n``, each >= ``minimum``, proportional to ``shares``."""
    k = len(shares)
    if n < minimum * k:
        raise ConfigError(f"{n} rows cannot give {k} sites at least {minimum} row(s) each; use fewer sites")
    extra = n - minimum * k
    raw = shares * extra
    sizes = np.floor(raw).astype(np.int64)
    sizes[np.argsort(raw - sizes)[::-1][: extra - sizes.sum()]] += 1
    return sizes + minimum


def _entity_groups(
    group_of_entity: np.ndarray, entity_of_row: np.ndarray, n_sites: int, rng, what: str, n_entities: int
) -> np.ndarray:
    """Site of each entity, dealing whole groups by their number of rows."""
    n_groups = int(group_of_entity.max()) + 1 if len(group_of_entity) else 0
    if n_groups < n_sites:
        raise ConfigError(
            f"the {what} partition found {n_groups} groups among {n_entities} entities, fewer than "
            f"{n_sites} sites; use fewer sites, another partition (iid, dirichlet, quantity) or a larger dataset"
        )
    rows_per_entity = np.bincount(entity_of_row, minlength=len(group_of_entity))
    group_rows = np.bincount(group_of_entity, weights=rows_per_entity, minlength=n_groups)
    return deal_groups(group_rows, n_sites, rng)[group_of_entity]
