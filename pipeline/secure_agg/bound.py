"""The update-norm bound, checked on secret shares: a count sketch, then MPC comparisons.

Checking :math:`\\|x\\|_2 \\le B` coordinate by coordinate under MPC would need a
comparison for each of the model's ~1.6M parameters, and a plain sum of squares in
:math:`\\mathbb{Z}_{2^{64}}` can be made to wrap (one coordinate of :math:`2^{32}/2^{16}`
squares to 0 mod :math:`2^{64}`). Instead, as ACORN (Bell et al. 2023,
https://eprint.iacr.org/2022/1461) does for L2 bounds, the parties first apply a public
random linear map, chosen *after* every share has been delivered, to their shares — exact
in the ring, no communication — and check the much shorter image:

.. math::
    p_t = C_t x \\in \\mathbb{R}^{k}, \\quad (C_t)_{l j} = \\sigma_t(j)\\,[h_t(j) = l],
    \\qquad t = 1..m

a count sketch (Charikar et al. 2002): :math:`\\mathbb{E}\\|p_t\\|^2 = \\|x\\|^2` and
:math:`\\mathrm{Var}\\|p_t\\|^2 \\le 2\\|x\\|^4/k`. An update passes when, for every sketch,
every :math:`|p_{t,l}| \\le T` (so no square can wrap) and :math:`\\|p_t\\|^2 \\le T^2`, with
:math:`T = (1+\\gamma)B`. With :math:`k = 1024` the estimator's standard deviation is at most
4.4% of :math:`\\|x\\|^2`; :math:`(1+\\gamma)^2 = 1.35` is ~8 of them, so an honest update at
the bound passes, and an accepted one is at most ~:math:`(1+\\gamma)B` long but for a
probability that shrinks geometrically in :math:`m` (each sketch is independent).

Everything here is integer arithmetic on fixed-point values (units of :math:`2^{-16}`);
:func:`check_sketches` runs under CrypTen with precision 0, so no multiplication is ever
truncated (CrypTen's two-party truncation fails with probability ~|value|/2^63).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from pharmafl.pipeline.secure_agg.config import MAX_LIMIT
from pharmafl.sites.secret_sharing import PRECISION_BITS


def sketch_plan(seed: bytes, length: int, sketches: int, buckets: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The public map from ``seed``: flat bucket index ``t*buckets + h_t(j)`` and sign
    :math:`\\sigma_t(j)`, both int64 of shape ``(sketches * length,)``."""
    rng = np.random.Generator(np.random.PCG64(int.from_bytes(hashlib.sha256(seed).digest(), "big")))
    h = rng.integers(0, buckets, size=(sketches, length), dtype=np.int64)
    h += np.arange(sketches, dtype=np.int64)[:, None] * buckets
    sign = rng.integers(0, 2, size=sketches * length, dtype=np.int64) * 2 - 1
    return torch.from_numpy(h.reshape(-1)), torch.from_numpy(sign)


def sketch(values: torch.Tensor, plan: tuple[torch.Tensor, torch.Tensor], buckets: int) -> torch.Tensor:
    """Count sketches of ``values`` (int64, wrapping like the ring), shape ``(sketches, buckets)``.

    Linear with integer coefficients, so the sketches of the parties' shares sum to the
    sketch of the secret.
    """
    flat, sign = plan
    sketches = flat.numel() // values.numel()
    out = torch.zeros(sketches * buckets, dtype=torch.int64)
    out.index_add_(0, flat, values.repeat(sketches).mul_(sign))
    return out.reshape(sketches, buckets)


def limits(max_norm: float, slack: float) -> tuple[int, int]:
    """(T, T^2) in raw fixed-point units for the comparisons."""
    t = max_norm * (1.0 + slack)
    if not 0 < t <= MAX_LIMIT:
        raise ValueError(f"max_update_norm * (1 + slack) = {t} must be in (0, {MAX_LIMIT}]")
    scale = float(2**PRECISION_BITS)
    return int(t * scale), int((t * scale) ** 2)


def check_sketches(crypten, share: torch.Tensor, max_norm: float, slack: float) -> torch.Tensor:
    """Pass (1) / fail (0) per site from this party's sketch shares ``(sites, m, k)``.

    Runs the same call at every party; reveals only the per-site bit, to all parties.
    """
    limit, limit_sq = limits(max_norm, slack)
    _, m, k = share.shape
    p = crypten.mpc.MPCTensor.from_shares(share, precision=0)
    inside = (p <= limit) * (p >= -limit)  # no coordinate large enough to wrap its square
    small = (p * p).sum(dim=2) <= limit_sq  # each sketch's squared norm within T^2
    votes = inside.sum(dim=(1, 2)) + small.sum(dim=1)
    return votes.eq(m * k + m).get_plain_text().round().to(torch.int64)


def plain_check(
    x: np.ndarray, plan: tuple[torch.Tensor, torch.Tensor], buckets: int, max_norm: float, slack: float
) -> bool:
    """The same decision in the clear (tests and the bench compare against it)."""
    p = sketch(torch.from_numpy(np.asarray(x, np.int64)), plan, buckets)
    limit, limit_sq = limits(max_norm, slack)
    inside = bool(((p <= limit) & (p >= -limit)).all())
    return inside and bool(((p.double() ** 2).sum(dim=1) <= limit_sq).all())
