"""A site's update as additive secret shares in CrypTen's ring, encrypted to each party with HPKE.

The math (CrypTen's arithmetic sharing, https://arxiv.org/abs/2109.00984, sec. 3): the
update vector :math:`x \\in \\mathbb{R}^P` is encoded in fixed point in the ring
:math:`\\mathbb{Z}_{2^{64}}`, :math:`\\bar x = \\mathrm{round}(2^{16} x)`, and split among the
aggregation parties :math:`0..h` as

.. math::
    \\bar x = \\sum_{j=0}^{h} s_j \\bmod 2^{64}, \\qquad
    s_j = \\mathrm{ChaCha20}(k_j)\\ (j \\ge 1), \\qquad s_0 = \\bar x - \\sum_{j \\ge 1} s_j

with each seed :math:`k_j` 32 bytes from ``os.urandom``. Helper :math:`j` receives only its
seed and expands it; party 0 (the server's party) receives :math:`s_0`, a uniformly
distributed ring element whatever :math:`x` is.

Each piece :math:`m_j = r_j \\| \\mathrm{body}_j` (a fresh 32-byte salt, then the share or the
seed) is sealed to its recipient with HPKE (RFC 9180, base mode,
DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / ChaCha20-Poly1305) whose ``info`` names the run
context, round, site and party: a piece replayed into another run, round, site or party
does not open. The header commits to each piece, :math:`c_j = H(\\texttt{tag} \\| info_j \\| m_j)`
(hiding: the salt), which the recipient checks after opening, and the envelope's commitment
binds the update to its pieces:

.. math::
    C = H(\\texttt{tag} \\| salt \\| H(update) \\| c_0 \\| \\dots \\| c_h)

so a site that later reveals ``salt``, the update, the seeds and the salts proves both what
it trained and what the parties summed (:func:`commitment`, ``pharmafl ledger prove-update``).

What leaves the site is an *envelope*: the header (canonical JSON: site, round, run context,
example count, parameter layout, :math:`C`, and per party the ciphertext's SHA-256, its
recipient's key fingerprint and :math:`c_j`) followed by the ciphertexts. The site signs
the header's hash in its ``secure_shares`` statement; a party checks that signature before
it opens anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from pharmafl.errors import RefusedError

FORMAT = "pharmafl-secagg/2"
MAGIC = b"PFLSA2\n"
PRECISION_BITS = 16  # CrypTen's default fixed-point precision
MAX_ABS = float(2**40)  # |x| beyond this cannot be summed over many sites without leaving the ring
MAX_HEADER = 1 << 24  # bytes: a header larger than this is refused before it is parsed
SERVER_ROLE = "server"  # the party whose share is the vector (rank 0, it receives the sum)
SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
SHARE_TAG = b"pharmafl-share/2\0"
COMMIT_TAG = b"pharmafl-commit/2\0"
SALT = 32
_HEX = re.compile(r"[0-9a-f]+")


class ShareError(RefusedError):
    """An envelope or a share is malformed, or cannot be opened by its recipient."""


# ---------------------------------------------------------------- fixed point and shares


def encode_fixed(x: np.ndarray, precision_bits: int = PRECISION_BITS) -> np.ndarray:
    """:math:`\\mathrm{round}(2^{b} x)` as int64; refuses non-finite or out-of-range values."""
    x = np.asarray(x, dtype=np.float64)
    bad = ~np.isfinite(x) | (np.abs(x) > MAX_ABS)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ShareError(
            f"update value {x[i]!r} at position {i} is not finite or exceeds ±{MAX_ABS:.3g}: it "
            f"cannot be fixed-point encoded; check the site's training (divergence?)"
        )
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
        raise ShareError(f"secure aggregation needs at least one helper party besides the server's, got {helpers}")
    seeds = [os.urandom(32) for _ in range(helpers)]
    return server_share(x_enc, seeds), seeds


def server_share(x_enc: np.ndarray, seeds: Sequence[bytes]) -> np.ndarray:
    """:math:`s_0 = \\bar x - \\sum_j \\mathrm{expand}(k_j)` in the ring."""
    s0 = np.array(x_enc, dtype=np.int64, copy=True)
    with np.errstate(over="ignore"):
        for seed in seeds:
            s0 -= expand_seed(seed, s0.size)  # wraps modulo 2^64, as the ring does
    return s0


# ---------------------------------------------------------------- keys and encryption


@dataclass(frozen=True)
class PartyKey:
    """An aggregation party's X25519 HPKE key pair (private part only at the party)."""

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
        enc = serialization.BestAvailableEncryption(passphrase.encode()) if passphrase else serialization.NoEncryption()
        return self.private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)

    @classmethod
    def from_pem(cls, name: str, pem: bytes, passphrase: str | None) -> PartyKey:
        try:
            key = serialization.load_pem_private_key(pem, passphrase.encode() if passphrase else None)
        except (ValueError, TypeError) as exc:
            raise ShareError(f"cannot load the {name!r} party key: {exc} (wrong passphrase?)") from None
        if not isinstance(key, X25519PrivateKey):
            raise ShareError(f"the {name!r} party key is a {type(key).__name__}, expected X25519")
        return cls(name, key.public_key().public_bytes_raw(), key)


