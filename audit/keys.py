"""Ed25519 signing keys, encrypted at rest with a passphrase: one file per actor.

Private keys never enter the ledger; the ledger holds public keys and fingerprints
(``actor_key`` entries). Each trust domain keeps its own store: the coordinator's holds
only its system actors (``allowed={"server", "access-control"}``, so asking it for a
site's key is refused rather than quietly creating one), each site's home holds the one
key of that site, and a user's key is sealed under the user's own password.

File format (``<actor>.key.json``, percent-encoded actor id, mode 0600), our own envelope
because PKCS#8 ``BestAvailableEncryption`` derives its key with PBKDF2, not scrypt::

    {"format": "pharmafl-key-v1", "actor": "site-03", "algorithm": "Ed25519",
     "public_key": <hex>, "fingerprint": <sha256 hex of the public key>,
     "kdf": {"name": "scrypt", "n": 131072, "r": 8, "p": 1, "salt": <hex, 16 bytes>},
     "cipher": {"name": "AES-256-GCM", "nonce": <hex, 12 bytes>},
     "ciphertext": <hex: the 32-byte RFC 8032 private key + 16-byte tag>}

The AES-256-GCM key is scrypt(passphrase as UTF-8 NFC, salt; n, r, p) (RFC 7914;
n = 2**17, r = 8, p = 1 by default, the OWASP minimum). The associated data is the
canonical JSON of every other field, so editing the actor, public key or parameters makes
decryption fail instead of silently pairing a key with the wrong name.

A key file is created with ``os.link`` from a temporary file: two processes racing to
create the same actor's key both end up with the one that landed first.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import unicodedata
from pathlib import Path
from urllib.parse import quote, unquote

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from pharmafl.audit.canonical import canonical_bytes
from pharmafl.audit.errors import LedgerError
from pharmafl.audit.records import ALGORITHM, check_actor, fingerprint
from pharmafl.fileio import fsync_dir

FORMAT = "pharmafl-key-v1"
PASSPHRASE_ENV = "PHARMAFL_KEY_PASSPHRASE"
DEFAULT_SCRYPT_N = 2**17
MIN_SCRYPT_N = 2**14
_SUFFIX = ".key.json"


def passphrase_from_env(var: str = PASSPHRASE_ENV) -> str:
    """The passphrase in ``$var`` for non-interactive runs; refuses a missing or empty one."""
    value = os.environ.get(var, "")
    if not value:
        raise LedgerError(
            f"environment variable {var} is unset or empty; set it to the key-store passphrase "
            "(e.g. export PHARMAFL_KEY_PASSPHRASE=...) or pass the passphrase explicitly"
        )
    return value


def raw_public_key(key: Ed25519PrivateKey) -> bytes:
    """The 32-byte RFC 8032 public key."""
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


class KeyStore:
    """A directory of passphrase-encrypted Ed25519 keys, one per actor.

    Args:
        path: the directory; created (mode 0700) if missing.
        passphrase: non-empty; the same for every key in the directory.
        scrypt_n: scrypt cost for keys created from now on (a power of two, >= 2**14).
        allowed: the only actors whose keys this store may create or hand out (None: any).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        passphrase: str,
        *,
        scrypt_n: int = DEFAULT_SCRYPT_N,
        allowed: set[str] | frozenset[str] | None = None,
    ):
        if not isinstance(passphrase, str) or not passphrase:
            raise LedgerError(
                f"empty key-store passphrase for {path}; pass a non-empty passphrase "
                f"(non-interactive runs: set {PASSPHRASE_ENV} and use passphrase_from_env())"
            )
        if scrypt_n < MIN_SCRYPT_N or scrypt_n & (scrypt_n - 1):
            raise LedgerError(f"scrypt_n={scrypt_n} must be a power of two >= 2**14 (default 2**17)")
        self.path = Path(path)
        self._secret = unicodedata.normalize("NFC", passphrase).encode("utf-8")
        self._scrypt_n = scrypt_n
        self._cache: dict[str, Ed25519PrivateKey] = {}
        self.allowed = None if allowed is None else frozenset(check_actor(a) for a in allowed)
        if self.path.exists() and not self.path.is_dir():
            raise LedgerError(f"key store {self.path} exists and is not a directory; pass a directory path")
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)

    def file_for(self, actor: str) -> Path:
        return self.path / (quote(check_actor(actor), safe="") + _SUFFIX)

    def actors(self) -> list[str]:
        """Actors with a key file here, sorted."""
        return sorted(unquote(p.name[: -len(_SUFFIX)]) for p in self.path.glob("*" + _SUFFIX))

    def public_info(self, actor: str) -> dict:
        """The clear-text part of an actor's key file (no passphrase needed)."""
        record = self._read(actor)
        return {k: record[k] for k in ("actor", "algorithm", "public_key", "fingerprint")}

    def get(self, actor: str) -> Ed25519PrivateKey:
        """The actor's private key; :class:`LedgerError` if it has none here."""
        self._check_allowed(actor)
        if actor in self._cache:
            return self._cache[actor]
        key = self._decrypt(self._read(actor))
        self._cache[actor] = key
        return key

    def get_or_create(self, actor: str) -> Ed25519PrivateKey:
        """The actor's private key, generating and storing a new one on first use."""
        self._check_allowed(actor)
        if actor in self._cache:
            return self._cache[actor]
        if not self.file_for(actor).exists():
            self._create(actor)
        return self.get(actor)

    def _check_allowed(self, actor: str) -> None:
        if self.allowed is not None and actor not in self.allowed:
            raise LedgerError(
                f"key store {self.path} holds keys only for {', '.join(sorted(self.allowed))}, not {actor!r}: "
                f"{actor!r} signs with its own key in its own domain (a site at its site, a user with "
                "Ledger.enrol); send its signed statement instead"
            )

    def _read(self, actor: str) -> dict:
        file = self.file_for(actor)
        try:
            record = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise LedgerError(
                f"no key for actor {actor!r} in {self.path} (expected {file.name}); "
                f"known actors: {', '.join(self.actors()) or 'none'}"
            ) from None
        except (OSError, ValueError) as err:
            raise LedgerError(f"{file}: unreadable key file ({err}); restore it from backup") from None
        if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("actor") != actor:
            raise LedgerError(f"{file}: not a {FORMAT} key file for actor {actor!r}; restore it from backup")
        return record

    def _kdf(self, params: dict) -> bytes:
        salt = bytes.fromhex(params["salt"])
        return Scrypt(salt=salt, length=32, n=params["n"], r=params["r"], p=params["p"]).derive(self._secret)

    @staticmethod
    def _aad(record: dict) -> bytes:
        return canonical_bytes({k: v for k, v in record.items() if k != "ciphertext"})

    def _decrypt(self, record: dict) -> Ed25519PrivateKey:
        file = self.file_for(record["actor"])
        try:
            kdf = record["kdf"]
            if kdf.get("name") != "scrypt" or kdf["n"] < MIN_SCRYPT_N:
                raise LedgerError(f"{file}: unsupported or too weak KDF {kdf!r}; re-create the key")
            aes = AESGCM(self._kdf(kdf))
            raw = aes.decrypt(
                bytes.fromhex(record["cipher"]["nonce"]), bytes.fromhex(record["ciphertext"]), self._aad(record)
            )
            key = Ed25519PrivateKey.from_private_bytes(raw)
        except InvalidTag:
            raise LedgerError(
                f"{file}: cannot decrypt the key of {record['actor']!r}: wrong passphrase (check "
                f"{PASSPHRASE_ENV}) or the file was altered"
            ) from None
        except (KeyError, TypeError, ValueError) as err:
            raise LedgerError(f"{file}: malformed key file ({err!r}); restore it from backup") from None
        if raw_public_key(key).hex() != record["public_key"]:
            raise LedgerError(f"{file}: private key does not match its public key; restore it from backup")
        return key

    def _create(self, actor: str) -> None:
        key = Ed25519PrivateKey.generate()
        public = raw_public_key(key)
        kdf = {"name": "scrypt", "n": self._scrypt_n, "r": 8, "p": 1, "salt": secrets.token_bytes(16).hex()}
        record = {
            "format": FORMAT,
            "actor": actor,
            "algorithm": ALGORITHM,
            "public_key": public.hex(),
            "fingerprint": fingerprint(public),
            "kdf": kdf,
            "cipher": {"name": "AES-256-GCM", "nonce": secrets.token_bytes(12).hex()},
        }
        raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        ciphertext = AESGCM(self._kdf(kdf)).encrypt(bytes.fromhex(record["cipher"]["nonce"]), raw, self._aad(record))
        record["ciphertext"] = ciphertext.hex()
        target = self.file_for(actor)
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".tmp-", suffix=_SUFFIX)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:  # mkstemp: mode 0600
                json.dump(record, out, indent=1, sort_keys=True)
                out.flush()
                os.fsync(out.fileno())
            try:
                os.link(tmp, target)  # atomic create-if-absent: a racing creator loses cleanly
            except FileExistsError:
                pass
        finally:
            os.unlink(tmp)
        fsync_dir(self.path)
