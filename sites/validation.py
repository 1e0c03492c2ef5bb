r"""Validation of DTI tables: the schema, the per-row rules, every problem found at once.

Units and labels: ``label`` is the regression target; for a concentration :math:`X` in nM
(Kd, Ki, IC50)

.. math::

    \mathrm{p}X = -\log_{10}(X \cdot 10^{-9}) = 9 - \log_{10} X,

pX values and KIBA scores (Tang et al. 2014, as transformed by SimBoost) are used as given.

:func:`find_problems` checks every row of the three tables and returns every
:class:`Problem` (file, 1-based data row, id, column, reason, fix) together with the
normalized tables; :mod:`pharmafl.sites.tables` turns the first problem into one
:class:`~pharmafl.errors.DataError`, or, with a quarantine path, writes them all with
:func:`write_report` and drops the rows.

A sequence longer than the model's window (``model.max_len``, default :data:`MODEL_WINDOW`)
is valid but is cut to the window when tokenized; :func:`long_sequences` says which, so that
``pharmafl data validate`` reports them and a site's store manifest records how many.

Imports nothing heavy at module level (pandas and RDKit load when a table is checked), so
that ``pharmafl data --help`` stays fast.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pharmafl.errors import DataError, FeaturizationError, Location

if TYPE_CHECKING:
    import pandas as pd

CONCENTRATION_UNITS = ("nM_Kd", "nM_Ki", "nM_IC50")
PX_UNITS = ("pKd", "pKi", "pIC50")
SCORE_UNITS = ("kiba",)
UNITS = CONCENTRATION_UNITS + PX_UNITS + SCORE_UNITS
_PX_OF = {"nM_Kd": "pKd", "nM_Ki": "pKi", "nM_IC50": "pIC50", "pKd": "pKd", "pKi": "pKi", "pIC50": "pIC50"}
LABEL_TOLERANCE = 1e-6
OUTLIER_SD = 8.0
TABLES = ("drugs", "targets", "measurements")
# canonical column -> accepted names, first match wins; other columns are ignored.
ALIASES = {
    "drugs": {
        "drug_id": ("drug_id", "compound_id", "molecule_id"),
        "smiles": ("smiles", "canonical_smiles"),
        "smiles_iso": ("smiles_iso", "isomeric_smiles"),
    },
    "targets": {"target_id": ("target_id", "protein_id"), "sequence": ("sequence", "protein_sequence")},
    "measurements": {
        "drug_id": ("drug_id", "compound_id", "molecule_id"),
        "target_id": ("target_id", "protein_id"),
        "unit": ("unit",),
        "fold": ("fold", "deepdta_fold", "split"),
    },
}
_REQUIRED = {
    "drugs": ("drug_id", "smiles"),
    "targets": ("target_id", "sequence"),
    "measurements": ("drug_id", "target_id"),
}
REPORT_COLUMNS = ("table", "file", "row", "id", "column", "reason", "fix")
# The protein window of the default model: ModelConfig().max_len (models/sequence.py's DEFAULT_MAX_LEN;
# a test keeps the two equal). Not imported from there: that module loads torch.
MODEL_WINDOW = 1000
LONG_EXAMPLES = 5  # ids shown by LongSequences.warning


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
        fix = self.fix + (
            f"; {also} more problem(s) follow: pass quarantine=PATH (CLI --quarantine PATH) to list every bad row"
            if also
            else ""
        )
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
        return (
            f"sequence has {bad.group()!r} at position {bad.start() + 1}; only letters A-Z are amino-acid "
            "tokens (X, B, Z, U, O and other letters are allowed; digits, spaces, '*', '-' are not)"
        )
    return None


def smiles_error(smiles: str) -> str | None:
    """Why RDKit cannot parse ``smiles`` (RDKit's own message), or None if it parses to atoms."""
    from pharmafl.models.featurize import parse_smiles  # RDKit: loaded when a SMILES is checked

    try:
        parse_smiles(smiles)
    except FeaturizationError as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class LongSequences:
    """Target sequences longer than ``window``: their count, the longest length, their ids (longest first)."""

    window: int
    total: int  # sequences checked
    ids: tuple[str, ...]
    longest: int  # length of the longest sequence checked (0 if none)

    @property
    def count(self) -> int:
        return len(self.ids)

    def as_dict(self) -> dict:
        """What a summary and a site manifest record (``targets_truncated``): the window as ``max_len``,
        how many sequences are longer, the longest length of all, and the ids of the longer ones."""
        return {"max_len": self.window, "count": self.count, "longest": self.longest, "ids": list(self.ids)}

    def warning(self, dataset: str) -> str | None:
        """One line for stderr, or None when no sequence is longer than the window."""
        if not self.count:
            return None
        shown = ", ".join(self.ids[:LONG_EXAMPLES]) + (
            f" and {self.count - LONG_EXAMPLES} more" if self.count > LONG_EXAMPLES else ""
        )
        return (
            f"{dataset}: {self.count} of {self.total} target sequence(s) are longer than the model window of "
            f"{self.window} residues (longest {self.longest}) and will be cut to their first {self.window}: "
            f"{shown} (check another window with --max-len; the run's window is model.max_len)"
        )


def long_sequences(ids: Sequence[str], sequences: Sequence[str], window: int = MODEL_WINDOW) -> LongSequences:
    """Which of ``sequences`` (named by ``ids``) tokenization would cut to ``window`` residues."""
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise DataError(f"the window must be a positive integer, got {window!r}", fix="pass --max-len N with N >= 1")
    lengths = [len(s) for s in sequences]
    over = sorted((-n, str(i)) for i, n in zip(ids, lengths) if n > window)
    return LongSequences(window, len(lengths), tuple(i for _, i in over), max(lengths, default=0))


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
        raise DataError(
            f"{table} table lacks column(s) {missing}: expected {list(_REQUIRED[table])}, found {found}",
            Location(file),
            f"name the columns ({accepted})",
        )
    if len(df) == 0:
        raise DataError(f"{table} table has no rows", Location(file), f"add at least one {table} row")
    return df


def _dupes(keys: pd.Series, table: str, file: str, what: str, fix: str) -> list[Problem]:
    dup = keys[keys.duplicated(keep=False)]
    rows = {k: [i + 1 for i in idx] for k, idx in dup.groupby(dup).groups.items()}
    return [
        Problem(
            table,
            file,
            i + 1,
            k,
            None,
            f"{what} {k!r} appears {len(rows[k])} times (rows {', '.join(map(str, rows[k]))})",
            fix,
        )
        for i, k in dup.items()
    ]


def _empty_ids(ids: pd.Series, table: str, file: str, column: str) -> list[Problem]:
    return [
        Problem(table, file, i + 1, None, column, f"empty {column}", f"give every row a {column}")
        for i in np.flatnonzero((ids.str.strip() == "").to_numpy())
    ]


def _drug_problems(d: pd.DataFrame, file: str) -> list[Problem]:
    probs = _empty_ids(d["drug_id"], "drugs", file, "drug_id")
    probs += _dupes(d["drug_id"], "drugs", file, "drug_id", "give each drug exactly one row")
    for col in ("smiles", "smiles_iso"):
        if col not in d.columns:
            continue
        values = d[col].tolist()
        errors = {s: smiles_error(s) for s in set(values) if s or col == "smiles"}
        probs += [
            Problem(
                "drugs",
                file,
                i + 1,
                d.at[i, "drug_id"],
                col,
                errors[s],
                "correct the SMILES (check it with RDKit Chem.MolFromSmiles) or remove the drug",
            )
            for i, s in enumerate(values)
            if errors.get(s)
        ]
    return probs


def _target_problems(t: pd.DataFrame, file: str) -> list[Problem]:
    probs = _empty_ids(t["target_id"], "targets", file, "target_id")
    probs += _dupes(t["target_id"], "targets", file, "target_id", "give each target exactly one row")
    valid = t["sequence"].str.fullmatch(r"[A-Za-z]+").to_numpy(dtype=bool)
    probs += [
        Problem(
            "targets",
            file,
            i + 1,
            t.at[i, "target_id"],
            "sequence",
            sequence_error(t.at[i, "sequence"]),
            "give the one-letter amino-acid sequence without gaps, stop codons or spaces",
        )
        for i in np.flatnonzero(~valid)
    ]
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
            raise DataError(
                f"need one value column: 'affinity' (with a unit) or one of {list(UNITS)}; found "
                f"{named or list(m.columns)}",
                Location(file),
                "name the value column 'affinity' and " + fix,
            )
        value = named[0]
        if unit is not None and unit != value:
            raise DataError(
                f"column {value!r} holds {value} but unit={unit!r} was given",
                Location(file, column=value),
                f"pass unit={value!r} or rename the column",
            )
        units = np.full(len(m), value, dtype=object)
    checks = [c for c in px if c != value] + (["label"] if "label" in m.columns else [])
    return units, value, checks


def _measurement_problems(
    m: pd.DataFrame,
    files: Sequence[str],
    bad_drugs: dict,
    bad_targets: dict,
    drug_ids: set,
    target_ids: set,
    units: np.ndarray,
    value: str,
    checks: list[str],
) -> tuple[list[Problem], np.ndarray]:
    import pandas as pd

    file = files[2]
    probs = _empty_ids(m["drug_id"], "measurements", file, "drug_id")
    probs += _empty_ids(m["target_id"], "measurements", file, "target_id")
    pair = m["drug_id"] + " / " + m["target_id"]
    for col, table, known, bad, src in (
        ("drug_id", "drugs", drug_ids, bad_drugs, files[0]),
        ("target_id", "targets", target_ids, bad_targets, files[1]),
    ):
        for i in np.flatnonzero(~m[col].isin(known).to_numpy() & (m[col] != "").to_numpy()):
            probs.append(
                Problem(
                    "measurements",
                    file,
                    i + 1,
                    pair[i],
                    col,
                    f"unknown {col} {m.at[i, col]!r}: not in {src}",
                    f"add it to the {table} table or remove the measurement",
                )
            )
        for i in np.flatnonzero(m[col].isin(bad.keys()).to_numpy()):
            p = bad[m.at[i, col]]
            probs.append(
                Problem(
                    "measurements",
                    file,
                    i + 1,
                    pair[i],
                    col,
                    f"{col} {m.at[i, col]!r} was rejected ({src} row {p.row}: {p.reason})",
                    f"fix that {table} row; this measurement is dropped with it",
                )
            )
    raw = m[value]
    x = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)
    known_unit = np.isin(units, UNITS)
    for i in np.flatnonzero(~known_unit):
        probs.append(
            Problem(
                "measurements",
                file,
                i + 1,
                pair[i],
                "unit",
                f"unknown unit {units[i]!r}",
                f"use one of {', '.join(UNITS)}",
            )
        )
    for i in np.flatnonzero(known_unit & ~np.isfinite(x)):
        probs.append(
            Problem(
                "measurements",
                file,
                i + 1,
                pair[i],
                value,
                f"{value} {str(raw.iloc[i])!r} is not a finite number",
                "give a number, or remove the row if it was not measured",
            )
        )
    for i in np.flatnonzero(np.isin(units, CONCENTRATION_UNITS) & np.isfinite(x) & (x <= 0)):
        probs.append(
            Problem(
                "measurements",
                file,
                i + 1,
                pair[i],
                value,
                f"{value} {float(x[i])!r} {units[i]} is not positive",
                "a concentration must be > 0 nM; check the unit and the sign",
            )
        )
    label = affinity_to_label(x, units)
    for col in checks:
        given = pd.to_numeric(m[col], errors="coerce").to_numpy(dtype=float)
        applies = (
            np.ones(len(m), bool) if col == "label" else np.isin(units, [u for u, px in _PX_OF.items() if px == col])
        )
        off = applies & np.isfinite(label) & ~(np.abs(given - label) <= LABEL_TOLERANCE)
        for i in np.flatnonzero(off):
            probs.append(
                Problem(
                    "measurements",
                    file,
                    i + 1,
                    pair[i],
                    col,
                    f"{col} {float(given[i])!r} differs from {float(label[i])!r} computed from "
                    f"{value} {float(x[i])!r} {units[i]}",
                    f"recompute {col} as 9 - log10(nM) or drop the column",
                )
            )
    probs += _dupes(
        pair,
        "measurements",
        file,
        "pair (drug_id / target_id)",
        "keep one measurement per pair (aggregate replicates before import)",
    )
    return probs, label


