"""Train / validation / test splits of a measurements table. Pure: rows in, row indices out.

When the table carries DeepDTA folds (``fold`` = ``train0``..``train4`` / ``test``), the test
fold is kept as published and the validation pairs are a seeded random share of the
training folds. Without folds, a seeded random sixth of the rows is the test set (the share
of DeepDTA's test fold), and validation is carved from the rest the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pharmafl.errors import DataError


@dataclass(frozen=True)
class Split:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    kind: str  # "folds" or "random"


def split_measurements(measurements: pd.DataFrame, val_fraction: float, seed: int) -> Split:
    n = len(measurements)
    rng = np.random.default_rng(seed)
    fold = measurements["fold"] if "fold" in measurements else pd.Series([None] * n)
    has_folds = fold.notna().any()
    if has_folds:
        fold = fold.fillna("").astype(str)
        test = np.flatnonzero(fold.eq("test").to_numpy())
        rest = np.flatnonzero(fold.str.startswith("train").to_numpy())
        kind = "folds"
    else:
        order = rng.permutation(n)
        n_test = n // 6
        test, rest = np.sort(order[:n_test]), order[n_test:]
        kind = "random"
    if len(test) == 0 or len(rest) == 0:
        raise DataError(
            f"the measurements give {len(rest)} training and {len(test)} test pairs",
            fix="label rows with fold 'test' and 'train0'..'train4', or leave the fold column empty for a random split",
        )
    rest = rng.permutation(rest)
    n_val = max(1, int(round(len(rest) * val_fraction)))
    return Split(train=np.sort(rest[n_val:]), val=np.sort(rest[:n_val]), test=test, kind=kind)
