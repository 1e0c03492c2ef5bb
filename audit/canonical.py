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
* nesting deeper than 64 levels (:data:`~pharmafl.audit.messages.MAX_DEPTH`);
* only ``dict``/``Mapping`` with ``str`` keys, ``list``, ``str``, ``int``, ``float``,
  ``bool`` and ``None``; tuples, sets, bytes, numpy scalars, paths... are refused rather
  than guessed at.

An int and a float of the same value (``3`` and ``3.0``) have the same canonical form:
JSON numbers carry no type.

The encoder itself is :func:`pharmafl.audit.messages.canonical`, the one copy the writer,
the sites and the standalone verifier share; this module puts the ledger's error type and
the caller's name for the value (``where``) on its refusals.
"""

from __future__ import annotations

from typing import Any

from pharmafl.audit.errors import LedgerError
from pharmafl.audit.messages import MAX_SAFE_INTEGER, NotCanonical, canonical, number

__all__ = ["MAX_SAFE_INTEGER", "canonical_bytes", "canonical_json", "format_number"]


def canonical_json(value: Any, *, where: str = "value") -> str:
    """Return the RFC 8785 canonical JSON text of ``value``.

    Args:
        value: a JSON value (see the module docstring for what is accepted).
        where: how to name ``value`` in error messages, e.g. ``"payload"``.

    Raises:
        LedgerError: naming the first offending path, e.g. ``payload['metrics']['auc']``.
    """
    try:
        return canonical(value)
    except NotCanonical as err:
        raise LedgerError(f"{where}{err.path}: {err.reason}") from None


def canonical_bytes(value: Any, *, where: str = "value") -> bytes:
    """The UTF-8 bytes of :func:`canonical_json` (what gets hashed and signed)."""
    return canonical_json(value, where=where).encode("utf-8")


def format_number(x: int | float, *, where: str = "value") -> str:
    """ECMAScript ``Number.prototype.toString`` of ``x`` (RFC 8785 §3.2.2.3).

    .. math:: x = d_1 d_2 \\ldots d_k \\times 10^{n-k}

    with :math:`d_1 \\ldots d_k` the shortest round-tripping digits (Python's ``repr``
    computes the same digits); the layout depends on :math:`n` and :math:`k`.
    """
    try:
        return number(x)
    except NotCanonical as err:
        raise LedgerError(f"{where}: {err.reason}") from None
