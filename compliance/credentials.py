"""Credentials (21 CFR 11.300): password hashes, signing keys sealed under the password, policy.

A user's credentials are two components, a unique user id and a password; both are asked
for at every signing. The password never leaves memory; what is stored is

* ``password``: an scrypt hash (RFC 7914) ``{"name": "scrypt", "n", "r", "p", "salt", "hash"}``,
  compared in constant time;
* ``key``: the user's Ed25519 signing key, AES-256-GCM under a key derived from the
  password with scrypt (another salt), the associated data binding the user's actor id
  and public key. Only the password opens it, so an entry signed by ``user:alice`` in the
  ledger could only be made by someone who typed alice's password.

The key is generated when the user sets their own password (enrolment), never by the
admin who created the account: an admin who knows a temporary password cannot sign as
the user.

**Cost.** Every scrypt here runs at n >= 2**17, r = 8, p = 1 (128 MiB; the OWASP minimum).
The one way below it is :meth:`PasswordPolicy.for_tests` (n >= 2**14), which marks the
policy ``test_only_kdf``: the policy is recorded in the ledger with that mark, and
:class:`~pharmafl.compliance.access.AccessControl` refuses such a policy unless opened with
``allow_test_kdf=True``, which no command does.

:class:`PasswordPolicy` is typed and frozen: minimum length, ageing, lockout threshold and
the scrypt cost. Everything here is a pure function of its arguments.
"""

from __future__ import annotations

import hmac
import secrets
import unicodedata
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from pharmafl.audit.canonical import canonical_bytes
from pharmafl.compliance.errors import AuthenticationError, ComplianceError

MIN_SCRYPT_N = 2**17
TEST_SCRYPT_N = 2**14  # the floor of PasswordPolicy.for_tests(); refused in production
KEY_FORMAT = "pharmafl-user-key-v1"


@dataclass(frozen=True)
class PasswordPolicy:
    """How passwords are checked and aged.

    Args:
        min_length: shortest password accepted (default 12).
        max_age_days: a password older than this must be changed before any other action
            (default 90; 0 disables ageing).
        max_failed_logins: consecutive failures that lock the account (default 5).
        scrypt_n: scrypt cost for hashes, sealed keys and enrolment codes (power of two,
            >= 2**17; default 2**17).
        test_only_kdf: set only by :meth:`for_tests`, which allows ``scrypt_n`` down to 2**14.
    """

    min_length: int = 12
    max_age_days: int = 90
    max_failed_logins: int = 5
    scrypt_n: int = MIN_SCRYPT_N
    test_only_kdf: bool = False

    @classmethod
    def for_tests(cls, scrypt_n: int = TEST_SCRYPT_N, **kwargs) -> PasswordPolicy:
        """A policy with a cheaper KDF, for test suites only: recorded as ``test_only_kdf`` in
        the ledger and refused by :class:`~pharmafl.compliance.access.AccessControl` unless it
        was opened with ``allow_test_kdf=True``."""
        return cls(scrypt_n=scrypt_n, test_only_kdf=True, **kwargs)

    def __post_init__(self):
        if self.min_length < 8:
            raise ComplianceError(f"policy min_length must be >= 8, got {self.min_length}")
        if self.max_age_days < 0:
            raise ComplianceError(f"policy max_age_days must be >= 0 (0: no ageing), got {self.max_age_days}")
        if self.max_failed_logins < 1:
            raise ComplianceError(f"policy max_failed_logins must be >= 1, got {self.max_failed_logins}")
        floor = TEST_SCRYPT_N if self.test_only_kdf else MIN_SCRYPT_N
        if type(self.scrypt_n) is not int or self.scrypt_n < floor or self.scrypt_n & (self.scrypt_n - 1):
            raise ComplianceError(
                f"policy scrypt_n must be a power of two >= 2**{floor.bit_length() - 1}, got "
                f"{self.scrypt_n}"
                + ("" if self.test_only_kdf else " (PasswordPolicy.for_tests() allows less, in tests only)")
            )

    def as_dict(self) -> dict:
        return {
            "min_length": self.min_length,
            "max_age_days": self.max_age_days,
            "max_failed_logins": self.max_failed_logins,
            "scrypt_n": self.scrypt_n,
            "test_only_kdf": self.test_only_kdf,
        }


