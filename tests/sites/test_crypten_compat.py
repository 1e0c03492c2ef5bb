"""The CrypTen compat module: import on torch 2.13 and exact fixed-point decoding."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from pharmafl.sites.crypten_compat import exact_decode, load_crypten


def test_crypten_imports_with_the_alias():
    crypten = load_crypten()
    assert hasattr(crypten, "cryptensor") and load_crypten() is crypten  # idempotent


@pytest.mark.parametrize("magnitude", [2**20, 2**24, 2**40])
def test_decode_is_exact_where_upstream_is_off(magnitude):
    load_crypten()
    from crypten.encoder import FixedPointEncoder

    enc = FixedPointEncoder(precision_bits=16)
    x = torch.randint(-magnitude, magnitude, (200_000,), generator=torch.Generator().manual_seed(1))
    exact = x.double() / 65536
    upstream = FixedPointEncoder.upstream_decode(enc, x.clone()).double()
    off = (upstream - exact).abs()
    assert ((off - 1.0).abs() < 1e-3).any()  # the upstream regression: some values exactly 1.0 low
    fixed = enc.decode(x.clone())
    assert fixed.dtype == torch.float32
    assert torch.equal(fixed, exact.float())  # exact up to the final float32 rounding
    for v in x[:50].tolist():  # against exact rational arithmetic, rounded to float32 once
        want = torch.tensor(float(Fraction(v, 65536)), dtype=torch.float64).float()
        assert exact_decode(enc, torch.tensor([v]))[0] == want


def test_a_three_party_sum_reveals_exactly():
    crypten = load_crypten()
    from crypten.encoder import FixedPointEncoder

    enc = FixedPointEncoder(precision_bits=16)
    g = torch.Generator().manual_seed(2)
    parts = [torch.randn(50_000, generator=g) * 3 for _ in range(3)]
    encoded = [enc.encode(p) for p in parts]
    total = enc.decode(sum(encoded))
    assert (total - sum(p.double() for p in parts).float()).abs().max() <= 3 / 65536 + 1e-6
    assert crypten is not None
