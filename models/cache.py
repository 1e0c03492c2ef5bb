"""On-disk cache of featurized molecules, keyed by content hash.

The key of a molecule is ``SHA-256(featurizer version || 0x00 || SMILES)``: a changed
featurizer or a changed SMILES is a new key, never a stale hit. Graphs are stored packed
in one ``.npz`` per featurizer version (no pickle), rewritten atomically (temporary file,
then rename) when new molecules are added, so a crash leaves the old pack intact.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pharmafl.models.featurize import FEATURIZER_VERSION, MolGraph, mol_graph


def content_key(smiles: str, version: str = FEATURIZER_VERSION) -> str:
    return hashlib.sha256(version.encode() + b"\x00" + smiles.encode()).hexdigest()


class FeatureCache:
    """Content-addressed store of :class:`MolGraph` objects under ``directory``."""

    def __init__(self, directory: str | Path, version: str = FEATURIZER_VERSION):
        self.directory = Path(directory)
        self.version = version
        self.path = self.directory / f"graphs-{version}.npz"
        self._graphs: dict[str, MolGraph] | None = None

    def _load(self) -> dict[str, MolGraph]:
        if self._graphs is None:
            self._graphs = {}
            if self.path.exists():
                with np.load(self.path, allow_pickle=False) as pack:
                    keys = pack["keys"]
                    nodes, edges = pack["node_offsets"], pack["edge_offsets"]
                    x, ei, ea = pack["x"], pack["edge_index"], pack["edge_attr"]
                    for k, key in enumerate(keys):
                        self._graphs[str(key)] = MolGraph(
                            x=x[nodes[k] : nodes[k + 1]],
                            edge_index=ei[:, edges[k] : edges[k + 1]],
                            edge_attr=ea[edges[k] : edges[k + 1]],
                        )
        return self._graphs

    def _save(self, graphs: dict[str, MolGraph]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        keys = sorted(graphs)
        items = [graphs[k] for k in keys]
        node_offsets = np.cumsum([0] + [g.num_nodes for g in items])
        edge_offsets = np.cumsum([0] + [g.edge_index.shape[1] for g in items])
        fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".npz.tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(
                    fh,
                    keys=np.asarray(keys),
                    node_offsets=node_offsets,
                    edge_offsets=edge_offsets,
                    x=np.concatenate([g.x for g in items]),
                    edge_index=np.concatenate([g.edge_index for g in items], axis=1),
                    edge_attr=np.concatenate([g.edge_attr for g in items]),
                )
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def graphs(self, smiles: Sequence[str]) -> list[MolGraph]:
        """Graphs of ``smiles`` in order, featurizing (and storing) only what is missing."""
        graphs = self._load()
        keys = [content_key(s, self.version) for s in smiles]
        missing = {k: s for k, s in zip(keys, smiles) if k not in graphs}
        if missing:
            new = {k: mol_graph(s) for k, s in missing.items()}  # raises before any write
            merged = {**graphs, **new}
            self._save(merged)
            self._graphs = merged
            graphs = merged
        return [graphs[k] for k in keys]


def default_cache_dir() -> Path:
    """``$PHARMAFL_CACHE``, else ``~/.cache/pharmafl/features``."""
    env = os.environ.get("PHARMAFL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "pharmafl" / "features"
