"""A statistical test that ring elements look uniformly random (shared by the secret-sharing tests)."""

from __future__ import annotations

import numpy as np
from scipy import stats


def looks_uniform(values: np.ndarray) -> bool:
    """Every one of the 64 bits is set half the time (within 5 sigma), and the top 32 bits
    are uniform (Kolmogorov-Smirnov p > 1e-4)."""
    u = np.ascontiguousarray(values, dtype=np.int64).view(np.uint64)
    bits = np.array([((u >> np.uint64(b)) & np.uint64(1)).mean() for b in range(64)])
    if np.any(np.abs(bits - 0.5) > 5 * np.sqrt(0.25 / len(u))):
        return False
    top = (u >> np.uint64(32)).astype(np.float64) / 2.0**32
    return bool(stats.kstest(top, "uniform").pvalue > 1e-4)
