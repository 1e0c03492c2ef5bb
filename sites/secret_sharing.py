"""A site's update as additive secret shares in CrypTen's ring, encrypted to each party.

The math (CrypTen's arithmetic sharing, https://arxiv.org/abs/2109.00984, sec. 3): the
update vector :math:`x \\in \\mathbb{R}^P` is encoded in fixed point in the ring
:math:`\\mathbb{Z}_{2^{64}}`, :math:`\\bar x = \\mathrm{round}(2^{16} x)`, and split among the
aggregation parties :math:`0..h` as

.. math::
    \\bar x = \\sum_{j=0}^{h} s_j \\bmod 2^{64}, \\qquad
    s_j = \\mathrm{ChaCha20}(k_j)\\ (j \\ge 1), \\qquad s_0 = \\bar x - \\sum_{j \\ge 1} s_j

with each seed :math:`k_j` 32 bytes from ``os.urandom``. Helper :math:`j` receives only its
seed and expands it; party 0 (the server) receives :math:`s_0`, a uniformly distributed ring
element whatever :math:`x` is. Each piece is encrypted to its recipient (X25519 ECDH with an
ephemeral key, HKDF-SHA256, ChaCha20-Poly1305 with the run, round, site and party as
associated data), so the coordinator that relays them reads neither.

What leaves the site is an *envelope*: a canonical JSON header (site, round, example count,
parameter layout, the salted commitment to the plaintext update, and per party the
ciphertext's SHA-256) followed by the ciphertexts. The commitment
:math:`H(\\texttt{tag} \\| salt \\| H(update))` lets the site later prove what it sent by
revealing ``salt`` and the update bytes (:func:`commitment`).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pharmafl.errors import PharmaflError

FORMAT = "pharmafl-secagg/1"
MAGIC = b"PFLSA1\n"
PRECISION_BITS = 16  # CrypTen's default fixed-point precision
MAX_ABS = float(2**40)  # |x| beyond this cannot be summed over many sites without leaving the ring
SERVER = "server"


class ShareError(PharmaflError):
    """An envelope or a share is malformed, or cannot be opened by its recipient."""


# ---------------------------------------------------------------- fixed point and shares


def encode_fixed(x: np.ndarray, precision_bits: int = PRECISION_BITS) -> np.ndarray:
    """:math:`\\mathrm{round}(2^{b} x)` as int64; refuses non-finite or out-of-range values."""
    x = np.asarray(x, dtype=np.float64)
    bad = ~np.isfinite(x) | (np.abs(x) > MAX_ABS)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ShareError(f"update value {x[i]!r} at position {i} is not finite or exceeds ±{MAX_ABS:.3g}: it "
                         f"cannot be fixed-point encoded; check the site's training (divergence?)")  # fmt: skip
    return np.rint(x * float(2**precision_bits)).astype(np.int64)


def decode_fixed(v: np.ndarray, precision_bits: int = PRECISION_BITS) -> np.ndarray:
    """Exact inverse of :func:`encode_fixed` in float64 (``floor`` division, remainder >= 0)."""
    v = np.asarray(v, dtype=np.int64)
    scale = 1 << precision_bits
    q = np.floor_divide(v, scale)
    return q.astype(np.float64) + (v - q * scale).astype(np.float64) / scale


def expand_seed(seed: bytes, n: int) -> np.ndarray:
    """``n`` uniform ring elements (int64) from the ChaCha20 keystream under the 32-byte ``seed``."""
    if len(seed) != 32:
        raise ShareError(f"share seed has {len(seed)} bytes, expected 32")
    enc = Cipher(algorithms.ChaCha20(seed, b"\0" * 16), mode=None).encryptor()
    return np.frombuffer(bytearray(enc.update(bytes(8 * n))), dtype="<i8")


def split(x_enc: np.ndarray, helpers: int) -> tuple[np.ndarray, list[bytes]]:
    """Party 0's share and one fresh seed per helper, with ``s_0 + sum(expand(seed)) == x_enc`` mod 2^64."""
    if helpers < 1:
        raise ShareError(f"secure aggregation needs at least one helper party besides the server, got {helpers}")
    seeds = [os.urandom(32) for _ in range(helpers)]
    s0 = np.array(x_enc, dtype=np.int64, copy=True)
    with np.errstate(over="ignore"):
        for seed in seeds:
            s0 -= expand_seed(seed, s0.size)  # wraps modulo 2^64, as the ring does
    return s0, seeds


# ---------------------------------------------------------------- keys and encryption