def check_new_password(password: str, policy: PasswordPolicy, user_id: str, full_name: str) -> None:
    """Refuse a password too short, made of one character class, or containing the user id/name."""
    if not isinstance(password, str) or len(password) < policy.min_length:
        raise ComplianceError(f"password for {user_id!r} is too short: at least {policy.min_length} characters")
    low = password.lower()
    if user_id.lower() in low or any(len(p) > 2 and p.lower() in low for p in full_name.split()):
        raise ComplianceError(f"password for {user_id!r} must not contain the user id or name; choose another")
    classes = sum(
        any(f(c) for c in password) for f in (str.islower, str.isupper, str.isdigit, lambda c: not c.isalnum())
    )
    if classes < 2:
        raise ComplianceError(
            f"password for {user_id!r} uses one kind of character only; mix letters with digits, capitals or symbols"
        )


def _secret(password: str) -> bytes:
    return unicodedata.normalize("NFC", password).encode("utf-8")


def _derive(password: str, n: int, r: int, p: int, salt: bytes) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(_secret(password))


def new_kdf(scrypt_n: int) -> dict:
    """Fresh scrypt parameters ``{"name", "n", "r", "p", "salt"}`` (16-byte salt)."""
    return {"name": "scrypt", "n": scrypt_n, "r": 8, "p": 1, "salt": secrets.token_bytes(16).hex()}


def derive(password: str, kdf: dict) -> bytes:
    """The 32-byte scrypt key of ``password`` under ``kdf`` (as :func:`new_kdf` makes)."""
    if kdf.get("name") != "scrypt" or not isinstance(kdf.get("n"), int) or kdf["n"] < TEST_SCRYPT_N:
        raise ComplianceError(f"unsupported or too weak KDF {kdf!r}; the admin must reset the password")
    return _derive(password, kdf["n"], kdf["r"], kdf["p"], bytes.fromhex(kdf["salt"]))


def hash_password(password: str, scrypt_n: int) -> dict:
    kdf = new_kdf(scrypt_n)
    return {**kdf, "hash": derive(password, kdf).hex()}


def password_matches(password: str, stored: dict) -> bool:
    """Constant-time comparison of scrypt(password) with the stored hash."""
    if stored.get("name") != "scrypt" or stored.get("n", 0) < TEST_SCRYPT_N:
        raise ComplianceError("stored password hash uses an unsupported KDF; the admin must reset the password")
    got = _derive(password, stored["n"], stored["r"], stored["p"], bytes.fromhex(stored["salt"]))
    return hmac.compare_digest(got, bytes.fromhex(stored["hash"]))


def public_hex(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def _aad(envelope: dict) -> bytes:
    return canonical_bytes({k: v for k, v in envelope.items() if k != "ciphertext"})


def seal_key(key: Ed25519PrivateKey, password: str, actor: str, scrypt_n: int) -> dict:
    """The key encrypted under ``password`` (AES-256-GCM, scrypt), bound to ``actor``."""
    envelope = {
        "format": KEY_FORMAT,
        "actor": actor,
        "public_key": public_hex(key),
        "kdf": new_kdf(scrypt_n),
        "nonce": secrets.token_bytes(12).hex(),
    }
    aes = AESGCM(derive(password, envelope["kdf"]))
    raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    envelope["ciphertext"] = aes.encrypt(bytes.fromhex(envelope["nonce"]), raw, _aad(envelope)).hex()
    return envelope


def open_key(envelope: dict, password: str, actor: str) -> Ed25519PrivateKey:
    """The user's signing key; :class:`AuthenticationError` if the password does not open it."""
    if envelope.get("format") != KEY_FORMAT or envelope.get("actor") != actor:
        raise AuthenticationError(
            f"the stored signing key is not {actor!r}'s; the admin must disable this account and create a new one"
        )
    try:
        aes = AESGCM(derive(password, envelope["kdf"]))
        raw = aes.decrypt(bytes.fromhex(envelope["nonce"]), bytes.fromhex(envelope["ciphertext"]), _aad(envelope))
    except InvalidTag:
        raise AuthenticationError(f"the password does not open {actor!r}'s signing key") from None
    key = Ed25519PrivateKey.from_private_bytes(raw)
    if public_hex(key) != envelope["public_key"]:
        raise AuthenticationError(f"{actor!r}'s sealed key does not match its public key; the record was altered")
    return key
