r"""A site's drug-target interaction data: the dataset, its readers, validation, quarantine, store.

A dataset is three tables, as distributed with DeepDTA (Öztürk et al. 2018, Bioinformatics
34:i821): ``drugs`` (drug_id, smiles[, smiles_iso]), ``targets`` (target_id, sequence) and
``measurements`` (drug_id, target_id, affinity, unit, label, fold). ``label`` is the regression
target: for a concentration :math:`X` in nM (Kd, Ki, IC50)

.. math::

    \mathrm{p}X = -\log_{10}(X \cdot 10^{-9}) = 9 - \log_{10} X,

pX values and KIBA scores (Tang et al. 2014, as transformed by SimBoost) are used as given.

Every reader checks every row (:func:`find_problems`) and either raises one
:class:`~pharmafl.errors.DataError` naming file, 1-based data row (header excluded), id and fix,
or, with ``quarantine=PATH``, writes every bad row to a CSV report and drops it. Accepted
columns, units and file names: ``docs/data.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from rdkit import Chem, rdBase

from pharmafl.errors import DataError, FetchError, Location

CONCENTRATION_UNITS = ("nM_Kd", "nM_Ki", "nM_IC50")
PX_UNITS = ("pKd", "pKi", "pIC50")
SCORE_UNITS = ("kiba",)
UNITS = CONCENTRATION_UNITS + PX_UNITS + SCORE_UNITS
_PX_OF = {"nM_Kd": "pKd", "nM_Ki": "pKi", "nM_IC50": "pIC50", "pKd": "pKd", "pKi": "pKi", "pIC50": "pIC50"}
LABEL_TOLERANCE = 1e-6
OUTLIER_SD = 8.0

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

TABLES = ("drugs", "targets", "measurements")
# canonical column -> accepted names, first match wins; other columns are ignored.
ALIASES = {
    "drugs": {"drug_id": ("drug_id", "compound_id", "molecule_id"),
              "smiles": ("smiles", "canonical_smiles"),
              "smiles_iso": ("smiles_iso", "isomeric_smiles")},
    "targets": {"target_id": ("target_id", "protein_id"),
                "sequence": ("sequence", "protein_sequence")},
    "measurements": {"drug_id": ("drug_id", "compound_id", "molecule_id"),
                     "target_id": ("target_id", "protein_id"),
                     "unit": ("unit",),
                     "fold": ("fold", "deepdta_fold", "split")},
}
_REQUIRED = {"drugs": ("drug_id", "smiles"), "targets": ("target_id", "sequence"),
             "measurements": ("drug_id", "target_id")}
TABLE_FILE_NAMES = {"drugs": ("drugs",), "targets": ("targets",), "measurements": ("measurements", "pairs")}
TABLE_SUFFIXES = (".csv", ".csv.gz", ".csv.xz", ".csv.bz2", ".parquet")
STORE_FORMAT = "pharmafl-dti-store/1"
MANIFEST = "manifest.json"
REPORT_COLUMNS = ("table", "file", "row", "id", "column", "reason", "fix")


@dataclass(frozen=True, eq=False)
class DTIDataset:
    """Validated drugs, targets and measurements of one site; ``quarantined`` rows were dropped."""

    name: str
    drugs: pd.DataFrame
    targets: pd.DataFrame
    measurements: pd.DataFrame
    quarantined: int = 0

    def __post_init__(self) -> None:
        for table, columns in (("drugs", ("drug_id", "smiles")), ("targets", ("target_id", "sequence")),
                               ("measurements", ("drug_id", "target_id", "affinity", "unit", "label", "fold"))):
            missing = [c for c in columns if c not in getattr(self, table).columns]
            if missing:
                raise DataError(f"DTIDataset.{table} lacks columns {missing}",
                                fix="build datasets with read_tables, load_dataset or from_frames")

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
            "label": {"min": float(labels.min()), "max": float(labels.max()), "mean": float(labels.mean()),
                      "std": float(labels.std()), "median": float(np.median(labels))} if len(m) else None,
            "label_outliers": {
                "rule": f"|label - mean| > {OUTLIER_SD:g} sd, per unit; kept, not dropped",
                "count": int(outliers.sum()),
                "examples": [{"drug_id": d, "target_id": t, "label": float(v)} for d, t, v
                             in flagged[["drug_id", "target_id", "label"]].head(10).itertuples(index=False)],
            },
            "targets_sharing_a_sequence": int(self.targets["sequence"].duplicated(keep=False).sum()),
            "drugs_sharing_a_smiles": int(self.drugs["smiles"].duplicated(keep=False).sum()),
        }


@dataclass(frozen=True)
class Problem:
    """One bad row: where it is, what is wrong, how to fix it."""

    table: str
    file: str
    row: int  # 1-based data row, header excluded
    ident: str | None
    column: str | None
    reason: str
    fix: str

    def error(self, also: int = 0) -> DataError:
        fix = self.fix + (f"; {also} more problem(s) follow: pass quarantine=PATH (CLI --quarantine PATH)"
                          " to list every bad row" if also else "")
        return DataError(self.reason, Location(self.file, self.row, self.column, self.ident), fix)


# --- pure rules -------------------------------------------------------------------------------

def affinity_to_label(affinity: np.ndarray, units: np.ndarray | Sequence[str] | str) -> np.ndarray:
    """Regression label: 9 - log10(x) for nM concentrations, the value itself for pX and KIBA."""
    x = np.asarray(affinity, dtype=float)
    conc = np.isin(np.broadcast_to(np.asarray(units, dtype=object), x.shape), CONCENTRATION_UNITS)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(conc, 9.0 - np.log10(x), x)


def label_outliers(labels: np.ndarray, k: float = OUTLIER_SD) -> np.ndarray:
    """Mask of labels farther than ``k`` standard deviations from the mean (none if sd is 0)."""
    x = np.asarray(labels, dtype=float)
    sd = x.std() if x.size > 1 else 0.0
    return np.abs(x - x.mean()) > k * sd if sd > 0 else np.zeros(x.shape, dtype=bool)


def sequence_error(sequence: str) -> str | None:
    """Why ``sequence`` is not a protein sequence, or None. Valid: one or more letters A-Z (any case)."""
    if not sequence:
        return "empty sequence"
    bad = re.search(r"[^A-Za-z]", sequence)
    if bad:
        return (f"sequence has {bad.group()!r} at position {bad.start() + 1}; only letters A-Z are amino-acid "
                "tokens (X, B, Z, U, O and other letters are allowed; digits, spaces, '*', '-' are not)")
    return None


def smiles_error(smiles: str) -> str | None:
    """Why RDKit cannot parse ``smiles`` (RDKit's own message), or None if it parses to atoms."""
    if not smiles:
        return "empty SMILES"
    if re.search(r"\s", smiles):
        return "SMILES contains whitespace (RDKit would silently drop what follows it)"
    with rdBase.CaptureErrorLog() as log:
        mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        lines = [re.sub(r"^\[[0-9:]+\]\s?", "", line) for line in log.messages.splitlines()]
        return "RDKit cannot parse the SMILES: " + (" | ".join(x for x in lines if x) or "no message")
    return "SMILES has no atoms" if mol.GetNumAtoms() == 0 else None


# --- validation -------------------------------------------------------------------------------

def _text(s: pd.Series) -> pd.Series:
    return s.astype(object).where(s.notna(), "").astype(str)


def _canonical(df: pd.DataFrame, table: str, file: str) -> pd.DataFrame:
    df = df.rename(columns=lambda c: str(c).strip())
    mapping = {}
    for canon, names in ALIASES[table].items():
        hit = next((n for n in names if n in df.columns), None)
        if hit is not None:
            mapping[hit] = canon
    found = list(df.columns)
    df = df.rename(columns=mapping)
    missing = [c for c in _REQUIRED[table] if c not in df.columns]
    if missing:
        accepted = "; ".join(f"{c}: {' or '.join(ALIASES[table][c])}" for c in _REQUIRED[table])
        raise DataError(f"{table} table lacks column(s) {missing}: expected {list(_REQUIRED[table])}, found {found}",
                        Location(file), f"name the columns ({accepted})")
    if len(df) == 0:
        raise DataError(f"{table} table has no rows", Location(file), f"add at least one {table} row")
    return df


def _dupes(keys: pd.Series, table: str, file: str, what: str, fix: str) -> list[Problem]:
    dup = keys[keys.duplicated(keep=False)]
    rows = {k: [i + 1 for i in idx] for k, idx in dup.groupby(dup).groups.items()}
    return [Problem(table, file, i + 1, k, None,
                    f"{what} {k!r} appears {len(rows[k])} times (rows {', '.join(map(str, rows[k]))})", fix)
            for i, k in dup.items()]


def _empty_ids(ids: pd.Series, table: str, file: str, column: str) -> list[Problem]:
    return [Problem(table, file, i + 1, None, column, f"empty {column}", f"give every row a {column}")
            for i in np.flatnonzero((ids.str.strip() == "").to_numpy())]


def _drug_problems(d: pd.DataFrame, file: str) -> list[Problem]:
    probs = _empty_ids(d["drug_id"], "drugs", file, "drug_id")
    probs += _dupes(d["drug_id"], "drugs", file, "drug_id", "give each drug exactly one row")
    for col in ("smiles", "smiles_iso"):
        if col not in d.columns:
            continue
        values = d[col].tolist()
        errors = {s: smiles_error(s) for s in set(values) if s or col == "smiles"}
        probs += [Problem("drugs", file, i + 1, d.at[i, "drug_id"], col, errors[s],
                          "correct the SMILES (check it with RDKit Chem.MolFromSmiles) or remove the drug")
                  for i, s in enumerate(values) if errors.get(s)]
    return probs


def _target_problems(t: pd.DataFrame, file: str) -> list[Problem]:
    probs = _empty_ids(t["target_id"], "targets", file, "target_id")
    probs += _dupes(t["target_id"], "targets", file, "target_id", "give each target exactly one row")
    valid = t["sequence"].str.fullmatch(r"[A-Za-z]+").to_numpy(dtype=bool)
    probs += [Problem("targets", file, i + 1, t.at[i, "target_id"], "sequence",
                      sequence_error(t.at[i, "sequence"]),
                      "give the one-letter amino-acid sequence without gaps, stop codons or spaces")
              for i in np.flatnonzero(~valid)]
    return probs


def _units(m: pd.DataFrame, unit: str | None, file: str) -> tuple[np.ndarray, str, list[str]]:
    """Per-row unit strings, the name of the value column and the cross-check columns."""
    fix = f"add a 'unit' column or pass unit= (one of {', '.join(UNITS)})"
    px = [c for c in PX_UNITS if c in m.columns]
    if "affinity" in m.columns:
        value = "affinity"
        if "unit" in m.columns:
            units = _text(m["unit"]).str.strip().to_numpy(dtype=object)
            if unit is not None:
                units = np.where(units == "", unit, units)
        elif unit is not None:
            units = np.full(len(m), unit, dtype=object)
        elif len(px) == 1:
            units = np.full(len(m), "nM_" + px[0][1:], dtype=object)
        else:
            raise DataError("cannot tell the unit of column 'affinity'", Location(file, column="affinity"), fix)
    else:
        named = [c for c in UNITS if c in m.columns]
        if len(named) != 1:
            raise DataError(f"need one value column: 'affinity' (with a unit) or one of {list(UNITS)}; found "
                            f"{named or list(m.columns)}", Location(file),
                            "name the value column 'affinity' and " + fix)
        value = named[0]
        if unit is not None and unit != value:
            raise DataError(f"column {value!r} holds {value} but unit={unit!r} was given",
                            Location(file, column=value), f"pass unit={value!r} or rename the column")
        units = np.full(len(m), value, dtype=object)
    checks = [c for c in px if c != value] + (["label"] if "label" in m.columns else [])
    return units, value, checks


def _measurement_problems(m: pd.DataFrame, files: Sequence[str], bad_drugs: dict, bad_targets: dict,
                          drug_ids: set, target_ids: set, units: np.ndarray, value: str,
                          checks: list[str]) -> tuple[list[Problem], np.ndarray]:
    file = files[2]
    probs = _empty_ids(m["drug_id"], "measurements", file, "drug_id")
    probs += _empty_ids(m["target_id"], "measurements", file, "target_id")
    pair = m["drug_id"] + " / " + m["target_id"]
    for col, table, known, bad, src in (("drug_id", "drugs", drug_ids, bad_drugs, files[0]),
                                        ("target_id", "targets", target_ids, bad_targets, files[1])):
        for i in np.flatnonzero(~m[col].isin(known).to_numpy() & (m[col] != "").to_numpy()):
            probs.append(Problem("measurements", file, i + 1, pair[i], col,
                                 f"unknown {col} {m.at[i, col]!r}: not in {src}",
                                 f"add it to the {table} table or remove the measurement"))
        for i in np.flatnonzero(m[col].isin(bad.keys()).to_numpy()):
            p = bad[m.at[i, col]]
            probs.append(Problem("measurements", file, i + 1, pair[i], col,
                                 f"{col} {m.at[i, col]!r} was rejected ({src} row {p.row}: {p.reason})",
                                 f"fix that {table} row; this measurement is dropped with it"))
    raw = m[value]
    x = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)
    known_unit = np.isin(units, UNITS)
    for i in np.flatnonzero(~known_unit):
        probs.append(Problem("measurements", file, i + 1, pair[i], "unit", f"unknown unit {units[i]!r}",
                             f"use one of {', '.join(UNITS)}"))
    for i in np.flatnonzero(known_unit & ~np.isfinite(x)):
        probs.append(Problem("measurements", file, i + 1, pair[i], value,
                             f"{value} {str(raw.iloc[i])!r} is not a finite number",
                             "give a number, or remove the row if it was not measured"))
    for i in np.flatnonzero(np.isin(units, CONCENTRATION_UNITS) & np.isfinite(x) & (x <= 0)):
        probs.append(Problem("measurements", file, i + 1, pair[i], value,
                             f"{value} {float(x[i])!r} {units[i]} is not positive",
                             "a concentration must be > 0 nM; check the unit and the sign"))
    label = affinity_to_label(x, units)
    for col in checks:
        given = pd.to_numeric(m[col], errors="coerce").to_numpy(dtype=float)
        applies = (np.ones(len(m), bool) if col == "label"
                   else np.isin(units, [u for u, px in _PX_OF.items() if px == col]))
        off = applies & np.isfinite(label) & ~(np.abs(given - label) <= LABEL_TOLERANCE)
        for i in np.flatnonzero(off):
            probs.append(Problem("measurements", file, i + 1, pair[i], col,
                                 f"{col} {float(given[i])!r} differs from {float(label[i])!r} computed from "
                                 f"{value} {float(x[i])!r} {units[i]}",
                                 f"recompute {col} as 9 - log10(nM) or drop the column"))
    probs += _dupes(pair, "measurements", file, "pair (drug_id / target_id)",
                    "keep one measurement per pair (aggregate replicates before import)")
    return probs, label


