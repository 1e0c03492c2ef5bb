import numpy as np
import pytest
from hypothesis import given, strategies as st

from pharmafl.errors import FeaturizationError
from pharmafl.models.sequence import ALPHABET, tokenize


def test_tokens_pad_and_truncate():
    t = tokenize("ACX", max_len=5)
    assert t.tolist() == [1, 3, 24, 0, 0]
    assert tokenize("A" * 12, max_len=10).tolist() == [1] * 10


def test_lowercase_and_unknown_letters_are_tokens():
    assert tokenize("acj", 3).tolist() == [1, 3, 10]


@pytest.mark.parametrize("seq, bad", [("AC1D", "'1'"), ("AC D", "' '"), ("MK*", r"'\*'"), ("", "empty")])
def test_bad_sequences_rejected(seq, bad):
    with pytest.raises(FeaturizationError, match=bad):
        tokenize(seq, 10)


@given(st.text(alphabet=ALPHABET, min_size=1, max_size=50), st.integers(1, 60))
def test_tokens_roundtrip(seq, max_len):
    t = tokenize(seq, max_len)
    assert t.shape == (max_len,)
    n = min(len(seq), max_len)
    assert "".join(ALPHABET[i - 1] for i in t[:n]) == seq[:n]
    assert np.all(t[n:] == 0)
