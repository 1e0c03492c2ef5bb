"""The ``secure_aggregation`` section of a run config."""

from __future__ import annotations

from pydantic import StrictBool, StrictFloat, StrictInt

from pharmafl.errors import ConfigError
from pharmafl.typedconfig import section

MAX_LIMIT = 1024.0  # (1 + slack) * max_update_norm, in real units


def fits_ring(limit: float, buckets: int) -> bool:
    """Whether a sketch of ``buckets`` values each within ``limit`` has its sum of squares
    (fixed point, 2^16 per unit, squared) below 2^62: the check's arithmetic cannot wrap."""
    return buckets * (limit * 2**16) ** 2 < 2**62


@section("secure_aggregation")
class SecureAggregationConfig:
    """Secure aggregation (``docs/secure-aggregation.md``): the server learns only the weighted
    sum of the sites' updates, computed on secret shares (CrypTen) by independent aggregation
    parties, each a service with its own keys (``pharmafl party serve``).

    Args:
        enabled: default false.
        helpers: simulation only: helper parties besides the server's own (default 1); a
            consortium run takes its parties from the consortium's party cards.
        endpoints: consortium runs: party id -> ``host:port`` of its ``pharmafl party serve``.
            The simulator starts its parties itself on ``host``.
        dealer: the helper party that also runs CrypTen's dealer (trusted third party);
            default the first helper by id. Never the server's party.
        max_update_norm: the agreed L2 bound :math:`B` on one site's update (all parameters
            together, default 10.0); an update over it is excluded from the sum and recorded.
        slack: :math:`\\gamma`; the MPC check estimates the norm from count sketches and
            accepts up to :math:`(1+\\gamma)B` (default 0.16, ~8 standard deviations of the
            estimator at 1024 buckets).
        sketches, buckets: count-sketch size :math:`m \\times k` (default 4 x 1024).
        max_examples: the cap on a site's example count, i.e. its weight (default 10,000,000);
            the parties refuse an envelope claiming more, and a cap that could wrap the ring.
        keep_updates: each site keeps its plaintext update and what opens its commitment in
            its own home (``SITE_HOME/runs/<run_id>/kept``) so it can later prove what it sent
            (default true).
        host: where simulated parties listen (default 127.0.0.1).
    """

    enabled: StrictBool = False
    helpers: StrictInt = 1
    endpoints: dict[str, str] | None = None
    dealer: str | None = None
    max_update_norm: StrictFloat = 10.0
    slack: StrictFloat = 0.16
    sketches: StrictInt = 4
    buckets: StrictInt = 1024
    max_examples: StrictInt = 10_000_000
    keep_updates: StrictBool = True
    host: str = "127.0.0.1"

    def __post_init__(self):
        where = "secure_aggregation"
        if not 1 <= self.helpers <= 4:
            raise ConfigError(f"{where}.helpers must be in 1..4, got {self.helpers}")
        if not self.max_update_norm > 0 or not self.slack >= 0:
            raise ConfigError(
                f"{where}.max_update_norm must be > 0 and slack >= 0, got {self.max_update_norm} and {self.slack}"
            )
        if not 1 <= self.sketches <= 16 or not 64 <= self.buckets <= 4096:
            raise ConfigError(
                f"{where}.sketches must be in 1..16 and buckets in 64..4096, got {self.sketches} and {self.buckets}"
            )
        if type(self.max_examples) is not int or not 1 <= self.max_examples <= 2**32:
            raise ConfigError(f"{where}.max_examples must be an integer in 1..2^32, got {self.max_examples!r}")
        for party, address in (self.endpoints or {}).items():
            host, _, port = str(address).rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"{where}.endpoints.{party}: {address!r} is not host:port (e.g. 10.0.0.5:9101)")
        limit = self.max_update_norm * (1 + self.slack)
        if limit > MAX_LIMIT or not fits_ring(limit, self.buckets):
            raise ConfigError(
                f"{where}: max_update_norm * (1 + slack) = {limit:g} is too large to check in "
                f"CrypTen's 64-bit ring with {self.buckets} buckets (at most {MAX_LIMIT:g}, and "
                f"buckets * (bound * 2^16)^2 < 2^62); lower max_update_norm or buckets"
            )

    def endpoint_map(self) -> dict[str, tuple[str, int]]:
        return {p: (a.rpartition(":")[0], int(a.rpartition(":")[2])) for p, a in (self.endpoints or {}).items()}

    def summary(self) -> dict:
        return {
            "max_update_norm": self.max_update_norm,
            "slack": self.slack,
            "sketches": self.sketches,
            "buckets": self.buckets,
            "max_examples": self.max_examples,
        }
