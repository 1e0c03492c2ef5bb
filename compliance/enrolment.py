"""Enrolment: a user's signing key is registered only by whoever holds the temporary password.

The admin who creates an account sets a temporary password and commits to it in the
``user_created`` entry she signs::

    code_key   = scrypt(temporary password; salt, n >= 2**17, r = 8, p = 1)    (32 bytes)
    commitment = {"format": "pharmafl-enrolment-commitment-v1",
                  "kdf": {"name": "scrypt", "n", "r", "p", "salt"},
                  "code_key_sha256": SHA-256(code_key)}

At her first password change the user enrols a key she generates, with an ``actor_key``
entry signed by that key (:meth:`pharmafl.audit.ledger.Ledger.enrol`) whose ``enrolment``
answers the commitment::

    {"method": "temporary-password", "user_created": <seq of the user_created entry>,
     "code_key": hex(code_key),
     "mac": HMAC-SHA256(code_key, b"pharmafl-user-enrolment-v1\\0" ||
                        JCS({"actor", "public_key", "user_created"}))}

The code key is revealed once, when the temporary password dies (it is replaced in the same
step). Anyone can check offline (:mod:`pharmafl.audit.evidence`) that the enrolled key was
bound by the holder of the temporary password to this account: the code key opens the
commitment the admin signed, and the MAC binds it to this public key. Holding the run's
system passphrase is not enough: the registrar registers no ``user:*`` key, and without the
temporary password there is no code key.

The first admin (``users init``) has no one to commit for her: she self-enrols with
``{"method": "bootstrap"}`` before any account exists (trust on first use), and her
``user_created`` (``created_by: bootstrap``) follows.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pharmafl.audit.evidence import COMMITMENT_FORMAT, ENROLMENT_METHOD, enrolment_mac
from pharmafl.compliance.credentials import derive, new_kdf, public_hex
from pharmafl.compliance.errors import ComplianceError

BOOTSTRAP = {"method": "bootstrap"}


def commit(temporary_password: str, scrypt_n: int) -> dict:
    """The commitment to ``temporary_password`` that ``user_created`` carries."""
    kdf = new_kdf(scrypt_n)
    digest = hashlib.sha256(derive(temporary_password, kdf)).hexdigest()
    return {"format": COMMITMENT_FORMAT, "kdf": kdf, "code_key_sha256": digest}


def open_commitment(temporary_password: str, commitment: dict, where: str) -> bytes:
    """The code key of ``temporary_password``; refused unless it opens ``commitment``."""
    if not isinstance(commitment, dict) or commitment.get("format") != COMMITMENT_FORMAT:
        raise ComplianceError(
            f"{where} carries no enrolment commitment; the admin must disable this account and create a new one"
        )
    code_key = derive(temporary_password, commitment["kdf"])
    if not hmac.compare_digest(hashlib.sha256(code_key).hexdigest(), commitment["code_key_sha256"]):
        raise ComplianceError(
            f"the temporary password does not open the enrolment commitment of {where}; the "
            "admin must disable this account and create a new one"
        )
    return code_key


def enrolment(actor: str, key: Ed25519PrivateKey, user_created: int, code_key: bytes) -> dict:
    """The ``enrolment`` of ``actor``'s ``actor_key`` entry, answering ``user_created``'s commitment."""
    return {
        "method": ENROLMENT_METHOD,
        "user_created": user_created,
        "code_key": code_key.hex(),
        "mac": enrolment_mac(code_key, actor, public_hex(key), user_created),
    }
