"""Canonical JSON: RFC 8785 vectors, refusals with paths, and writer == verifier."""

from __future__ import annotations

import json
import math
import struct

import pytest
from hypothesis import given, strategies as st

from pharmafl.audit import verify
from pharmafl.audit.canonical import canonical_bytes, canonical_json, format_number
from pharmafl.audit.errors import LedgerError

# RFC 8785 Appendix B: IEEE-754 bit patterns and their canonical text.
APPENDIX_B = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),
    ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"),
    ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"),
    ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]


@pytest.mark.parametrize(("bits", "expected"), APPENDIX_B)
def test_rfc8785_appendix_b_numbers(bits: str, expected: str) -> None:
    value = struct.unpack(">d", bytes.fromhex(bits))[0]
    assert format_number(value) == expected
    assert verify.canonical(value) == expected


def test_rfc8785_section_3_2_4_example() -> None:
    source = (
        '{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],'
        ' "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",'
        ' "literals": [null, true, false]}'
    )
    expected = (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )
    assert canonical_json(json.loads(source)) == expected
    assert verify.canonical(json.loads(source)) == expected


def test_members_sorted_by_utf16_code_units() -> None:
    # RFC 8785 §3.2.3: U+1F600 (surrogates D83D DE00) sorts before U+FB33 in UTF-16, after it by code point.
    value = {"\ufb33": 1, "\U0001f600": 2, "\u20ac": 3, "\r": 4, "1": 5, "\u00f6": 6, "\u0080": 7}
    expected = '{"\r":4,"1":5,"\u0080":7,"\u00f6":6,"\u20ac":3,"\U0001f600":2,"\ufb33":1}'
    assert canonical_json(value).replace("\\r", "\r") == expected
    assert verify.canonical(value) == canonical_json(value)


def test_integral_float_and_int_share_a_form() -> None:
    assert canonical_json({"a": 3.0, "b": 3, "c": -0.0}) == '{"a":3,"b":3,"c":0}'


@pytest.mark.parametrize(
    ("value", "path", "fix"),
    [
        ({"metrics": {"auc": math.nan}}, "payload['metrics']['auc']", "record null"),
        ({"eps": [1.0, math.inf]}, "payload['eps'][1]", "no JSON form"),
        ({"seed": 2**53 + 1}, "payload['seed']", "record it as a string"),
        ({"sites": ("a", "b")}, "payload['sites']", "convert it to a list"),
        ({"weights": {3: 0.5}}, "payload['weights']", "keys must be str"),
        ({"blob": b"\x00"}, "payload['blob']", "is not a JSON value"),
    ],
)
def test_refusals_name_the_path_and_the_fix(value: dict, path: str, fix: str) -> None:
    with pytest.raises(LedgerError) as err:
        canonical_json(value, where="payload")
    assert str(err.value).startswith(path + ":")
    assert fix in str(err.value)


def test_lone_surrogate_refused() -> None:
    with pytest.raises(LedgerError, match="lone surrogate"):
        canonical_bytes({"name": "bad\ud800"}, where="payload")


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_writer_and_verifier_agree_and_are_idempotent(value) -> None:
    try:
        text = canonical_json(value)
    except LedgerError:  # the writer refuses exactly what the verifier refuses
        with pytest.raises(ValueError):
            verify.canonical(value)
        return
    assert verify.canonical(value) == text
    assert canonical_json(json.loads(text)) == text  # a parsed canonical text re-encodes to itself


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_numbers_round_trip_exactly(x: float) -> None:
    assert float(format_number(x)) == x


@pytest.mark.parametrize("n", [2**53, -(2**53), 10**20, 295147905179352830000])
def test_large_integers_that_read_back_unchanged_are_accepted(n: int) -> None:
    text = canonical_json({"n": n})
    assert json.loads(text)["n"] == n
    assert verify.canonical(json.loads(text)) == text


@pytest.mark.parametrize("n", [2**53 + 1, 2**60, -(2**63), 10**400])
def test_large_integers_that_would_change_are_refused(n: int) -> None:
    with pytest.raises(LedgerError, match="would not read back unchanged"):
        canonical_json([n])
    with pytest.raises(ValueError):
        verify.canonical(n)
