"""Canonical JSON for ledger payloads: RFC 8785 (JCS), with I-JSON's integer range.

Two parties that hold the same JSON value must produce the same bytes, or hashes and
signatures over it mean nothing. :func:`canonical_json` writes the JSON Canonicalization
Scheme of `RFC 8785 <https://www.rfc-editor.org/rfc/rfc8785>`_:

* objects: members sorted by the UTF-16 code units of their names (§3.2.3); names must be
  unique strings;
* no insignificant whitespace; strings escaped as ECMAScript ``JSON.stringify`` does
  (``\\"``, ``\\\\``, ``\\b \\f \\n \\r \\t``, other controls as lowercase ``\\u00xx``,
  everything else literal UTF-8) (§3.2.2.2);
* numbers as ECMAScript ``Number.prototype.toString`` writes an IEEE-754 double
  (§3.2.2.3): the shortest digits that round-trip, ``1e+21`` / ``1e-7`` exponents,
  ``3.0`` written ``3``, ``-0`` written ``0``.

So an off-the-shelf JCS library in any language reproduces our bytes. Restrictions,
each refused with a :class:`LedgerError` that names the offending path:

* NaN and ±Infinity have no JSON form (RFC 8785 §3.2.2.3);
* integers beyond ±(2**53 - 1) are refused unless their decimal digits are exactly what
  RFC 8785 writes for the nearest double (``10**20`` passes, ``2**60`` would read back
  as 1152921504606847000); send such values as strings (I-JSON, RFC 7493 §2.2);
* strings must be valid Unicode (no lone surrogates, RFC 7493 §2.1);
* only ``dict``/``Mapping`` with ``str`` keys, ``list``, ``str``, ``int``, ``float``,
  ``bool`` and ``None``; tuples, sets, bytes, numpy scalars, paths... are refused rather
  than guessed at.

An int and a float of the same value (``3`` and ``3.0``) have the same canonical form:
JSON numbers carry no type.

:mod:`pharmafl.audit.verify` carries its own ~30-line copy of this encoder so that it
imports nothing from the project; the tests hold the two to the same bytes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from pharmafl.audit.errors import LedgerError

MAX_SAFE_INTEGER = 2**53 - 1
_escape = json.encoder.encode_basestring  # JCS escaping: same set, lowercase \u00xx


def canonical_json(value: Any, *, where: str = "value") -> str:
    """Return the RFC 8785 canonical JSON text of ``value``.

    Args:
        value: a JSON value (see the module docstring for what is accepted).
        where: how to name ``value`` in error messages, e.g. ``"payload"``.

    Raises:
        LedgerError: naming the first offending path, e.g. ``payload['metrics']['auc']``.
    """
    parts: list[str] = []
    try:
        _encode(value, parts)
    except _Refused as refused:
        raise LedgerError(f"{where}{''.join(reversed(refused.path))}: {refused}") from None
    return "".join(parts)


def canonical_bytes(value: Any, *, where: str = "value") -> bytes:
    """The UTF-8 bytes of :func:`canonical_json` (what gets hashed and signed)."""
    text = canonical_json(value, where=where)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as err:  # a lone surrogate somewhere
        raise LedgerError(
            f"{where}: contains a lone surrogate {text[err.start]!r}; ledger JSON must be valid "
            "Unicode (RFC 7493 §2.1); fix the code that produced this string"
        ) from None


def format_number(x: int | float, *, where: str = "value") -> str:
    """ECMAScript ``Number.prototype.toString`` of ``x`` (RFC 8785 §3.2.2.3).

    .. math:: x = d_1 d_2 \\ldots d_k \\times 10^{n-k}

    with :math:`d_1 \\ldots d_k` the shortest round-tripping digits (Python's ``repr``
    computes the same digits); the layout depends on :math:`n` and :math:`k`.
    """
    try:
        return _number(x)
    except _Refused as refused:
        raise LedgerError(f"{where}: {refused}") from None


class _Refused(Exception):
    """Internal: a value with no canonical form; ``path`` grows while unwinding."""

    def __init__(self, message: str):
        super().__init__(message)
        self.path: list[str] = []


def _number(x: int | float) -> str:
    if isinstance(x, int):
        if -MAX_SAFE_INTEGER <= x <= MAX_SAFE_INTEGER:
            return int.__repr__(x)
        try:
            text = _number(float(x))
        except OverflowError:
            text = ""
        if text != int.__repr__(x):
            raise _Refused(
                f"integer {x} would not read back unchanged: JSON numbers are IEEE-754 doubles "
                "and lose precision beyond ±(2**53 - 1) (RFC 7493 §2.2); record it as a string"
            )
        return text
    if math.isnan(x) or math.isinf(x):
        raise _Refused(
            f"{float.__repr__(x)} has no JSON form (RFC 8785 §3.2.2.3); "
            "record null or a string such as 'nan' instead"
        )
    if x == 0:
        return "0"
    sign = "-" if x < 0 else ""
    mantissa, _, exp = float.__repr__(abs(x)).partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = whole + ("" if frac == "0" else frac)
    n = len(whole) + (int(exp) if exp else 0)
    stripped = digits.lstrip("0")
    n -= len(digits) - len(stripped)
    digits = stripped.rstrip("0")
    k = len(digits)
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * -n + digits
    e = n - 1
    mantissa = digits[0] + ("." + digits[1:] if k > 1 else "")
    return sign + mantissa + ("e+" if e > 0 else "e-") + str(abs(e))


def _utf16_key(name: str) -> bytes:
    return name.encode("utf-16-be", "surrogatepass")


def _encode(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(_escape(value))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, (int, float)):
        out.append(_number(value))
    elif isinstance(value, Mapping):
        names = sorted(value) if all(type(n) is str for n in value) else _bad_keys(value)
        if not all(name.isascii() for name in names):
            names.sort(key=_utf16_key)
        out.append("{")
        for i, name in enumerate(names):
            if i:
                out.append(",")
            out.append(_escape(name))
            out.append(":")
            try:
                _encode(value[name], out)
            except _Refused as refused:
                refused.path.append(f"[{name!r}]")
                raise
        out.append("}")
    elif isinstance(value, list):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            try:
                _encode(item, out)
            except _Refused as refused:
                refused.path.append(f"[{i}]")
                raise
        out.append("]")
    else:
        hint = "a list" if isinstance(value, (tuple, set, frozenset)) else "str, int, float, bool or None"
        kind = f"{type(value).__module__}.{type(value).__qualname__}".removeprefix("builtins.")
        raise _Refused(f"{kind} {value!r:.60} is not a JSON value; convert it to {hint} before recording it")


def _bad_keys(value: Mapping) -> list[str]:
    for name in value:
        if not isinstance(name, str):
            raise _Refused(
                f"object key {name!r} is a {type(name).__name__}; JSON object keys must be str "
                "(convert it with str(...) in the producing code)"
            )
    return sorted(value)  # str subclasses only