def info(context: str, round: int, site: str, party: str) -> bytes:
    """HPKE ``info`` (and commitment context) of one piece: run context, round, site, party."""
    return f"{FORMAT}|{context}|{round}|{site}|{party}".encode()


def seal(plaintext: bytes, recipient: PartyKey, info_: bytes) -> bytes:
    """HPKE base-mode ciphertext (``enc || ct``) of ``plaintext`` for ``recipient`` only."""
    return SUITE.encrypt(plaintext, X25519PublicKey.from_public_bytes(recipient.public), info=info_)


def unseal(ciphertext: bytes, me: PartyKey, info_: bytes) -> bytes:
    try:
        return SUITE.decrypt(ciphertext, me.private, info=info_)
    except Exception:  # InvalidTag, or a malformed / low-order encapsulated key (ValueError)
        raise ShareError(
            f"share for party {me.name!r} does not open: corrupted, truncated, encrypted to another "
            f"key, or sealed for another run, round or site"
        ) from None


def piece_commitment(info_: bytes, plaintext: bytes) -> str:
    """:math:`c_j`: the hiding commitment to one piece (its salt is the first 32 bytes)."""
    return hashlib.sha256(SHARE_TAG + struct.pack("<I", len(info_)) + info_ + plaintext).hexdigest()


# ---------------------------------------------------------------- commitments and envelopes


def commitment(salt: bytes, update_hash: str, pieces: Mapping[str, str]) -> str:
    """:math:`C`: binds the update (its SHA-256) to every party's piece commitment, hidden by ``salt``."""
    body = b"".join(p.encode() + b"\0" + bytes.fromhex(pieces[p]) for p in sorted(pieces))
    return hashlib.sha256(COMMIT_TAG + salt + bytes.fromhex(update_hash) + body).hexdigest()


@dataclass(frozen=True)
class Envelope:
    header: dict
    blobs: dict[str, bytes]  # party -> ciphertext
    header_bytes: bytes = b""  # exactly as sent: the site signs their hash

    @property
    def site(self) -> str:
        return self.header["site"]

    @property
    def round(self) -> int:
        return self.header["round"]

    @property
    def layout(self) -> list[tuple[str, tuple[int, ...]]]:
        return [(k, tuple(s)) for k, s in self.header["layout"]]

    @property
    def header_sha256(self) -> str:
        return hashlib.sha256(self.header_bytes).hexdigest()

    def share_hashes(self) -> dict[str, str]:
        return {p: d["sha256"] for p, d in self.header["parties"].items()}


def layout_of(parts: Mapping[str, Mapping[str, np.ndarray]]) -> list[tuple[str, tuple[int, ...]]]:
    return [
        (f"{part}/{name}", tuple(np.shape(parts[part][name]))) for part in sorted(parts) for name in sorted(parts[part])
    ]


def flatten(parts: Mapping[str, Mapping[str, np.ndarray]]) -> np.ndarray:
    return np.concatenate(
        [np.asarray(parts[k.split("/", 1)[0]][k.split("/", 1)[1]], np.float64).ravel() for k, _ in layout_of(parts)]
    )


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


@dataclass(frozen=True)
class Sealed:
    """An envelope and what the site keeps to open its commitment later."""

    envelope: bytes
    opening: dict  # salt, the helpers' seeds and every piece's salt (hex), the commitment


