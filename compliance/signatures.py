"""Electronic signatures (21 CFR 11.50, 11.70, 11.100, 11.200): made, shown, checked.

A signature binds a user to one record's hash with a meaning::

    fields    = {meaning, printed_name, record, record_hash, role, signed_at, signer}
    signature = Ed25519(user key, b"pharmafl-e-signature-v1\\x00" || JCS(fields))

``record_hash`` is the SHA-256 of the signed record (for a report, of its canonical
``report.json``), so the signature cannot be copied onto another record (11.70): the
verifier recomputes the hash of the record it is shown with. The ``e_signature`` ledger
entry carries the fields and the signature, and is itself signed by the same user key,
which only the user's password opens (both credential components at each signing, 11.200).

The manifestation (11.50) - printed name, UTC date and time, meaning - is
:func:`manifestation`, printed on every human-readable copy of the record.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pharmafl.audit.canonical import canonical_bytes
from pharmafl.compliance.roles import parse_meaning

SIGNATURE_DOMAIN = b"pharmafl-e-signature-v1\x00"
SIGNED_FIELDS = ("meaning", "printed_name", "record", "record_hash", "role", "signed_at", "signer")
MEANING_WORDS = {"authored": "Authored by", "reviewed": "Reviewed by", "approved": "Approved by"}


def signature_message(fields: dict) -> bytes:
    """The domain-separated canonical bytes a signature covers."""
    return SIGNATURE_DOMAIN + canonical_bytes({k: fields[k] for k in SIGNED_FIELDS}, where="e-signature")


def make_signature(
    key: Ed25519PrivateKey,
    *,
    signer: str,
    printed_name: str,
    role: str,
    record: str,
    record_hash: str,
    meaning: str,
    signed_at: str,
) -> dict:
    """The ``e_signature`` payload: the signed fields plus ``signature`` (hex)."""
    fields = {
        "meaning": parse_meaning(meaning),
        "printed_name": printed_name,
        "record": record,
        "record_hash": record_hash,
        "role": role,
        "signed_at": signed_at,
        "signer": signer,
    }
    return {**fields, "signature": key.sign(signature_message(fields)).hex()}


def signature_valid(payload: dict, public_key_hex: str) -> bool:
    """Whether ``payload['signature']`` verifies over its fields under the public key."""
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex)).verify(
            bytes.fromhex(payload["signature"]), signature_message(payload)
        )
        return True
    except (InvalidSignature, KeyError, ValueError):
        return False


def manifestation(sig: dict) -> str:
    """``Approved by Jane Doe (user:jane, qa) on 2025-01-02 03:04:05 UTC`` (11.50)."""
    when = sig["signed_at"][:19].replace("T", " ") + " UTC"
    return f"{MEANING_WORDS[sig['meaning']]} {sig['printed_name']} ({sig['signer']}, {sig['role']}) on {when}"
