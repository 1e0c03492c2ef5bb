"""The coordinator's check of what a site signed, before anything of it is recorded.

A site's result carries its signed statements (:mod:`pharmafl.sites.signed_site`). The
coordinator recomputes, from the result it received, the statements the site must have made
(:func:`~pharmafl.sites.signed_site.statement_payloads`) and accepts the result only if each
one is there, signed by the key pinned for that site in the run's consortium, for this run
and round, saying exactly what the result says. A result that fails is left out of the
round (``site_failed``) and nothing the site claimed is recorded as its statement.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from pharmafl.audit.messages import STATEMENT_FIELDS, STATEMENT_SHAPE, canonical, statement_message


def statement_problem(
    stmt, *, site: str, round: int | None, run_id: str, type_: str, payload: Mapping, key: bytes
) -> str | None:
    """Why ``stmt`` is not ``site``'s signed ``type_`` statement of ``payload``, or None.

    Its fields are checked for their types first (:data:`~pharmafl.audit.messages.STATEMENT_SHAPE`):
    a statement from the wire may hold anything, and a round of ``3.0`` or ``True`` must not
    pass for round 3 or 1 by comparing equal."""
    shape = _shape_problem(stmt)
    if shape is not None:
        return f"{type_} statement is malformed: {shape}"
    if (stmt["site"], stmt["round"], stmt["run_id"], stmt["type"]) != (site, round, run_id, type_):
        return (
            f"{type_} statement is labelled {stmt['site']} round {stmt['round']} of run {stmt['run_id']!r}, "
            f"expected {site} round {round} of {run_id!r}"
        )
    try:
        signed, claimed = canonical(stmt["payload"]), canonical(dict(payload))
    except (ValueError, TypeError) as exc:  # TypeError: dict() of a payload that is no mapping
        return f"{type_} statement payload has no canonical form: {exc}"
    if signed != claimed:
        return f"{type_} statement says {signed[:120]}, but the result says {claimed[:120]}"
    digest = hashlib.sha256(signed.encode()).hexdigest()
    if stmt["payload_sha256"] != digest:
        return f"{type_} statement payload_sha256 {stmt['payload_sha256']!r} is not the payload's {digest}"
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(
            bytes.fromhex(stmt["signature"]), statement_message(run_id, round, site, type_, digest)
        )
    except (InvalidSignature, ValueError, TypeError):
        return f"{type_} statement is not signed by {site}'s pinned key"
    return None


def check_statements(
    statements, expected: list[tuple[str, dict]], *, site: str, round: int | None, run_id: str, key: bytes | None
) -> tuple[dict[str, dict], str | None]:
    """``({type: statement}, None)`` when ``statements`` are exactly ``expected``, else ``({}, why)``."""
    if key is None:
        return {}, f"{site} is not pinned in the run's consortium"
    if statements is not None and not isinstance(statements, (list, tuple)):
        return {}, f"statements malformed: a {type(statements).__name__}, not a list"
    by_type: dict[str, dict] = {}
    for stmt in statements or ():
        t = stmt.get("type") if isinstance(stmt, Mapping) else None
        if type(t) is not str:  # a list is unhashable; anything else cannot name a statement
            return {}, f"result carries a statement without a text type: {_shown(stmt)}"
        if t in by_type:
            return {}, f"two {t} statements in one result"
        by_type[t] = stmt
    want = [t for t, _ in expected]
    if sorted(by_type, key=str) != sorted(want):
        return {}, f"result carries statements {sorted(map(str, by_type))}, expected {sorted(want)}"
    for type_, payload in expected:
        problem = statement_problem(
            by_type[type_], site=site, round=round, run_id=run_id, type_=type_, payload=payload, key=key
        )
        if problem is not None:
            return {}, problem
    return by_type, None


def _shape_problem(stmt) -> str | None:
    """Which fields of ``stmt`` are missing, extra or of the wrong type, or None."""
    if not isinstance(stmt, dict):
        return f"a {type(stmt).__name__}, not an object with the fields {', '.join(STATEMENT_FIELDS)}"
    missing = [k for k in STATEMENT_FIELDS if k not in stmt]
    extra = [k for k in stmt if k not in STATEMENT_SHAPE]
    if missing or extra:
        return f"missing fields {missing}, extra fields {extra!r:.200} (expected exactly {', '.join(STATEMENT_FIELDS)})"
    wrong = [k for k, ok in STATEMENT_SHAPE.items() if not ok(stmt[k])]
    if wrong:
        return f"fields {wrong} have the wrong type ({_shown({k: stmt[k] for k in wrong})})"
    return None


def _shown(value) -> str:
    """A short, safe rendering of a value a site sent (any object: its repr may be huge)."""
    try:
        return f"{value!r:.200}"
    except Exception:  # noqa: BLE001 - a repr that fails says nothing worth raising over
        return f"a {type(value).__name__}"
