r"""A site's drug-target interaction data: the dataset, its readers, its Parquet store.

A dataset is three tables, as distributed with DeepDTA (Öztürk et al. 2018, Bioinformatics
34:i821): ``drugs`` (drug_id, smiles[, smiles_iso]), ``targets`` (target_id, sequence) and
``measurements`` (drug_id, target_id, affinity, unit, label, fold); units and labels are
defined in :mod:`pharmafl.sites.validation`.

Every reader checks every row (:func:`~pharmafl.sites.validation.find_problems`) and either
raises one :class:`~pharmafl.errors.DataError` naming file, 1-based data row (header
excluded), id and fix, or, with ``quarantine=PATH``, writes every bad row to a CSV report and
drops it. Accepted columns, units and file names: ``docs/data.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pharmafl.errors import DataError, FetchError, Location
from pharmafl.sites.validation import (  # noqa: F401  (re-exported: the table API in one place)
    ALIASES,
    CONCENTRATION_UNITS,
    MODEL_WINDOW,
    OUTLIER_SD,
    PX_UNITS,
    REPORT_COLUMNS,
    SCORE_UNITS,
    TABLES,
    UNITS,
    LongSequences,
    Problem,
    affinity_to_label,
    find_problems,
    label_outliers,
    long_sequences,
    sequence_error,
    smiles_error,
    write_report,
)

# Public datasets by name: the unit of the tidy tables' `affinity` column, and their pinned SHA-256.
PUBLIC_UNITS = {"davis": "nM_Kd", "kiba": "kiba"}
TIDY_SHA256 = {
    "davis_deepdta_drugs.csv.gz": "e891e6995f5f6d266f5abfdcc7c51f5a6257c7970e41beaf804b9955ff9a22c1",
    "davis_deepdta_targets.csv.gz": "234b05ac27969c9cb65b686dfd67afaf3540c10d998b223d06b6352409ea0b32",
    "davis_deepdta_pairs.csv.gz": "41e21f6561a3235d81e676f381a9a9513b411a40a95945f91df2b9c2616b57ab",
    "kiba_deepdta_drugs.csv.gz": "987b6431bbf4ac0a042695ccdd6111dd21b717d7d0888353e0d0a158d4450b8f",
    "kiba_deepdta_targets.csv.gz": "fef7e1a5eef61d2820efcd8140c3628766f7f4c56f8f0a78fe7802442581b061",
    "kiba_deepdta_pairs.csv.gz": "61f3fd7b36866e40d2677fdbde53ca761462081ed5605f1b07aa9e780b50c951",
}

TABLE_FILE_NAMES = {"drugs": ("drugs",), "targets": ("targets",), "measurements": ("measurements", "pairs")}
TABLE_SUFFIXES = (".csv", ".csv.gz", ".csv.xz", ".csv.bz2", ".parquet")
STORE_FORMAT = "pharmafl-dti-store/1"
MANIFEST = "manifest.json"


@dataclass(frozen=True, eq=False)
class DTIDataset:
    """Validated drugs, targets and measurements of one site; ``quarantined`` rows were dropped."""

    name: str
    drugs: pd.DataFrame
    targets: pd.DataFrame
    measurements: pd.DataFrame
    quarantined: int = 0

    def __post_init__(self) -> None:
        for table, columns in (
            ("drugs", ("drug_id", "smiles")),
            ("targets", ("target_id", "sequence")),
            ("measurements", ("drug_id", "target_id", "affinity", "unit", "label", "fold")),
        ):
            missing = [c for c in columns if c not in getattr(self, table).columns]
            if missing:
                raise DataError(
                    f"DTIDataset.{table} lacks columns {missing}",
                    fix="build datasets with read_tables, load_dataset or from_frames",
                )

    def summary(self) -> dict:
        """Counts, units, folds, label statistics and flagged label outliers (JSON-serializable)."""
        m = self.measurements
        labels = m["label"].to_numpy(dtype=float)
        outliers = np.zeros(len(m), dtype=bool)
        for _, idx in m.groupby("unit").indices.items():
            outliers[idx] = label_outliers(labels[idx])
        flagged = m[outliers]
        return {
            "name": self.name,
            "drugs": len(self.drugs),
            "targets": len(self.targets),
            "measurements": len(m),
            "quarantined": self.quarantined,
            "units": {str(k): int(v) for k, v in m["unit"].value_counts().sort_index().items()},
            "folds": {str(k): int(v) for k, v in m["fold"].fillna("none").value_counts().sort_index().items()},
            "label": {
                "min": float(labels.min()),
                "max": float(labels.max()),
                "mean": float(labels.mean()),
                "std": float(labels.std()),
                "median": float(np.median(labels)),
            }
            if len(m)
            else None,
            "label_outliers": {
                "rule": f"|label - mean| > {OUTLIER_SD:g} sd, per unit; kept, not dropped",
                "count": int(outliers.sum()),
                "examples": [
                    {"drug_id": d, "target_id": t, "label": float(v)}
                    for d, t, v in flagged[["drug_id", "target_id", "label"]].head(10).itertuples(index=False)
                ],
            },
            "targets_sharing_a_sequence": int(self.targets["sequence"].duplicated(keep=False).sum()),
            "drugs_sharing_a_smiles": int(self.drugs["smiles"].duplicated(keep=False).sum()),
        }

    def long_targets(self, window: int = MODEL_WINDOW) -> LongSequences:
        """Targets whose sequence tokenization cuts to ``window`` residues (``model.max_len``)."""
        return long_sequences(self.targets["target_id"].tolist(), self.targets["sequence"].tolist(), window)


def from_frames(
    drugs: pd.DataFrame,
    targets: pd.DataFrame,
    measurements: pd.DataFrame,
    *,
    name: str,
    unit: str | None = None,
    files: Sequence[str] = ("<drugs>", "<targets>", "<measurements>"),
    quarantine: Path | None = None,
    quarantined: int = 0,
) -> DTIDataset:
    """Validate in-memory tables (``files`` names them in messages) and build the dataset."""
    probs, d, t, m = find_problems(drugs, targets, measurements, unit=unit, files=[str(f) for f in files])
    if quarantine is None:
        if probs:
            raise probs[0].error(also=len(probs) - 1)
        return DTIDataset(name, d, t, m, quarantined)
    write_report(probs, quarantine)
    kept = []
    for table, frame in zip(TABLES, (d, t, m)):
        drop = {p.row - 1 for p in probs if p.table == table}
        quarantined += len(drop)
        kept.append(frame.drop(index=sorted(drop)).reset_index(drop=True))
        if not len(kept[-1]):
            raise DataError(
                f"every {table} row was quarantined",
                Location(files[TABLES.index(table)]),
                f"see the report {quarantine}",
            )
    return DTIDataset(name, *kept, quarantined=quarantined)


# --- files ------------------------------------------------------------------------------------


def read_table(path: Path) -> pd.DataFrame:
    """One table from CSV (.csv, .csv.gz, .csv.xz, .csv.bz2; every cell read as text) or Parquet."""
    path = Path(path)
    if not path.is_file():
        raise DataError("no such file", Location(path), "check the path")
    if path.name.endswith(".parquet"):
        return pd.read_parquet(path)
    if not path.name.endswith(TABLE_SUFFIXES):
        raise DataError(
            f"unsupported file type {path.name!r}", Location(path), f"use one of {', '.join(TABLE_SUFFIXES)}"
        )
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (ValueError, UnicodeDecodeError, OSError, EOFError) as exc:
        raise DataError(f"cannot read the table: {exc}", Location(path), "give a UTF-8 CSV with a header row") from exc


def read_tables(
    drugs: Path,
    targets: Path,
    measurements: Path,
    *,
    name: str,
    unit: str | None = None,
    quarantine: Path | None = None,
) -> DTIDataset:
    """Read and validate three table files into a :class:`DTIDataset`."""
    paths = (Path(drugs), Path(targets), Path(measurements))
    frames = [read_table(p) for p in paths]
    return from_frames(*frames, name=name, unit=unit, files=[str(p) for p in paths], quarantine=quarantine)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_data_dir() -> Path:
    """``$PHARMAFL_DATA`` if set, else ``~/.cache/pharmafl``."""
    env = os.environ.get("PHARMAFL_DATA")
    return Path(env) if env else Path.home() / ".cache" / "pharmafl"


def _stem(name: str) -> str | None:
    suffix = next((s for s in sorted(TABLE_SUFFIXES, key=len, reverse=True) if name.endswith(s)), None)
    return name[: -len(suffix)] if suffix else None


def find_tables(directory: Path) -> tuple[Path, Path, Path]:
    """The drugs, targets and measurements files of ``directory``: ``[prefix_]drugs.csv`` etc."""
    found = []
    for table in TABLES:
        stems = TABLE_FILE_NAMES[table]
        hits = sorted(
            p
            for p in Path(directory).iterdir()
            if (stem := _stem(p.name)) and any(stem == s or stem.endswith("_" + s) for s in stems)
        )
        if len(hits) != 1:
            names = [f"[prefix_]{s}{x}" for s in TABLE_FILE_NAMES[table] for x in TABLE_SUFFIXES]
            raise DataError(
                f"need exactly one {table} file, found {[p.name for p in hits]}",
                Location(directory),
                f"name it one of {', '.join(names)}, or call read_tables with explicit paths",
            )
        found.append(hits[0])
    return found[0], found[1], found[2]


def save_dataset(ds: DTIDataset, out_dir: Path, *, extra: dict | None = None) -> Path:
    """Write ``ds`` as Parquet plus ``manifest.json`` (rows, bytes, sha256 per file), atomically.

    ``extra`` (JSON-serializable) is stored under the manifest's ``"extra"`` key.

    The store is written into a temporary sibling directory and renamed into place; an existing
    store at ``out_dir`` is replaced, any other non-empty directory is refused.
    """
    out = Path(out_dir)
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or (out / MANIFEST).is_file())):
        raise DataError(
            "exists and is not an empty directory nor a pharmafl dataset store",
            Location(out),
            "choose a new or empty directory",
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        files = {}
        for table in TABLES:
            frame = getattr(ds, table)
            frame.to_parquet(tmp / f"{table}.parquet", index=False)
            files[f"{table}.parquet"] = {
                "rows": len(frame),
                "bytes": (tmp / f"{table}.parquet").stat().st_size,
                "sha256": file_sha256(tmp / f"{table}.parquet"),
            }
        manifest = {"format": STORE_FORMAT, "name": ds.name, "quarantined": ds.quarantined, "files": files}
        if extra:
            manifest["extra"] = extra
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        if out.exists():
            os.replace(out, old)  # rename(2) may replace an empty directory
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def read_store(store: Path, *, quarantine: Path | None = None) -> DTIDataset:
    """Read a store written by :func:`save_dataset`, verifying every file against the manifest."""
    store = Path(store)
    try:
        manifest = json.loads((store / MANIFEST).read_text())
        entries = {t: manifest["files"][f"{t}.parquet"] for t in TABLES}
        fmt, name, quarantined = manifest["format"], manifest["name"], int(manifest["quarantined"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(
            f"unreadable manifest: {exc!r}", Location(store / MANIFEST), "re-create the store with save_dataset"
        ) from exc
    if fmt != STORE_FORMAT:
        raise DataError(
            f"store format {fmt!r}, expected {STORE_FORMAT!r}", Location(store / MANIFEST), "re-create the store"
        )
    for table, entry in entries.items():
        path = store / f"{table}.parquet"
        actual = file_sha256(path) if path.is_file() else "missing"
        if actual != entry["sha256"]:
            raise DataError(
                f"sha256 {actual} does not match the manifest's {entry['sha256']}; the store was modified",
                Location(path),
                "re-create the store (pharmafl data import, or fetch --force)",
            )
    frames = [pd.read_parquet(store / f"{t}.parquet") for t in TABLES]
    return from_frames(
        *frames,
        name=name,
        files=[str(store / f"{t}.parquet") for t in TABLES],
        quarantine=quarantine,
        quarantined=quarantined,
    )


def _load_public(name: str, data_dir: Path, quarantine: Path | None) -> DTIDataset:
    tidy = [data_dir / f"{name}_deepdta_{t}.csv.gz" for t in ("drugs", "targets", "pairs")]
    if all(p.is_file() for p in tidy):
        for path in tidy:
            actual = file_sha256(path)
            if actual != TIDY_SHA256[path.name]:
                raise FetchError(
                    f"{path}: sha256 {actual} does not match the pinned {TIDY_SHA256[path.name]}; "
                    f"the file was not used. Restore the original, or remove the three tidy tables "
                    f"and run `pharmafl data fetch {name}`"
                )
        return read_tables(*tidy, name=name, unit=PUBLIC_UNITS[name], quarantine=quarantine)
    if (data_dir / name / MANIFEST).is_file():
        return read_store(data_dir / name, quarantine=quarantine)
    raise FetchError(
        f"dataset {name!r} not found in {data_dir} (data_dir, else $PHARMAFL_DATA, else ~/.cache/pharmafl): expected "
        f"either the tidy tables {', '.join(str(p) for p in tidy)} or a fetched store {data_dir / name / MANIFEST}. "
        f"Run `pharmafl data fetch {name} --data-dir {data_dir}`, or place the tidy tables there"
    )


def load_dataset(
    name_or_path: str | Path, *, data_dir: Path | None = None, quarantine: Path | None = None, unit: str | None = None
) -> DTIDataset:
    """Load a public dataset by name (``davis``, ``kiba``) or a directory of tables or a store.

    A ``str`` equal to a public name is that dataset, looked up in ``data_dir``; anything else is
    a path: a store written by :func:`save_dataset` (has ``manifest.json``) or a directory holding
    one drugs, one targets and one measurements table (see :func:`find_tables`).
    """
    if isinstance(name_or_path, str) and name_or_path in PUBLIC_UNITS:
        return _load_public(name_or_path, Path(data_dir) if data_dir else default_data_dir(), quarantine)
    path = Path(name_or_path)
    if (path / MANIFEST).is_file():
        return read_store(path, quarantine=quarantine)
    if path.is_dir():
        return read_tables(*find_tables(path), name=path.resolve().name, unit=unit, quarantine=quarantine)
    raise DataError(
        f"not a public dataset name ({', '.join(PUBLIC_UNITS)}) nor a directory",
        Location(path),
        "pass davis, kiba, a directory of drugs/targets/measurements tables, or a dataset store",
    )
