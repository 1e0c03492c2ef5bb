"""Protein sequences -> integer tokens.

Every letter A-Z is a token (``X`` and other ambiguity or rare residue codes such as B, Z,
U, O, J included); 0 is padding. Sequences longer than ``max_len`` are truncated, shorter
ones right-padded, as in DeepDTA and GraphDTA (default length 1000).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pharmafl.errors import FeaturizationError

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
VOCAB_SIZE = len(ALPHABET) + 1  # + padding
DEFAULT_MAX_LEN = 1000

_LOOKUP = np.zeros(256, dtype=np.int64)
_LOOKUP[np.frombuffer(ALPHABET.encode(), dtype=np.uint8)] = np.arange(1, len(ALPHABET) + 1)


def tokenize(sequence: str, max_len: int = DEFAULT_MAX_LEN) -> np.ndarray:
    """Return ``int64[max_len]`` tokens of an amino-acid sequence."""
    if max_len < 1:
        raise FeaturizationError(f"max_len must be >= 1, got {max_len}")
    seq = sequence.strip().upper() if isinstance(sequence, str) else ""
    if not seq:
        raise FeaturizationError("empty protein sequence")
    raw = np.frombuffer(seq.encode("ascii", errors="replace"), dtype=np.uint8)
    tokens = _LOOKUP[raw]
    if (tokens == 0).any():
        pos = int(np.flatnonzero(tokens == 0)[0])
        raise FeaturizationError(
            f"protein sequence has {seq[pos]!r} at position {pos + 1}; only letters A-Z are "
            "amino-acid tokens (use X for an unknown residue)"
        )
    out = np.zeros(max_len, dtype=np.int64)
    n = min(len(tokens), max_len)
    out[:n] = tokens[:n]
    return out


def tokenize_many(sequences: Sequence[str], max_len: int = DEFAULT_MAX_LEN) -> torch.Tensor:
    """Stack tokens of several sequences into ``long[len(sequences), max_len]``."""
    return torch.from_numpy(np.stack([tokenize(s, max_len) for s in sequences]))