@dataclass(frozen=True)
class PartyKey:
    """An aggregation party's X25519 key pair (private part only where the party runs)."""

    name: str
    public: bytes  # raw 32 bytes
    private: X25519PrivateKey | None = None

    @classmethod
    def generate(cls, name: str) -> PartyKey:
        key = X25519PrivateKey.generate()
        return cls(name, key.public_key().public_bytes_raw(), key)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.public).hexdigest()

    def public_only(self) -> PartyKey:
        return PartyKey(self.name, self.public)

    def private_pem(self, passphrase: str | None) -> bytes:
        enc = (serialization.BestAvailableEncryption(passphrase.encode()) if passphrase
               else serialization.NoEncryption())  # fmt: skip
        return self.private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)

    @classmethod
    def from_pem(cls, name: str, pem: bytes, passphrase: str | None) -> PartyKey:
        try:
            key = serialization.load_pem_private_key(pem, passphrase.encode() if passphrase else None)
        except (ValueError, TypeError) as exc:
            raise ShareError(f"cannot load the {name!r} party key: {exc} (wrong $PHARMAFL_KEY_PASSPHRASE?)") from None
        if not isinstance(key, X25519PrivateKey):
            raise ShareError(f"the {name!r} party key is a {type(key).__name__}, expected X25519")
        return cls(name, key.public_key().public_bytes_raw(), key)


def _aead_key(shared: bytes, eph_public: bytes, recipient: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=None, info=b"pharmafl-secagg/1" + eph_public + recipient).derive(shared)


def seal(plaintext: bytes, recipient: PartyKey, aad: bytes) -> tuple[bytes, bytes]:
    """(ephemeral public key, ciphertext) of ``plaintext`` for ``recipient`` only."""
    eph = X25519PrivateKey.generate()
    eph_public = eph.public_key().public_bytes_raw()
    key = _aead_key(eph.exchange(X25519PublicKey.from_public_bytes(recipient.public)), eph_public, recipient.public)
    return eph_public, ChaCha20Poly1305(key).encrypt(b"\0" * 12, plaintext, aad)  # fresh key per message


def unseal(ciphertext: bytes, eph_public: bytes, me: PartyKey, aad: bytes) -> bytes:
    key = _aead_key(me.private.exchange(X25519PublicKey.from_public_bytes(eph_public)), eph_public, me.public)
    try:
        return ChaCha20Poly1305(key).decrypt(b"\0" * 12, ciphertext, aad)
    except InvalidTag:
        raise ShareError(f"share for party {me.name!r} fails authentication: corrupted, truncated, or "
                         f"not encrypted to this party") from None  # fmt: skip


# ---------------------------------------------------------------- commitments and envelopes


def commitment(salt: bytes, update_hash: str) -> str:
    """Salted commitment to an update: hiding (random 32-byte salt), binding (SHA-256)."""
    return hashlib.sha256(b"pharmafl-commit/1\0" + salt + bytes.fromhex(update_hash)).hexdigest()


def aad(context: str, round: int, site: str, party: str) -> bytes:
    return f"{FORMAT}|{context}|{round}|{site}|{party}".encode()


@dataclass(frozen=True)
class Envelope:
    header: dict
    blobs: dict[str, bytes]  # party -> ciphertext

    @property
    def site(self) -> str:
        return self.header["site"]

    @property
    def round(self) -> int:
        return self.header["round"]

    @property
    def layout(self) -> list[tuple[str, tuple[int, ...]]]:
        return [(k, tuple(s)) for k, s in self.header["layout"]]

    def share_hashes(self) -> dict[str, str]:
        return {p: d["sha256"] for p, d in self.header["parties"].items()}


def layout_of(parts: Mapping[str, Mapping[str, np.ndarray]]) -> list[tuple[str, tuple[int, ...]]]:
    return [(f"{part}/{name}", tuple(np.shape(parts[part][name])))
            for part in sorted(parts) for name in sorted(parts[part])]  # fmt: skip


def flatten(parts: Mapping[str, Mapping[str, np.ndarray]]) -> np.ndarray:
    return np.concatenate([np.asarray(parts[k.split("/", 1)[0]][k.split("/", 1)[1]], np.float64).ravel()
                           for k, _ in layout_of(parts)])  # fmt: skip


