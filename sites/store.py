"""Site data stores: one directory per site, its raw data never leaves it.

``RUN/sites/<site-id>/`` is a dataset store (:func:`~pharmafl.sites.tables.save_dataset`):
Parquet tables of the site's drugs, targets and measurements, the measurements' ``fold``
column holding the site's local split (``train`` / ``val`` / ``test``), and a manifest with
row counts, label statistics and the SHA-256 of every file. The manifest's own SHA-256 is
what the run records for the site.

``RUN/server/benchmark/`` holds the evaluation set the coordinator scores the global model
on: the union of the sites' test shares, which for DAVIS and KIBA is the public DeepDTA test
fold. A consortium on private data would place an agreed public benchmark there instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pharmafl.errors import DataError, Location
from pharmafl.sites.splits import split_measurements
from pharmafl.sites.tables import MANIFEST, DTIDataset, file_sha256, read_store, save_dataset

LOCAL_SPLITS = ("train", "val", "test")


def site_ids(n: int) -> list[str]:
    width = max(2, len(str(n)))
    return [f"site-{i + 1:0{width}d}" for i in range(n)]


def _label_stats(labels: np.ndarray) -> dict:
    if len(labels) == 0:
        return {"count": 0}
    return {
        "count": int(len(labels)),
        "mean": float(labels.mean()),
        "std": float(labels.std()),
        "min": float(labels.min()),
        "max": float(labels.max()),
    }


def _subset(ds: DTIDataset, rows: np.ndarray, name: str, folds: np.ndarray) -> DTIDataset:
    m = ds.measurements.iloc[rows].reset_index(drop=True).copy()
    m["fold"] = folds
    drugs = ds.drugs[ds.drugs["drug_id"].isin(set(m["drug_id"]))].reset_index(drop=True)
    targets = ds.targets[ds.targets["target_id"].isin(set(m["target_id"]))].reset_index(drop=True)
    return DTIDataset(name=name, drugs=drugs, targets=targets, measurements=m)


def local_folds(measurements: pd.DataFrame, val_fraction: float, seed: int) -> np.ndarray:
    """``train`` / ``val`` / ``test`` of each of a site's rows (test = its share of the test fold)."""
    split = split_measurements(measurements, val_fraction, seed)
    folds = np.empty(len(measurements), dtype=object)
    folds[split.train], folds[split.val], folds[split.test] = "train", "val", "test"
    return folds


def write_site_stores(
    ds: DTIDataset,
    site_of_row: np.ndarray,
    run_dir: Path,
    *,
    val_fraction: float,
    seed: int,
    partition: dict,
) -> dict[str, str]:
    """Write every site's store and the benchmark store; return ``{site id: manifest sha256}``."""
    n_sites = int(site_of_row.max()) + 1
    ids = site_ids(n_sites)
    manifests = {}
    test_rows = []
    for k, sid in enumerate(ids):
        rows = np.flatnonzero(site_of_row == k)
        if len(rows) < 3:
            raise DataError(
                f"{sid} would hold {len(rows)} measurements, too few for train/val/test",
                Location(run_dir / "sites" / sid),
                "use fewer sites or another partition",
            )
        folds = local_folds(ds.measurements.iloc[rows].reset_index(drop=True), val_fraction, seed + k)
        site_ds = _subset(ds, rows, f"{ds.name}/{sid}", folds)
        test_rows.append(rows[folds == "test"])
        labels = site_ds.measurements["label"].to_numpy(dtype=float)
        extra = {
            "site": sid,
            "partition": partition,
            "splits": {s: int((folds == s).sum()) for s in LOCAL_SPLITS},
            "label": _label_stats(labels),
            "label_by_split": {s: _label_stats(labels[folds == s]) for s in LOCAL_SPLITS},
            "drugs": len(site_ds.drugs),
            "targets": len(site_ds.targets),
        }
        store = save_dataset(site_ds, run_dir / "sites" / sid, extra=extra)
        manifests[sid] = file_sha256(store / MANIFEST)
    bench_rows = np.sort(np.concatenate(test_rows))
    bench = _subset(ds, bench_rows, f"{ds.name}/benchmark", np.full(len(bench_rows), "test", dtype=object))
    save_dataset(bench, run_dir / "server" / "benchmark", extra={"role": "benchmark"})
    return manifests


@dataclass(frozen=True)
class SiteStore:
    """A verified site store: its dataset and the manifest's SHA-256."""

    site: str
    path: Path
    dataset: DTIDataset
    manifest_sha256: str

    @classmethod
    def open(cls, path: Path) -> SiteStore:
        """Read and verify (every file against the manifest, every row validated)."""
        path = Path(path)
        if not (path / MANIFEST).is_file():
            raise DataError("no site store here (manifest.json missing)", Location(path),
                            "partition the dataset first: pharmafl run writes RUN/sites/<site-id>/")
        ds = read_store(path)
        folds = set(ds.measurements["fold"].dropna().unique())
        if not folds <= set(LOCAL_SPLITS) or "train" not in folds:
            raise DataError(
                f"site store folds {sorted(folds)} are not a local train/val/test split",
                Location(path / "measurements.parquet", column="fold"),
                f"label every row one of {list(LOCAL_SPLITS)}",
            )
        return cls(path.name, path, ds, file_sha256(path / MANIFEST))

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.dataset.measurements["fold"].eq(split).to_numpy())
