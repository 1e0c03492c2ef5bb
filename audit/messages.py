"""The one copy of canonical bytes and of every message pharmafl hashes or signs (stdlib only).

Every party imports this module: the coordinator's ledger writer, a site's home and its
witness, and the standalone verifier. Two copies of an encoder drift; one cannot.

**Canonical JSON** (:func:`canonical`) is `RFC 8785 <https://www.rfc-editor.org/rfc/rfc8785>`_
(JCS): members sorted by UTF-16 code units (§3.2.3), ECMAScript string escapes (§3.2.2.2)
and number forms (§3.2.2.3), no whitespace. What has no canonical form is refused with a
:class:`NotCanonical` (a ``ValueError``) naming the path, e.g.
``['metrics']['auc']: nan has no JSON form ...``: NaN and ±Infinity; integers beyond
±(2**53 - 1) unless their digits are exactly the nearest double's (I-JSON, RFC 7493 §2.2);
strings with lone surrogates (RFC 7493 §2.1); non-``str`` object keys; nesting deeper than
:data:`MAX_DEPTH`; anything but dict/Mapping, list, str, int, float, bool, None.

**Messages**, each with a domain-separating prefix so a signature over one kind is useless
as another (lowercase hex SHA-256 unless a C2SP format says base64):

=====================  ==========================================================================
entry                  ``pharmafl-ledger-entry-v1\\0`` || JCS({actor, payload, prev_hash, seq, ts, type})
checkpoint             ``pharmafl-ledger-checkpoint-v1\\0`` || JCS({root_hash, signer, tree_size, ts})
key proof              ``pharmafl-ledger-key-v1\\0`` || JCS({actor, public_key})
site card              ``pharmafl-site-card-v1\\0`` || JCS(card without "signature")
site statement         ``pharmafl-site-statement-v1\\0`` || JCS({payload_sha256, round, run_id, site, type})
party card             ``pharmafl-party-card-v1\\0`` || JCS(card without "signature")
party statement        ``pharmafl-party-statement-v1\\0`` || JCS({payload_sha256, round, run_id, site, type})
                       (``site`` holds the aggregation party's id)
roster                 SHA-256 of JCS(site cards); with aggregation parties, of JCS({parties, sites})
checkpoint body        C2SP tlog-checkpoint note text: ``<origin>\\n<size>\\n<base64 root>\\n``
cosignature            C2SP tlog-cosignature ``cosignature/v1``: ``cosignature/v1\\ntime <t>\\n`` || body
=====================  ==========================================================================

C2SP references: https://c2sp.org/tlog-checkpoint (body), https://c2sp.org/tlog-cosignature
(Ed25519 ``cosignature/v1``: key ID = SHA-256(name || "\\n" || 0x04 || public key)[:4];
``timestamped_signature`` = u64 big-endian POSIX time || 64-byte signature), and
https://c2sp.org/signed-note (signature line ``— <name> base64(key ID || signature)``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

MAX_DEPTH = 64
MAX_SAFE_INTEGER = 2**53 - 1
GENESIS = "0" * 64
ENTRY_DOMAIN = b"pharmafl-ledger-entry-v1\x00"
CHECKPOINT_DOMAIN = b"pharmafl-ledger-checkpoint-v1\x00"
KEY_PROOF_DOMAIN = b"pharmafl-ledger-key-v1\x00"
CARD_FORMAT = "pharmafl-site-card-v1"
CARD_DOMAIN = CARD_FORMAT.encode() + b"\x00"
STATEMENT_DOMAIN = b"pharmafl-site-statement-v1\x00"
PARTY_CARD_FORMAT = "pharmafl-party-card-v1"
PARTY_CARD_DOMAIN = PARTY_CARD_FORMAT.encode() + b"\x00"
PARTY_STATEMENT_DOMAIN = b"pharmafl-party-statement-v1\x00"
PARTY_STATEMENT_TYPES = frozenset({"party_registered", "party_round", "party_refused"})
# statements a signer may make more than once with one (type, round), each with another payload: a
# party refuses as often as it is asked, registers again in each session of a resumed run
REPEATABLE = frozenset({"party_refused", "party_registered"})
COSIGNATURE_HEADER = b"cosignature/v1\n"
CONSORTIUM_FORMAT = "pharmafl-consortium-v1"
BUNDLE_FORMAT = "pharmafl-ledger-bundle-v2"
KEYS_FORMAT = "pharmafl-ledger-keys-v1"
STATEMENT_TYPES = frozenset({"site_update", "clip", "privacy_spent", "site_declined", "secure_shares"})
Signer = Callable[[bytes], bytes]  # message -> 64-byte Ed25519 signature
ACTOR = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@#+-]{0,127}")  # server, site-03, user:alice
TS = re.compile(r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\d\.\d{6}Z")  # RFC 3339 UTC

_escape = json.encoder.encode_basestring  # exactly the escapes RFC 8785 §3.2.2.2 prescribes
_HEX = re.compile(r"[0-9a-f]*")


def is_hex(value: Any, length: int) -> bool:
    """``value`` is a str of ``length`` lowercase hex digits."""
    return type(value) is str and len(value) == length and _HEX.fullmatch(value) is not None


def _is(*types: type) -> Callable[[Any], bool]:
    return lambda v: type(v) in types


# The JSON records that cross a boundary: field -> what its value must be (see :func:`fits`).
CHECKPOINT_SHAPE = {
    "root_hash": lambda v: is_hex(v, 64),
    "signature": lambda v: is_hex(v, 128),
    "signer": lambda v: type(v) is str and ACTOR.fullmatch(v) is not None,
    "tree_size": lambda v: type(v) is int and v > 0,
    "ts": lambda v: type(v) is str and TS.fullmatch(v) is not None,
}
COSIGNATURE_SHAPE = {
    "signature": lambda v: is_hex(v, 128),
    "timestamp": lambda v: type(v) is int and 0 <= v < 2**63,
    "tree_size": lambda v: type(v) is int and v > 0,
    "witness": _is(str),
}
KEY_SHAPE = {
    "actor": CHECKPOINT_SHAPE["signer"],
    "algorithm": lambda v: v == "Ed25519",
    "fingerprint": lambda v: is_hex(v, 64),
    "proof": lambda v: is_hex(v, 128),
    "public_key": lambda v: is_hex(v, 64),
}  # a user's enrolment adds "enrolment": an object
STATEMENT_SHAPE = {
    "payload": _is(dict),
    "payload_sha256": lambda v: is_hex(v, 64),
    "round": _is(int, type(None)),
    "run_id": _is(str),
    "signature": lambda v: is_hex(v, 128),
    "site": _is(str),
    "type": _is(str),
}
STATEMENT_FIELDS = tuple(sorted(STATEMENT_SHAPE))


def fits(obj: Any, shape: Mapping[str, Callable[[Any], bool]]) -> bool:
    """``obj`` is a dict with exactly the fields of ``shape``, each value as the shape says."""
    return type(obj) is dict and obj.keys() == shape.keys() and all(ok(obj[k]) for k, ok in shape.items())


class NotCanonical(ValueError):
    """A value with no RFC 8785 form; ``path`` (e.g. ``['metrics']['auc']``) and ``reason``."""

    def __init__(self, reason: str, path: str = ""):
        super().__init__(f"{path}: {reason}" if path else reason)
        self.reason, self.path = reason, path


def canonical(value: Any) -> str:
    """The RFC 8785 text of a JSON value; :class:`NotCanonical` names what cannot be written."""
    return _encode(value, 0)


def sha256_hex(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def number(x: int | float) -> str:
    """ECMAScript ``Number.prototype.toString`` (RFC 8785 §3.2.2.3): the shortest round-trip
    digits :math:`d_1 \\ldots d_k \\times 10^{n-k}`, laid out by :math:`n` and :math:`k`."""
    if isinstance(x, int):
        if -MAX_SAFE_INTEGER <= x <= MAX_SAFE_INTEGER:
            return int.__repr__(x)
        if abs(x) >= 2**1024 or number(float(x)) != int.__repr__(x):
            shown = int.__repr__(x)[:40] if abs(x) < 2**1024 else f"of {x.bit_length()} bits"
            raise NotCanonical(
                f"integer {shown} would not read back unchanged: JSON numbers are IEEE-754 doubles, "
                "exact only within ±(2**53 - 1) (RFC 7493 §2.2); record it as a string"
            )
        return int.__repr__(x)
    if not math.isfinite(x):
        raise NotCanonical(
            f"{float.__repr__(x)} has no JSON form (RFC 8785 §3.2.2.3); record null or a string such as 'nan' instead"
        )
    if x == 0:
        return "0"
    mantissa, _, exp = float.__repr__(abs(x)).partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = whole + ("" if frac == "0" else frac)
    n, stripped = len(whole) + int(exp or 0), digits.lstrip("0")
    n, digits = n - (len(digits) - len(stripped)), stripped.rstrip("0")
    k, sign = len(digits), "-" if x < 0 else ""
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * -n + digits
    return f"{sign}{digits[0]}{'.' + digits[1:] if k > 1 else ''}e{'+' if n > 1 else '-'}{abs(n - 1)}"


def _string(s: str) -> str:
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError as err:
            raise NotCanonical(
                f"contains a lone surrogate {s[err.start]!r}; JSON text must be valid Unicode (RFC 7493 §2.1)"
            ) from None
    return _escape(s)


def _float(x: float) -> str:
    text = float.__repr__(x)  # between 1e-4 and 1e16 Python's shortest digits need no exponent, as ECMAScript's
    if "e" in text or "n" in text or x == 0:
        return number(x)
    return text[:-2] if text.endswith(".0") else text


def _encode(value: Any, depth: int, where: bool = True) -> str:
    """One value; the path of a refusal is found while the error unwinds (``where``), at no cost otherwise."""
    t = type(value)
    if t is str:
        return _escape(value) if value.isascii() else _string(value)
    if t is int:
        return int.__repr__(value) if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER else number(value)
    if t is float:
        return _float(value)
    if value is None or t is bool:
        return "null" if value is None else "true" if value else "false"
    if isinstance(value, (Mapping, list)) and depth >= MAX_DEPTH:
        raise NotCanonical(f"nested deeper than {MAX_DEPTH} levels; flatten it")
    if isinstance(value, list):
        try:
            return "[" + ",".join([_encode(item, depth + 1, where) for item in value]) + "]"
        except NotCanonical as err:
            if not where:
                raise
            i = next(i for i, item in enumerate(value) if _refuses(item, depth + 1))
            raise NotCanonical(err.reason, f"[{i}]{err.path}") from None
    if isinstance(value, Mapping):
        try:
            names = sorted(value)
            ascii_names = "".join(names).isascii()  # and a TypeError unless every name is a str
        except TypeError:
            name = next(name for name in value if not isinstance(name, str))
            raise NotCanonical(
                f"object key {name!r:.40} is a {type(name).__name__}; JSON object keys must be str "
                "(convert it with str(...) in the producing code)"
            ) from None
        if not ascii_names:
            names.sort(key=lambda s: s.encode("utf-16-be", "surrogatepass"))  # RFC 8785 §3.2.3: UTF-16 order
        key = _escape if ascii_names else _string
        try:
            return "{" + ",".join([key(name) + ":" + _encode(value[name], depth + 1, where) for name in names]) + "}"
        except NotCanonical as err:
            if not where:
                raise
            name = next(name for name in names if _refuses(name, 0) or _refuses(value[name], depth + 1))
            raise NotCanonical(err.reason, f"[{name!r}]{err.path}") from None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return number(value)
    hint = "a list" if isinstance(value, (tuple, set, frozenset)) else "str, int, float, bool or None"
    kind = f"{t.__module__}.{t.__qualname__}".removeprefix("builtins.")
    raise NotCanonical(f"{kind} {value!r:.60} is not a JSON value; convert it to {hint} before recording it")


def _refuses(value: Any, depth: int) -> bool:
    try:
        _encode(value, depth, where=False)
        return False
    except NotCanonical:
        return True


# -- the coordinator's ledger ----------------------------------------------------------------


def entry_message(seq: int, ts: str, actor: str, type_: str, payload: str, prev_hash: str) -> bytes:
    """What ``entry_hash`` hashes; ``payload`` is already canonical text, the names are ASCII."""
    return (
        ENTRY_DOMAIN
        + (
            f'{{"actor":{_escape(actor)},"payload":{payload},"prev_hash":{_escape(prev_hash)},'
            f'"seq":{seq},"ts":{_escape(ts)},"type":{_escape(type_)}}}'
        ).encode()
    )


def entry_line(
    seq: int, ts: str, actor: str, type_: str, payload: str, prev_hash: str, entry_hash: str, signature: str
) -> str:
    """An entry's canonical JSON line in a bundle's ``entries.jsonl`` (payload embedded as an object)."""
    return (
        f'{{"actor":{_escape(actor)},"entry_hash":{_escape(entry_hash)},"payload":{payload},'
        f'"prev_hash":{_escape(prev_hash)},"seq":{seq},"signature":{_escape(signature)},"ts":{_escape(ts)},'
        f'"type":{_escape(type_)}}}'
    )


def checkpoint_message(tree_size: int, root_hash: str, ts: str, signer: str) -> bytes:
    """What the coordinator's checkpoint signature covers."""
    return (
        CHECKPOINT_DOMAIN
        + (
            f'{{"root_hash":{_escape(root_hash)},"signer":{_escape(signer)},"tree_size":{tree_size},"ts":{_escape(ts)}}}'
        ).encode()
    )