def seal_update(
    *, site: str, round: int, num_examples: int, parts, update_hash: str, parties: Sequence[PartyKey], context: str
) -> Sealed:
    """The envelope of one update; ``parties[0]`` is the server's party (it gets the vector share)."""
    if len(parties) < 2:
        raise ShareError(
            f"secure aggregation needs the server's party and at least one helper, got {[p.name for p in parties]}"
        )
    layout = layout_of(parts)
    s0, seeds = split(encode_fixed(flatten(parts)), helpers=len(parties) - 1)
    bodies = {parties[0].name: s0.astype("<i8").tobytes(), **{p.name: k for p, k in zip(parties[1:], seeds)}}
    salt, entries, blobs, pieces, salts, offset = os.urandom(SALT), {}, [], {}, {}, 0
    for rank, p in enumerate(parties):
        salts[p.name] = os.urandom(SALT)
        plain, info_ = salts[p.name] + bodies[p.name], info(context, round, site, p.name)
        pieces[p.name] = piece_commitment(info_, plain)
        ct = seal(plain, p, info_)
        entries[p.name] = {
            "kind": "share" if rank == 0 else "seed",
            "offset": offset,
            "size": len(ct),
            "sha256": hashlib.sha256(ct).hexdigest(),
            "recipient": p.fingerprint,
            "piece": pieces[p.name],
        }
        blobs.append(ct)
        offset += len(ct)
    header = {
        "format": FORMAT,
        "site": site,
        "round": int(round),
        "num_examples": int(num_examples),
        "precision_bits": PRECISION_BITS,
        "layout": [[k, list(s)] for k, s in layout],
        "commitment": commitment(salt, update_hash, pieces),
        "context": context,
        "parties": entries,
    }
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    opening = {
        "salt": salt.hex(),
        "seeds": {p.name: k.hex() for p, k in zip(parties[1:], seeds)},
        "piece_salts": {k: v.hex() for k, v in salts.items()},
        "server_party": parties[0].name,
        "context": context,
        "commitment": header["commitment"],
    }
    return Sealed(MAGIC + struct.pack("<Q", len(head)) + head + b"".join(blobs), opening)


def open_commitment(opening: Mapping, update_payload_hash: str, x_enc: np.ndarray, *, site: str, round: int) -> str:
    """Recompute :math:`C` from what a site kept: the pieces follow from the update and the seeds."""
    seeds = {p: bytes.fromhex(k) for p, k in opening["seeds"].items()}
    bodies = {opening["server_party"]: server_share(x_enc, list(seeds.values())).astype("<i8").tobytes(), **seeds}
    pieces = {
        p: piece_commitment(info(opening["context"], round, site, p), bytes.fromhex(opening["piece_salts"][p]) + body)
        for p, body in bodies.items()
    }
    return commitment(bytes.fromhex(opening["salt"]), update_payload_hash, pieces)


def _hex(v, n: int) -> bool:
    return type(v) is str and len(v) == n and bool(_HEX.fullmatch(v))


def check_header(header, *, where: str = "envelope") -> dict:
    """``header`` if every field has its type and form, else one :class:`ShareError`."""
    want = ["commitment", "context", "format", "layout", "num_examples", "parties", "precision_bits", "round", "site"]
    if type(header) is not dict or sorted(header) != want:
        raise ShareError(
            f"{where}: header fields {sorted(header) if type(header) is dict else type(header).__name__}"
            f", expected exactly {want}"
        )
    if header["format"] != FORMAT or header["precision_bits"] != PRECISION_BITS:
        raise ShareError(
            f"{where}: format {header['format']!r} / precision {header['precision_bits']!r}, expected "
            f"{FORMAT!r} / {PRECISION_BITS}"
        )
    ok = (
        type(header["site"]) is str
        and type(header["context"]) is str
        and type(header["round"]) is int
        and type(header["num_examples"]) is int
        and _hex(header["commitment"], 64)
        and type(header["layout"]) is list
        and type(header["parties"]) is dict
        and header["parties"]
    )
    ok = ok and all(
        type(e) is list
        and len(e) == 2
        and type(e[0]) is str
        and type(e[1]) is list
        and all(type(d) is int and 0 <= d < 2**31 for d in e[1])
        for e in header["layout"]
    )
    fields = ["kind", "offset", "piece", "recipient", "sha256", "size"]
    for party, d in header["parties"].items() if ok else ():
        ok = (
            type(party) is str
            and type(d) is dict
            and sorted(d) == fields
            and d["kind"] in ("share", "seed")
            and type(d["offset"]) is int
            and type(d["size"]) is int
            and 0 <= d["offset"]
            and 0 < d["size"] < 2**40
            and all(_hex(d[k], 64) for k in ("piece", "recipient", "sha256"))
        )
        if not ok:
            raise ShareError(
                f"{where}: the header's entry for party {party!r} is malformed (fields {fields}: kind "
                f"share|seed, offset/size integers, piece/recipient/sha256 64 lowercase hex)"
            )
    if not ok:
        raise ShareError(
            f"{where}: a header field has the wrong type (site/context text, round/num_examples "
            f"integers, commitment hex, layout [[name, [dims]]], parties a non-empty map)"
        )
    return header