def find_problems(drugs: pd.DataFrame, targets: pd.DataFrame, measurements: pd.DataFrame, *, unit: str | None,
                  files: Sequence[str]) -> tuple[list[Problem], pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Every problem of the three tables, in file order, and the tables normalized (text ids, labels)."""
    if unit is not None and unit not in UNITS:
        raise DataError(f"unknown unit {unit!r}", fix=f"use one of {', '.join(UNITS)}")
    d = _canonical(drugs, "drugs", files[0]).reset_index(drop=True)
    t = _canonical(targets, "targets", files[1]).reset_index(drop=True)
    m = _canonical(measurements, "measurements", files[2]).reset_index(drop=True)
    for frame, cols in ((d, ("drug_id", "smiles", "smiles_iso")), (t, ("target_id", "sequence")),
                        (m, ("drug_id", "target_id", "fold"))):
        for c in cols:
            if c in frame.columns:
                frame[c] = _text(frame[c])
    units, value, checks = _units(m, unit, files[2])
    dp, tp = _drug_problems(d, files[0]), _target_problems(t, files[1])
    bad_d = {p.ident: p for p in dp if p.ident is not None}
    bad_t = {p.ident: p for p in tp if p.ident is not None}
    mp, label = _measurement_problems(m, files, bad_d, bad_t,
                                      set(d["drug_id"]), set(t["target_id"]), units, value, checks)
    if unit is not None and "unit" in m.columns:
        cell = _text(m["unit"]).str.strip()
        mp += [Problem("measurements", files[2], i + 1, f"{m.at[i, 'drug_id']} / {m.at[i, 'target_id']}", "unit",
                       f"unit {cell[i]!r} in the file, but unit={unit!r} was given",
                       "drop the unit argument (--unit), or correct the row")
               for i in np.flatnonzero(((cell != "") & (cell != unit)).to_numpy())]
    fold = m["fold"].where(m["fold"].str.strip() != "") if "fold" in m.columns else pd.Series(np.nan, index=m.index)
    m = pd.DataFrame({"drug_id": m["drug_id"], "target_id": m["target_id"],
                      "affinity": pd.to_numeric(m[value], errors="coerce").astype("float64"),
                      "unit": pd.Series(units, dtype="str"), "label": label.astype("float64"),
                      "fold": fold.astype("str")})
    t["sequence"] = t["sequence"].str.upper()
    if "smiles_iso" in d.columns:
        d["smiles_iso"] = d["smiles_iso"].where(d["smiles_iso"] != "").astype("str")
    order = {name: k for k, name in enumerate(TABLES)}
    probs = sorted(dp + tp + mp, key=lambda p: (order[p.table], p.row))
    return probs, d[[c for c in ALIASES["drugs"] if c in d.columns]], t[["target_id", "sequence"]], m


def write_report(problems: Sequence[Problem], path: Path) -> Path:
    """Write ``problems`` to a CSV quarantine report (atomically); an empty report has the header only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame([(p.table, p.file, p.row, p.ident, p.column, p.reason, p.fix) for p in problems],
                         columns=list(REPORT_COLUMNS))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path


def from_frames(drugs: pd.DataFrame, targets: pd.DataFrame, measurements: pd.DataFrame, *, name: str,
                unit: str | None = None, files: Sequence[str] = ("<drugs>", "<targets>", "<measurements>"),
                quarantine: Path | None = None, quarantined: int = 0) -> DTIDataset:
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
            raise DataError(f"every {table} row was quarantined", Location(files[TABLES.index(table)]),
                            f"see the report {quarantine}")
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
        raise DataError(f"unsupported file type {path.name!r}", Location(path),
                        f"use one of {', '.join(TABLE_SUFFIXES)}")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (ValueError, UnicodeDecodeError, OSError, EOFError) as exc:
        raise DataError(f"cannot read the table: {exc}", Location(path), "give a UTF-8 CSV with a header row") from exc


def read_tables(drugs: Path, targets: Path, measurements: Path, *, name: str, unit: str | None = None,
                quarantine: Path | None = None) -> DTIDataset:
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
        hits = sorted(p for p in Path(directory).iterdir()
                      if (stem := _stem(p.name)) and any(stem == s or stem.endswith("_" + s) for s in stems))
        if len(hits) != 1:
            names = [f"[prefix_]{s}{x}" for s in TABLE_FILE_NAMES[table] for x in TABLE_SUFFIXES]
            raise DataError(f"need exactly one {table} file, found {[p.name for p in hits]}", Location(directory),
                            f"name it one of {', '.join(names)}, or call read_tables with explicit paths")
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
        raise DataError("exists and is not an empty directory nor a pharmafl dataset store", Location(out),
                        "choose a new or empty directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        files = {}
        for table in TABLES:
            frame = getattr(ds, table)
            frame.to_parquet(tmp / f"{table}.parquet", index=False)
            files[f"{table}.parquet"] = {"rows": len(frame), "bytes": (tmp / f"{table}.parquet").stat().st_size,
                                         "sha256": file_sha256(tmp / f"{table}.parquet")}
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
        raise DataError(f"unreadable manifest: {exc!r}", Location(store / MANIFEST),
                        "re-create the store with save_dataset") from exc
    if fmt != STORE_FORMAT:
        raise DataError(f"store format {fmt!r}, expected {STORE_FORMAT!r}", Location(store / MANIFEST),
                        "re-create the store")
    for table, entry in entries.items():
        path = store / f"{table}.parquet"
        actual = file_sha256(path) if path.is_file() else "missing"
        if actual != entry["sha256"]:
            raise DataError(f"sha256 {actual} does not match the manifest's {entry['sha256']}; the store was modified",
                            Location(path), "re-create the store (pharmafl data import, or fetch --force)")
    frames = [pd.read_parquet(store / f"{t}.parquet") for t in TABLES]
    return from_frames(*frames, name=name, files=[str(store / f"{t}.parquet") for t in TABLES],
                       quarantine=quarantine, quarantined=quarantined)


def _load_public(name: str, data_dir: Path, quarantine: Path | None) -> DTIDataset:
    tidy = [data_dir / f"{name}_deepdta_{t}.csv.gz" for t in ("drugs", "targets", "pairs")]
    if all(p.is_file() for p in tidy):
        for path in tidy:
            actual = file_sha256(path)
            if actual != TIDY_SHA256[path.name]:
                raise FetchError(f"{path}: sha256 {actual} does not match the pinned {TIDY_SHA256[path.name]}; "
                                 f"the file was not used. Restore the original, or remove the three tidy tables "
                                 f"and run `pharmafl data fetch {name}`")
        return read_tables(*tidy, name=name, unit=PUBLIC_UNITS[name], quarantine=quarantine)
    if (data_dir / name / MANIFEST).is_file():
        return read_store(data_dir / name, quarantine=quarantine)
    raise FetchError(
        f"dataset {name!r} not found in {data_dir} (data_dir, else $PHARMAFL_DATA, else ~/.cache/pharmafl): expected "
        f"either the tidy tables {', '.join(str(p) for p in tidy)} or a fetched store {data_dir / name / MANIFEST}. "
        f"Run `pharmafl data fetch {name} --cache-dir {data_dir}`, or place the tidy tables there")


def load_dataset(name_or_path: str | Path, *, data_dir: Path | None = None, quarantine: Path | None = None,
                 unit: str | None = None) -> DTIDataset:
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
    raise DataError(f"not a public dataset name ({', '.join(PUBLIC_UNITS)}) nor a directory", Location(path),
                    "pass davis, kiba, a directory of drugs/targets/measurements tables, or a dataset store")