def key_proof_message(actor: str, public_key_hex: str) -> bytes:
    """What a new key signs to prove its holder registered it (proof of possession)."""
    return KEY_PROOF_DOMAIN + f'{{"actor":{_escape(actor)},"public_key":{_escape(public_key_hex)}}}'.encode()


# -- what a site signs ------------------------------------------------------------------------


def card_message(card: Mapping[str, Any]) -> bytes:
    """What a site card's self-signature covers: the card without ``signature``."""
    return CARD_DOMAIN + canonical({k: v for k, v in card.items() if k != "signature"}).encode()


def statement_message(run_id: str, round: int | None, site: str, type_: str, payload_sha256: str) -> bytes:
    """What a site's (or, for the party statement types, an aggregation party's) statement
    signature covers, independent of ledger position."""
    fields = {"payload_sha256": payload_sha256, "round": round, "run_id": run_id, "site": site, "type": type_}
    domain = PARTY_STATEMENT_DOMAIN if type_ in PARTY_STATEMENT_TYPES else STATEMENT_DOMAIN
    return domain + canonical(fields).encode()


def party_card_message(card: Mapping[str, Any]) -> bytes:
    """What an aggregation party card's self-signature covers: the card without ``signature``."""
    return PARTY_CARD_DOMAIN + canonical({k: v for k, v in card.items() if k != "signature"}).encode()