def find_problems(
    drugs: pd.DataFrame, targets: pd.DataFrame, measurements: pd.DataFrame, *, unit: str | None, files: Sequence[str]
) -> tuple[list[Problem], pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Every problem of the three tables, in file order, and the tables normalized (text ids, labels)."""
    import pandas as pd

    if unit is not None and unit not in UNITS:
        raise DataError(f"unknown unit {unit!r}", fix=f"use one of {', '.join(UNITS)}")
    d = _canonical(drugs, "drugs", files[0]).reset_index(drop=True)
    t = _canonical(targets, "targets", files[1]).reset_index(drop=True)
    m = _canonical(measurements, "measurements", files[2]).reset_index(drop=True)
    for frame, cols in (
        (d, ("drug_id", "smiles", "smiles_iso")),
        (t, ("target_id", "sequence")),
        (m, ("drug_id", "target_id", "fold")),
    ):
        for c in cols:
            if c in frame.columns:
                frame[c] = _text(frame[c])
    units, value, checks = _units(m, unit, files[2])
    dp, tp = _drug_problems(d, files[0]), _target_problems(t, files[1])
    bad_d = {p.ident: p for p in dp if p.ident is not None}
    bad_t = {p.ident: p for p in tp if p.ident is not None}
    mp, label = _measurement_problems(
        m, files, bad_d, bad_t, set(d["drug_id"]), set(t["target_id"]), units, value, checks
    )
    if unit is not None and "unit" in m.columns:
        cell = _text(m["unit"]).str.strip()
        mp += [
            Problem(
                "measurements",
                files[2],
                i + 1,
                f"{m.at[i, 'drug_id']} / {m.at[i, 'target_id']}",
                "unit",
                f"unit {cell[i]!r} in the file, but unit={unit!r} was given",
                "drop the unit argument (--unit), or correct the row",
            )
            for i in np.flatnonzero(((cell != "") & (cell != unit)).to_numpy())
        ]
    fold = m["fold"].where(m["fold"].str.strip() != "") if "fold" in m.columns else pd.Series(np.nan, index=m.index)
    m = pd.DataFrame(
        {
            "drug_id": m["drug_id"],
            "target_id": m["target_id"],
            "affinity": pd.to_numeric(m[value], errors="coerce").astype("float64"),
            "unit": pd.Series(units, dtype="str"),
            "label": label.astype("float64"),
            "fold": fold.astype("str"),
        }
    )
    t["sequence"] = t["sequence"].str.upper()
    if "smiles_iso" in d.columns:
        d["smiles_iso"] = d["smiles_iso"].where(d["smiles_iso"] != "").astype("str")
    order = {name: k for k, name in enumerate(TABLES)}
    probs = sorted(dp + tp + mp, key=lambda p: (order[p.table], p.row))
    return probs, d[[c for c in ALIASES["drugs"] if c in d.columns]], t[["target_id", "sequence"]], m


def write_report(problems: Sequence[Problem], path: Path) -> Path:
    """Write ``problems`` to a CSV quarantine report (atomically); an empty report has the header only."""
    import pandas as pd

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(
        [(p.table, p.file, p.row, p.ident, p.column, p.reason, p.fix) for p in problems], columns=list(REPORT_COLUMNS)
    )
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path
