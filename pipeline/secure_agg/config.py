"""The ``secure_aggregation`` section of a run config."""

from __future__ import annotations

from dataclasses import dataclass

from pharmafl.errors import ConfigError

MAX_LIMIT = 1024.0  # (1 + slack) * max_update_norm, in real units


def fits_ring(limit: float, buckets: int) -> bool:
    """Whether a sketch of ``buckets`` values each within ``limit`` has its sum of squares
    (fixed point, 2^16 per unit, squared) below 2^62: the check's arithmetic cannot wrap."""
    return buckets * (limit * 2**16) ** 2 < 2**62


@dataclass(frozen=True)
class SecureAggregationConfig:
    """Secure aggregation (``docs/secure-aggregation.md``): the server learns only the weighted
    sum of the sites' updates, computed by the server's party and independent helper
    parties on secret shares (CrypTen).

    Args:
        enabled: default false.
        helpers: helper parties besides the server's own (default 1; each must not collude
            with the server).
        max_update_norm: the agreed L2 bound :math:`B` on one site's update (all parameters
            together, default 10.0); an update over it is excluded from the sum and recorded.
        slack: :math:`\\gamma`; the MPC check estimates the norm from count sketches and
            accepts up to :math:`(1+\\gamma)B` (default 0.16, ~8 standard deviations of the
            estimator at 1024 buckets).
        sketches, buckets: count-sketch size :math:`m \\times k` (default 4 x 1024).
        keep_updates: each site keeps its plaintext update and commitment salt under
            ``RUN/sites/<id>/secagg/`` so it can later open its commitment (default true).
        host: the address the parties meet on over TCP (default 127.0.0.1).
    """

    enabled: bool = False
    helpers: int = 1
    max_update_norm: float = 10.0
    slack: float = 0.16
    sketches: int = 4
    buckets: int = 1024
    keep_updates: bool = True
    host: str = "127.0.0.1"

    def __post_init__(self):
        where = "secure_aggregation"
        if not 1 <= self.helpers <= 4:
            raise ConfigError(f"{where}.helpers must be in 1..4, got {self.helpers}")
        if not self.max_update_norm > 0 or not self.slack >= 0:
            raise ConfigError(f"{where}.max_update_norm must be > 0 and slack >= 0, got "
                              f"{self.max_update_norm} and {self.slack}")  # fmt: skip
        if not 1 <= self.sketches <= 16 or not 64 <= self.buckets <= 4096:
            raise ConfigError(f"{where}.sketches must be in 1..16 and buckets in 64..4096, got "
                              f"{self.sketches} and {self.buckets}")  # fmt: skip
        limit = self.max_update_norm * (1 + self.slack)
        if limit > MAX_LIMIT or not fits_ring(limit, self.buckets):
            raise ConfigError(f"{where}: max_update_norm * (1 + slack) = {limit:g} is too large to check in "
                              f"CrypTen's 64-bit ring with {self.buckets} buckets (at most {MAX_LIMIT:g}, and "
                              f"buckets * (bound * 2^16)^2 < 2^62); lower max_update_norm or buckets")  # fmt: skip

    def summary(self) -> dict:
        return {"helpers": self.helpers, "max_update_norm": self.max_update_norm, "slack": self.slack,
                "sketches": self.sketches, "buckets": self.buckets}  # fmt: skip
