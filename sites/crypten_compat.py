"""CrypTen 0.4.1 on torch 2.13: the two fixes it needs, in one place.

Use :func:`load_crypten` instead of ``import crypten``:

1. **Import.** CrypTen's ONNX converter imports ``torch.onnx._internal.registration``,
   which torch 2.13 moved to ``torch.onnx._internal.torchscript_exporter.registration``; the
   old name is aliased to the new module before CrypTen is imported.
2. **Fixed-point decoding.** ``FixedPointEncoder.decode`` floors negative values with the
   divisor ``scale - 1`` and then adds ``remainder / scale``: some negative values decode
   exactly 1.0 too low (~0.2% of random negatives below 256 in magnitude; larger ones drift
   further), which corrupts revealed sums. The replacement decodes exactly:
   ``q = floor(x / scale)``, ``r = x - q * scale`` (so ``0 <= r < scale``), value ``q + r / scale``
   computed in float64, returned in CrypTen's float32.

``tests/sites/test_crypten_compat.py`` fails on the upstream behaviour.
"""

from __future__ import annotations

import importlib
import sys

import torch

_OLD = "torch.onnx._internal.registration"
_NEW = "torch.onnx._internal.torchscript_exporter.registration"


def exact_decode(self, tensor):
    """``FixedPointEncoder.decode`` without the negative-value error (see module docstring)."""
    if tensor is None:
        return None
    if tensor.is_floating_point():
        raise TypeError("input must be a LongTensor")
    scale = self._scale
    if scale > 1:
        q = torch.div(tensor, scale, rounding_mode="floor")
        r = tensor - q * scale
        return (q.double() + r.double() / scale).float().data
    return tensor.float().data


def load_crypten():
    """Import CrypTen with both fixes applied (idempotent); returns the ``crypten`` module."""
    if _OLD not in sys.modules:
        try:
            importlib.import_module(_OLD)
        except ModuleNotFoundError:
            sys.modules[_OLD] = importlib.import_module(_NEW)
    import crypten
    from crypten.encoder import FixedPointEncoder

    if FixedPointEncoder.decode is not exact_decode:
        FixedPointEncoder.upstream_decode = FixedPointEncoder.decode
        FixedPointEncoder.decode = exact_decode
    return crypten