def roster_sha256(cards: Mapping[str, Any], parties: Mapping[str, Any] | None = None) -> str:
    """What a consortium pins: SHA-256 of JCS(site cards), or with aggregation parties of
    JCS({"parties": party cards, "sites": site cards})."""
    return sha256_hex(canonical({"parties": parties, "sites": cards} if parties else cards))


def make_card(sign: Signer, fields: Mapping[str, Any]) -> dict:
    """``fields`` (with ``public_key`` hex) as a signed card; ``format`` and ``fingerprint`` filled in."""
    card = {**fields, "format": CARD_FORMAT, "fingerprint": sha256_hex(bytes.fromhex(fields["public_key"]))}
    card.pop("signature", None)
    return {**card, "signature": sign(card_message(card)).hex()}


def make_statement(
    sign: Signer, *, run_id: str, round: int | None, site: str, type: str, payload: Mapping[str, Any]
) -> dict:
    """A site statement over ``payload``, signed with ``sign`` (the site's key)."""
    digest = sha256_hex(canonical(payload))
    signature = sign(statement_message(run_id, round, site, type, digest)).hex()
    return {
        "payload": dict(payload),
        "payload_sha256": digest,
        "round": round,
        "run_id": run_id,
        "signature": signature,
        "site": site,
        "type": type,
    }