def parse_envelope(data: bytes) -> Envelope:
    """Header and ciphertexts of envelope bytes; any malformation is one :class:`ShareError`."""
    if type(data) is not bytes or not data.startswith(MAGIC) or len(data) < len(MAGIC) + 8:
        raise ShareError(
            f"not a {FORMAT} envelope (first bytes {bytes(data[:8]) if isinstance(data, bytes) else data!r})"
        )
    (n,) = struct.unpack("<Q", data[len(MAGIC) : len(MAGIC) + 8])
    if n > MAX_HEADER or len(MAGIC) + 8 + n > len(data):
        raise ShareError(f"envelope header claims {n} bytes, the envelope holds {len(data) - len(MAGIC) - 8}")
    start = len(MAGIC) + 8 + n
    head = data[len(MAGIC) + 8 : start]
    header = parse_header(head)
    blobs = {}
    for party, d in header["parties"].items():
        blob = data[start + d["offset"] : start + d["offset"] + d["size"]]
        if len(blob) != d["size"] or hashlib.sha256(blob).hexdigest() != d["sha256"]:
            raise ShareError(
                f"the ciphertext for party {party!r} is truncated or altered "
                f"({len(blob)} of {d['size']} bytes, hash mismatch)"
            )
        blobs[party] = blob
    return Envelope(header, blobs, head)


def parse_header(head: bytes, where: str = "envelope") -> dict:
    """The checked header of its exact bytes."""
    try:
        header = json.loads(head)
    except (ValueError, RecursionError) as exc:
        raise ShareError(f"{where}: header is not JSON: {exc}") from None
    return check_header(header, where=where)


def open_share(env: Envelope, me: PartyKey, length: int, *, context: str, round: int) -> np.ndarray:
    """This party's share (int64, ``length`` values) of the envelope's update, for the run
    ``context`` and ``round`` the party is aggregating (bound into the encryption: a share
    sealed for another run, round or site does not open); its piece commitment is checked."""
    if env.header.get("context") != context or env.round != round:
        raise ShareError(
            f"envelope from {env.site} is for {env.header.get('context')!r} round {env.round}, "
            f"expected {context!r} round {round}"
        )
    d = env.header["parties"].get(me.name)
    if d is None or me.name not in env.blobs:
        raise ShareError(f"envelope from {env.site} holds nothing for party {me.name!r}")
    if d["recipient"] != me.fingerprint:
        raise ShareError(
            f"envelope from {env.site} was encrypted to key {d['recipient'][:16]}…, "
            f"not party {me.name!r}'s key {me.fingerprint[:16]}…"
        )
    blob = env.blobs[me.name]
    if hashlib.sha256(blob).hexdigest() != d["sha256"]:
        raise ShareError(f"the ciphertext from {env.site} for {me.name!r} does not match its header hash")
    info_ = info(context, round, env.site, me.name)
    plain = unseal(blob, me, info_)
    if piece_commitment(info_, plain) != d["piece"]:
        raise ShareError(
            f"the share from {env.site} opens, but not to the piece its header commits to: the site "
            f"committed to something else than it sent"
        )
    body = plain[SALT:]
    if d["kind"] == "seed":
        return expand_seed(body, length)
    if len(body) != 8 * length:
        raise ShareError(f"share from {env.site} holds {len(body) // 8} values, expected {length}")
    return np.frombuffer(bytearray(body), dtype="<i8")
