"""Per-round diagnostics of site updates and the drift alarm.

Update L2 norms, pairwise cosine similarity of the site updates, and each site's cosine to
the weighted mean update. A site whose cosine to the mean stays below a threshold for ``k``
consecutive rounds pulls against the federation (non-IID data, a bug, or poisoning) and
raises an alarm that names remedies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pharmafl.pipeline.aggregate import cosine_matrix, cosine_to_mean, flatten

REMEDIES = (
    "raise FedProx's mu (federation.strategy: fedprox, strategy_options.mu) to hold sites near the global model",
    "switch to SCAFFOLD (federation.strategy: scaffold) to correct client drift",
    "reweight (federation.weighting: uniform or quality) or inspect the site's data",
)


def update_diagnostics(sites: Sequence[str], deltas: Sequence[dict], weights: np.ndarray) -> dict:
    """Norms, cosine matrix and cosine to the mean of the site updates (JSON-able)."""
    vectors = np.stack([flatten(d) for d in deltas])
    cos = cosine_matrix(vectors)
    to_mean = cosine_to_mean(vectors, np.asarray(weights, dtype=np.float64))
    return {
        "sites": list(sites),
        "update_norms": {s: float(np.linalg.norm(v)) for s, v in zip(sites, vectors)},
        "cosine_to_mean": {s: float(c) for s, c in zip(sites, to_mean)},
        "cosine_matrix": [[float(x) for x in row] for row in cos],
    }


@dataclass
class DriftMonitor:
    """Counts consecutive rounds each site's cosine to the mean stays below ``threshold``."""

    threshold: float = 0.0
    rounds: int = 3
    streak: dict[str, int] = field(default_factory=dict)

    def observe(self, cosine_to_mean: dict[str, float]) -> list[dict]:
        """Update the streaks; return one alarm per site whose streak reaches ``rounds`` now."""
        alarms = []
        for site, cos in sorted(cosine_to_mean.items()):
            self.streak[site] = self.streak.get(site, 0) + 1 if cos < self.threshold else 0
            if self.streak[site] == self.rounds:
                alarms.append({
                    "kind": "drift",
                    "site": site,
                    "cosine_to_mean": cos,
                    "message": (
                        f"{site}'s update has pointed away from the mean update (cosine < "
                        f"{self.threshold:g}) for {self.rounds} consecutive rounds; remedies: "
                        + "; ".join(REMEDIES)
                    ),
                })  # fmt: skip
        return alarms
