"""Site data stores: one directory per site, in the site's home; its raw data never leaves it.

``SITE_HOME/store/`` (:mod:`pharmafl.sites.home`) is a dataset store
(:func:`~pharmafl.sites.tables.save_dataset`): Parquet tables of the site's drugs, targets
and measurements, the measurements' ``fold`` column holding the site's local split
(``train`` / ``val`` / ``test``), and a manifest with row counts, label statistics, the
targets whose sequence the model's window cuts (``targets_truncated``) and the SHA-256 of
every file. The manifest's own SHA-256 is what the site's card carries and the run pins.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pharmafl.errors import DataError, Location
from pharmafl.sites.splits import split_measurements
from pharmafl.sites.tables import MANIFEST, MODEL_WINDOW, DTIDataset, file_sha256, read_store, save_dataset

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


def subset(ds: DTIDataset, rows: np.ndarray, name: str, folds: np.ndarray | None = None) -> DTIDataset:
    """Rows ``rows`` of ``ds``'s measurements (their ``fold`` set to ``folds`` if given) with just the
    compounds and targets they use."""
    m = ds.measurements.iloc[rows].reset_index(drop=True).copy()
    if folds is not None:
        m["fold"] = folds
    drugs = ds.drugs[ds.drugs["drug_id"].isin(set(m["drug_id"]))].reset_index(drop=True)
    targets = ds.targets[ds.targets["target_id"].isin(set(m["target_id"]))].reset_index(drop=True)
    return DTIDataset(name=name, drugs=drugs, targets=targets, measurements=m)


def local_folds(measurements: pd.DataFrame, val_fraction: float, seed: int) -> np.ndarray:
    """``train`` / ``val`` / ``test`` of each of a site's rows.

    With DeepDTA folds, the site's test rows are its share of the test fold (possibly none: a
    small site may hold no test pair) and validation is a seeded share of its training rows;
    without folds, :func:`~pharmafl.sites.splits.split_measurements` splits at random.
    """
    folds = np.empty(len(measurements), dtype=object)
    fold = measurements["fold"] if "fold" in measurements else pd.Series([None] * len(measurements))
    if not fold.notna().any():
        split = split_measurements(measurements, val_fraction, seed)
        folds[split.train], folds[split.val], folds[split.test] = "train", "val", "test"
        return folds
    fold = fold.fillna("").astype(str)
    test = np.flatnonzero(fold.eq("test").to_numpy())
    rest = np.random.default_rng(seed).permutation(np.flatnonzero(~fold.eq("test").to_numpy()))
    n_val = min(max(1, int(round(len(rest) * val_fraction))), len(rest) - 1)
    folds[test], folds[rest[:n_val]], folds[rest[n_val:]] = "test", "val", "train"
    return folds


def check_site_rows(ds: DTIDataset, rows: np.ndarray, site: str, where: Location, fix: str) -> None:
    """Refuse a site whose ``rows`` of ``ds`` are too few for a train/val/test split."""
    in_test = ds.measurements["fold"].eq("test").to_numpy() if "fold" in ds.measurements else None
    n_train = len(rows) - (int(in_test[rows].sum()) if in_test is not None else 0)
    if len(rows) < 3 or n_train < 2:
        raise DataError(
            f"{site} would hold {len(rows)} measurements ({n_train} outside the test fold), too few for train/val/test",
            where,
            fix,
        )


def write_site_store(
    ds: DTIDataset,
    rows: np.ndarray,
    out: Path,
    *,
    site: str,
    val_fraction: float,
    seed: int,
    partition: dict | None,
    max_len: int = MODEL_WINDOW,
) -> np.ndarray:
    """Write ``rows`` of ``ds`` as ``site``'s store at ``out`` (local folds, label statistics and the
    targets longer than the model window ``max_len`` in the manifest's extras); return each row's
    local fold."""
    folds = local_folds(ds.measurements.iloc[rows].reset_index(drop=True), val_fraction, seed)
    site_ds = subset(ds, rows, f"{ds.name}/{site}", folds)
    labels = site_ds.measurements["label"].to_numpy(dtype=float)
    extra = {
        "site": site,
        "partition": partition,
        "splits": {s: int((folds == s).sum()) for s in LOCAL_SPLITS},
        "label": _label_stats(labels),
        "label_by_split": {s: _label_stats(labels[folds == s]) for s in LOCAL_SPLITS},
        "drugs": len(site_ds.drugs),
        "targets": len(site_ds.targets),
        "targets_truncated": site_ds.long_targets(max_len).as_dict(),
    }
    save_dataset(site_ds, out, extra=extra)
    return folds


def store_units(store: SiteStore, unit: str) -> int:
    """Privacy units among ``store``'s training rows: pairs, or distinct compounds."""
    rows = store.rows("train")
    if unit == "compound":
        return len(set(store.dataset.measurements["drug_id"].to_numpy()[rows]))
    return len(rows)


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
            raise DataError(
                "no site store here (manifest.json missing)",
                Location(path),
                "partition the dataset first: pharmafl run writes RUN/sites/<site-id>/",
            )
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
