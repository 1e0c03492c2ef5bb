"""Aggregation party cards, as a site (and everyone else) checks them.

An aggregation party (``pharmafl party init``, :mod:`pharmafl.pipeline.secure_agg.party_home`)
introduces itself by a self-signed card::

    {"format": "pharmafl-party-card-v1", "party": "helper-1", "role": "server" | "helper",
     "public_key": Ed25519 (hex; signs the party's statements), "fingerprint": SHA-256 of it,
     "hpke_key": X25519 (hex; shares are sealed to it), "tls_cert": PEM (self-signed; pinned
     for the parties' channel), "tls_fingerprint": SHA-256 of its DER, "created", "signature"}

The consortium lists the party cards beside the site cards and its roster hash covers both
(:func:`pharmafl.audit.messages.roster_sha256`), so a site that accepted the roster seals
its shares only to the keys it agreed to (:func:`party_keys`): the coordinator cannot slip
its own key in for a helper's.
"""

from __future__ import annotations

import hashlib
import re
import ssl
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from pharmafl.audit import messages
from pharmafl.errors import ConfigError
from pharmafl.sites.secret_sharing import PartyKey

PARTY_CARD_FIELDS = (
    "created",
    "fingerprint",
    "format",
    "hpke_key",
    "party",
    "public_key",
    "role",
    "signature",
    "tls_cert",
    "tls_fingerprint",
)
ROLES = ("server", "helper")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_HEX = re.compile(r"[0-9a-f]+")


def _hex(value: Any, length: int) -> bool:
    return isinstance(value, str) and len(value) == length and bool(_HEX.fullmatch(value))


def tls_fingerprint(cert_pem: str) -> str:
    """SHA-256 (hex) of a PEM certificate's DER bytes."""
    try:
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert_pem)).hexdigest()
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"not a PEM certificate: {exc}") from None


def check_party_card(card: Any, where: str) -> dict:
    """``card`` if it is a well-formed party card whose fingerprints and self-signature hold."""
    if not isinstance(card, dict) or tuple(sorted(card)) != PARTY_CARD_FIELDS:
        got = sorted(card) if isinstance(card, dict) else type(card).__name__
        raise ConfigError(
            f"{where}: not a party card: expected exactly the fields {list(PARTY_CARD_FIELDS)}, got {got}"
        )
    if card["format"] != messages.PARTY_CARD_FORMAT:
        raise ConfigError(f"{where}: card format {card['format']!r}, expected {messages.PARTY_CARD_FORMAT!r}")
    if not isinstance(card["party"], str) or not _ID.fullmatch(card["party"]) or card["role"] not in ROLES:
        raise ConfigError(
            f"{where}: party id {card['party']!r} (1-128 letters, digits, '._-') or role "
            f"{card['role']!r} (one of {list(ROLES)}) is invalid"
        )
    if not all(
        _hex(card[k], n)
        for k, n in (
            ("public_key", 64),
            ("hpke_key", 64),
            ("signature", 128),
            ("fingerprint", 64),
            ("tls_fingerprint", 64),
        )
    ):
        raise ConfigError(
            f"{where}: public_key, hpke_key (64), signature (128) and fingerprints (64) must be lowercase hex"
        )
    if not isinstance(card["tls_cert"], str) or not isinstance(card["created"], str):
        raise ConfigError(f"{where}: tls_cert (PEM text) and created (text) are required")
    raw = bytes.fromhex(card["public_key"])
    if hashlib.sha256(raw).hexdigest() != card["fingerprint"]:
        raise ConfigError(f"{where}: fingerprint is not the SHA-256 of the card's public key; the card was altered")
    if tls_fingerprint(card["tls_cert"]) != card["tls_fingerprint"]:
        raise ConfigError(
            f"{where}: tls_fingerprint is not the SHA-256 of the card's certificate; the card was altered"
        )
    try:
        Ed25519PublicKey.from_public_bytes(raw).verify(
            bytes.fromhex(card["signature"]), messages.party_card_message(card)
        )
    except (InvalidSignature, ValueError):
        raise ConfigError(
            f"{where}: the card's signature does not verify under its public key; the card was "
            f"altered after {card['party']} signed it"
        ) from None
    return card


def make_party_card(sign, fields: Mapping[str, Any]) -> dict:
    """``fields`` as a signed party card (``format`` and both fingerprints filled in)."""
    card = {
        **fields,
        "format": messages.PARTY_CARD_FORMAT,
        "fingerprint": hashlib.sha256(bytes.fromhex(fields["public_key"])).hexdigest(),
        "tls_fingerprint": tls_fingerprint(fields["tls_cert"]),
    }
    card.pop("signature", None)
    return {**card, "signature": sign(messages.party_card_message(card)).hex()}


def check_parties(parties: Any, where: str) -> dict[str, dict]:
    """A consortium's ``parties`` map: every card valid, listed under its own id, one server
    party and at least one helper, no key shared by two parties."""
    if not isinstance(parties, dict):
        raise ConfigError(f"{where}: parties must be a map of party id -> party card")
    for name, card in parties.items():
        check_party_card(card, f"{where}: party card {name!r}")
        if card["party"] != name:
            raise ConfigError(f"{where}: the party card listed as {name!r} is {card['party']!r}'s")
    roles = sorted(c["role"] for c in parties.values())
    if parties and (roles.count("server") != 1 or "helper" not in roles):
        raise ConfigError(
            f"{where}: aggregation needs exactly one party of role 'server' and at least one "
            f"'helper'; the cards have roles {roles}"
        )
    for field in ("public_key", "hpke_key", "tls_fingerprint"):
        values = [c[field] for c in parties.values()]
        if len(set(values)) != len(values):
            raise ConfigError(f"{where}: two party cards share one {field}; each party needs its own keys")
    return parties


def ranked(parties: Mapping[str, dict]) -> list[str]:
    """Party ids in rank order: the server's party (rank 0, it receives the sum), then helpers by id."""
    return sorted(parties, key=lambda p: (parties[p]["role"] != "server", p))


def party_keys(consortium: Mapping[str, Any]) -> list[PartyKey]:
    """The HPKE keys a site seals to, in rank order, from a consortium it accepted."""
    parties = check_parties(consortium.get("parties") or {}, "consortium")
    if not parties:
        raise ConfigError(
            "the consortium lists no aggregation party: add party cards with pharmafl consortium init "
            "--party-card, and let every site accept the new roster"
        )
    return [PartyKey(p, bytes.fromhex(parties[p]["hpke_key"])) for p in ranked(parties)]
