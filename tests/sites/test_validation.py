"""Validation helpers: target sequences longer than the model window, and a light import."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, strategies as st

from pharmafl.errors import DataError
from pharmafl.sites.validation import LONG_EXAMPLES, MODEL_WINDOW, long_sequences

HEAVY = ("torch", "torch_geometric", "rdkit", "opacus", "nvflare", "crypten", "pandas", "pyarrow")


def test_long_sequences_counts_and_names_the_ones_cut():
    long = long_sequences(["a", "b", "c", "d"], ["A" * 5, "A" * 12, "A" * 10, "A" * 11], window=10)

    assert (long.count, long.longest, long.total, long.window) == (2, 12, 4, 10)
    assert long.ids == ("b", "d")  # longest first; 10 residues fit a window of 10
    assert long.as_dict() == {"max_len": 10, "count": 2, "longest": 12, "ids": ["b", "d"]}


def test_no_long_sequence_no_warning():
    long = long_sequences(["a", "b"], ["ACD", "ACDE"], window=4)

    assert long.count == 0 and long.ids == () and long.warning("site-01") is None


def test_the_warning_shows_a_few_ids_and_how_many_more():
    ids = [f"t{k}" for k in range(LONG_EXAMPLES + 3)]

    line = long_sequences(ids, ["A" * (20 + k) for k in range(len(ids))], window=10).warning("kiba")

    assert line.startswith(f"kiba: {len(ids)} of {len(ids)} target sequence(s) are longer than the model window of 10")
    shown = [f"t{k}" for k in reversed(range(len(ids)))][:LONG_EXAMPLES]
    assert ", ".join(shown) + " and 3 more" in line and "\n" not in line


@given(st.lists(st.integers(1, 60), max_size=30), st.integers(1, 60))
def test_count_is_the_number_longer_than_the_window(lengths, window):
    long = long_sequences([str(i) for i in range(len(lengths))], ["A" * n for n in lengths], window)

    assert long.count == sum(n > window for n in lengths) and long.longest == max(lengths, default=0)
    assert [lengths[int(i)] for i in long.ids] == sorted((n for n in lengths if n > window), reverse=True)


@pytest.mark.parametrize("window", [0, -3, 2.5, True])
def test_a_window_that_is_not_a_positive_integer_is_refused(window):
    with pytest.raises(DataError, match="the window must be a positive integer"):
        long_sequences(["a"], ["ACD"], window)


def test_the_window_is_the_default_models():
    from pharmafl.models.dti import ModelConfig
    from pharmafl.models.sequence import DEFAULT_MAX_LEN

    assert MODEL_WINDOW == ModelConfig().max_len == DEFAULT_MAX_LEN


@pytest.mark.parametrize("module", ["pharmafl.sites.validation", "pharmafl.sites.data_cli"])
def test_import_is_light(module):
    code = f"import sys, {module}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)

    assert out.stdout.strip() == ""


def test_data_help_imports_nothing_heavy():
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom pharmafl.sites.data_cli import app\n"
        "for args in ([], ['fetch', '--help'], ['validate', '--help'], ['import', '--help']):\n"
        "    assert 'Usage' in CliRunner().invoke(app, args).output\n"
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    )

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)

    assert out.stdout.strip() == ""
