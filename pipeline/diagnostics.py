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

REMEDIES = (
    "raise FedProx's mu (federation.strategy: fedprox, strategy_options.mu) to hold sites near the global model",
    "switch to SCAFFOLD (federation.strategy: scaffold) to correct client drift",
    "reweight (federation.weighting: uniform or quality) or inspect the site's data",
)


def update_diagnostics(sites: Sequence[str], deltas: Sequence[dict], weights: np.ndarray) -> dict:
    """Norms, cosine matrix and cosine to the mean of the site updates (JSON-able).

    Everything follows from the Gram matrix :math:`G_{ij} = \\langle \\Delta_i, \\Delta_j \rangle`
    (see :func:`gram_matrix`): norms :math:`\\sqrt{G_{ii}}`, cosines
    :math:`G_{ij} / \\sqrt{G_{ii} G_{jj}}` and, with :math:`\bar\\Delta = \\sum_j w_j \\Delta_j`,
    :math:`\\langle \\Delta_i, \bar\\Delta \rangle = (Gw)_i` and :math:`\\lVert\bar\\Delta\rVert^2 = w^\top G w`.
    """
    w = np.asarray(weights, dtype=np.float64)
    g = gram_matrix(deltas)
    norms = np.sqrt(np.clip(np.diag(g), 0.0, None))
    safe = np.where(norms > 0, norms, 1.0)
    cos = np.clip(g / np.outer(safe, safe), -1.0, 1.0) * np.outer(norms > 0, norms > 0)
    mean_norm = float(np.sqrt(max(w @ g @ w, 0.0)))
    to_mean = (g @ w) / (safe * mean_norm) if mean_norm > 0 else np.zeros(len(w))
    to_mean = np.clip(to_mean, -1.0, 1.0) * (norms > 0)
    return {
        "sites": list(sites),
        "update_norms": {s: float(n) for s, n in zip(sites, norms)},
        "cosine_to_mean": {s: float(c) for s, c in zip(sites, to_mean)},
        "cosine_matrix": [[float(x) for x in row] for row in cos],
    }


def gram_matrix(deltas: Sequence[dict], chunk: int = 1 << 16) -> np.ndarray:
    """:math:`G_{ij} = \\langle \\Delta_i, \\Delta_j \rangle` summed parameter by parameter in
    float64 chunks: memory stays at sites x ``chunk`` instead of sites x model size."""
    n = len(deltas)
    g = np.zeros((n, n), dtype=np.float64)
    for key in sorted(deltas[0]):
        flat = [np.asarray(d[key]).ravel() for d in deltas]
        for lo in range(0, flat[0].size, chunk):
            block = np.stack([f[lo : lo + chunk] for f in flat]).astype(np.float64)
            g += block @ block.T
    return g


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
                alarms.append(
                    {
                        "kind": "drift",
                        "site": site,
                        "cosine_to_mean": cos,
                        "message": (
                            f"{site}'s update has pointed away from the mean update (cosine < "
                            f"{self.threshold:g}) for {self.rounds} consecutive rounds; remedies: "
                            + "; ".join(REMEDIES)
                        ),
                    }
                )
        return alarms