def unflatten(vec: np.ndarray, layout: Sequence[tuple[str, tuple[int, ...]]]) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = {}
    at = 0
    for key, shape in layout:
        n = int(np.prod(shape, dtype=np.int64))
        part, name = key.split("/", 1)
        out.setdefault(part, {})[name] = vec[at : at + n].reshape(shape).astype(np.float32)
        at += n
    if at != vec.size:
        raise ShareError(f"vector of {vec.size} values does not fit the layout of {at}")
    return out


def seal_update(*, site: str, round: int, num_examples: int, parts, update_hash: str, salt: bytes,
                parties: Sequence[PartyKey], context: str) -> bytes:  # fmt: skip
    """The envelope bytes for one update (``parties[0]`` is the server)."""
    if not parties or parties[0].name != SERVER:
        raise ShareError(f"the first aggregation party must be {SERVER!r}, got {[p.name for p in parties]}")
    layout = layout_of(parts)
    s0, seeds = split(encode_fixed(flatten(parts)), helpers=len(parties) - 1)
    plain = {SERVER: s0.astype("<i8").tobytes(), **{p.name: seed for p, seed in zip(parties[1:], seeds)}}
    header = {"format": FORMAT, "site": site, "round": int(round), "num_examples": int(num_examples),
              "precision_bits": PRECISION_BITS, "layout": [[k, list(s)] for k, s in layout],
              "commitment": commitment(salt, update_hash), "context": context, "parties": {}}  # fmt: skip
    blobs = []
    offset = 0
    for p in parties:
        eph, ct = seal(plain[p.name], p, aad(context, round, site, p.name))
        header["parties"][p.name] = {"kind": "share" if p.name == SERVER else "seed", "ephemeral": eph.hex(),
                                     "offset": offset, "size": len(ct), "sha256": hashlib.sha256(ct).hexdigest(),
                                     "recipient": p.fingerprint}  # fmt: skip
        blobs.append(ct)
        offset += len(ct)
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return MAGIC + struct.pack("<Q", len(head)) + head + b"".join(blobs)


def parse_envelope(data: bytes) -> Envelope:
    """Header and ciphertexts of envelope bytes; any malformation is one :class:`ShareError`."""
    try:
        if not data.startswith(MAGIC):
            raise ShareError(f"not a {FORMAT} envelope (first bytes {data[:8]!r})")
        (n,) = struct.unpack("<Q", data[len(MAGIC) : len(MAGIC) + 8])
        start = len(MAGIC) + 8 + n
        header = json.loads(data[len(MAGIC) + 8 : start])
        if header.get("format") != FORMAT:
            raise ShareError(f"envelope format {header.get('format')!r}, expected {FORMAT!r}")
        blobs = {}
        for party, d in header["parties"].items():
            blob = data[start + d["offset"] : start + d["offset"] + d["size"]]
            if len(blob) != d["size"] or hashlib.sha256(blob).hexdigest() != d["sha256"]:
                raise ShareError(f"the ciphertext for party {party!r} is truncated or altered "
                                 f"({len(blob)} of {d['size']} bytes, hash mismatch)")  # fmt: skip
            blobs[party] = blob
        return Envelope(header, blobs)
    except ShareError:
        raise
    except (ValueError, KeyError, TypeError, struct.error) as exc:
        raise ShareError(f"envelope bytes are malformed: {type(exc).__name__}: {exc}") from None


def open_share(env: Envelope, me: PartyKey, length: int, *, context: str, round: int) -> np.ndarray:
    """This party's share (int64, ``length`` values) of the envelope's update, for the run
    ``context`` and ``round`` the party is aggregating (bound into the encryption: a share
    sealed for another run or round does not open)."""
    if env.header.get("context") != context or env.round != round:
        raise ShareError(f"envelope from {env.site} is for {env.header.get('context')!r} round {env.round}, "
                         f"expected {context!r} round {round}")  # fmt: skip
    d = env.header["parties"].get(me.name)
    if d is None or me.name not in env.blobs:
        raise ShareError(f"envelope from {env.site} holds nothing for party {me.name!r}")
    if d["recipient"] != me.fingerprint:
        raise ShareError(f"envelope from {env.site} was encrypted to key {d['recipient'][:16]}…, "
                         f"not party {me.name!r}'s key {me.fingerprint[:16]}…")  # fmt: skip
    plain = unseal(env.blobs[me.name], bytes.fromhex(d["ephemeral"]), me, aad(context, round, env.site, me.name))
    if d["kind"] == "seed":
        return expand_seed(plain, length)
    if len(plain) != 8 * length:
        raise ShareError(f"share from {env.site} holds {len(plain) // 8} values, expected {length}")
    return np.frombuffer(bytearray(plain), dtype="<i8")