# -- C2SP checkpoints and cosignatures ------------------------------------------------------


def origin_of(run_id: str) -> str:
    """The C2SP log origin of a run's ledger."""
    return f"pharmafl/{run_id}"


def checkpoint_body(origin: str, tree_size: int, root_hex: str) -> bytes:
    """C2SP tlog-checkpoint note text: origin, decimal size, standard base64 root, each + ``\\n``."""
    return f"{origin}\n{tree_size}\n{base64.b64encode(bytes.fromhex(root_hex)).decode()}\n".encode()


def cosignature_message(body: bytes, timestamp: int) -> bytes:
    """C2SP ``cosignature/v1`` signed message: header line, ``time <t>`` line, the note body."""
    return COSIGNATURE_HEADER + b"time %d\n" % timestamp + body


def cosignature_key_id(name: str, public_key_raw: bytes) -> bytes:
    """C2SP Ed25519 cosigner key ID: SHA-256(name || "\\n" || 0x04 || public key)[:4]."""
    return hashlib.sha256(name.encode() + b"\n\x04" + public_key_raw).digest()[:4]


def cosignature_line(name: str, key_id: bytes, timestamp: int, signature: bytes) -> str:
    """The signed-note line ``— <name> base64(key ID || u64 BE timestamp || signature)\\n``."""
    return f"\u2014 {name} {base64.b64encode(key_id + timestamp.to_bytes(8, 'big') + signature).decode()}\n"


# -- an exported bundle -----------------------------------------------------------------------


def keys_document(keys: Mapping[str, tuple[str, int]]) -> dict:
    """``keys.json`` of a bundle from ``{actor: (public key hex, registration seq)}``."""
    return {
        "format": KEYS_FORMAT,
        "keys": {
            actor: {
                "algorithm": "Ed25519",
                "fingerprint": sha256_hex(bytes.fromhex(pk)),
                "public_key": pk,
                "registered_seq": seq,
            }
            for actor, (pk, seq) in keys.items()
        },
    }


def bundle_manifest(entries: int, checkpoints: int, cosignatures: int, root_hex: str, files: Mapping[str, str]) -> dict:
    """``manifest.json`` of a bundle: counts, the Merkle root of all entries, ``{file: sha256}``."""
    return {
        "checkpoints": checkpoints,
        "cosignatures": cosignatures,
        "entries": entries,
        "files": dict(files),
        "format": BUNDLE_FORMAT,
        "root_hash": root_hex,
    }


def file_sha256(path: Any) -> str:
    """SHA-256 of a file's bytes, read in blocks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
