"""What the ledger stores: entries, checkpoints, and the exact bytes hashed and signed.

An **entry** is ``(seq, ts, actor, type, payload, prev_hash, entry_hash, signature)``:

* ``seq``: 0, 1, 2, ... without gaps; ``ts``: UTC, RFC 3339 with microseconds and ``Z``
  (``2025-03-01T12:00:00.000123Z``), never decreasing;
* ``actor``: who acts (``server``, ``site-03``, ``user:alice``); ``type``: an identifier
  (``round_started``, ``privacy_spent``, ``e_signature``...); the set is open;
* ``payload``: RFC 8785 canonical JSON text of an object (:mod:`.canonical`);
* ``prev_hash``: the previous ``entry_hash`` (64 zeros for seq 0);
* ``entry_hash`` = SHA-256(``b"pharmafl-ledger-entry-v1\\x00"`` || JCS({actor, payload,
  prev_hash, seq, ts, type})), lowercase hex;
* ``signature``: the actor's Ed25519 signature (RFC 8032) over the 32 raw bytes of
  ``entry_hash``, lowercase hex.

The Merkle leaf of an entry is ``entry_hash || signature`` (raw bytes), so a signed tree
head commits to the signatures too.

A **checkpoint** (signed tree head) is ``(tree_size, root_hash, ts, signer, signature)``
with the signature over ``b"pharmafl-ledger-checkpoint-v1\\x00"`` || JCS({root_hash,
signer, tree_size, ts}).

An **actor_key** entry registers a public key before the actor's first entry. Its payload
is ``{actor, algorithm: "Ed25519", public_key, fingerprint, proof}``: ``fingerprint`` =
SHA-256(raw public key), ``proof`` = the new key's signature over
``b"pharmafl-ledger-key-v1\\x00"`` || JCS({actor, public_key}) (proof of possession). Entry 0
is the registrar registering itself; every later ``actor_key`` entry is written and signed
by the registrar, and an actor is registered at most once.

The separating prefixes (domain separation) make a signature over one kind of message
useless as a signature over another.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pharmafl.audit.errors import LedgerError
from pharmafl.audit.merkle import leaf_hash

ENTRY_DOMAIN = b"pharmafl-ledger-entry-v1\x00"
CHECKPOINT_DOMAIN = b"pharmafl-ledger-checkpoint-v1\x00"
KEY_PROOF_DOMAIN = b"pharmafl-ledger-key-v1\x00"
GENESIS_PREV_HASH = "0" * 64
ACTOR_KEY = "actor_key"
ALGORITHM = "Ed25519"

_ACTOR = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@#+-]{0,127}")
_escape = json.encoder.encode_basestring


def check_actor(actor: Any) -> str:
    """Refuse an actor id that is not 1-128 characters of ``[A-Za-z0-9._:@#+-]``."""
    if not isinstance(actor, str) or not _ACTOR.fullmatch(actor):
        raise LedgerError(
            f"actor id {actor!r} is not valid: use 1-128 characters from letters, digits and "
            "'._:@#+-', starting with a letter or digit (e.g. 'server', 'site-03', 'user:alice')"
        )
    return actor


def check_type(type_: Any) -> str:
    """Refuse an event type that is not a non-empty ASCII identifier."""
    if not isinstance(type_, str) or not (type_.isascii() and type_.isidentifier()):
        raise LedgerError(
            f"event type {type_!r} is not valid: use a non-empty ASCII identifier such as "
            "'round_started' or 'e_signature'"
        )
    return type_


def format_ts(moment: datetime) -> str:
    """RFC 3339 UTC with microseconds: ``2025-03-01T12:00:00.000123Z``."""
    if moment.tzinfo is None:
        raise LedgerError(
            f"timestamp {moment!r} has no time zone; the ledger clock must return aware "
            "datetimes, e.g. datetime.now(timezone.utc)"
        )
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def fingerprint(public_key: bytes) -> str:
    """SHA-256 of the raw 32-byte Ed25519 public key, lowercase hex."""
    return hashlib.sha256(public_key).hexdigest()


def entry_message(seq: int, ts: str, actor: str, type_: str, payload: str, prev_hash: str) -> bytes:
    """The domain-separated canonical bytes an ``entry_hash`` is computed over.

    ``payload`` is already canonical JSON text, so the outer object is assembled directly;
    its members are in RFC 8785 order (the names are ASCII).
    """
    body = (
        f'{{"actor":{_escape(actor)},"payload":{payload},"prev_hash":{_escape(prev_hash)},'
        f'"seq":{seq},"ts":{_escape(ts)},"type":{_escape(type_)}}}'
    )
    return ENTRY_DOMAIN + body.encode("utf-8")


def checkpoint_message(tree_size: int, root_hash: str, ts: str, signer: str) -> bytes:
    """The domain-separated canonical bytes a checkpoint signature covers."""
    body = (
        f'{{"root_hash":{_escape(root_hash)},"signer":{_escape(signer)},'
        f'"tree_size":{tree_size},"ts":{_escape(ts)}}}'
    )
    return CHECKPOINT_DOMAIN + body.encode("utf-8")


def key_proof_message(actor: str, public_key_hex: str) -> bytes:
    """The bytes a new key signs to prove its holder registered it."""
    return KEY_PROOF_DOMAIN + f'{{"actor":{_escape(actor)},"public_key":{_escape(public_key_hex)}}}'.encode()


@dataclass(frozen=True)
class Entry:
    """One ledger entry exactly as stored; ``payload`` is canonical JSON text."""

    seq: int
    ts: str
    actor: str
    type: str
    payload: str
    prev_hash: str
    entry_hash: str
    signature: str

    @property
    def data(self) -> dict[str, Any]:
        """The payload, parsed."""
        return json.loads(self.payload)

    def leaf_hash(self) -> bytes:
        """RFC 9162 leaf hash of ``entry_hash || signature``."""
        return leaf_hash(bytes.fromhex(self.entry_hash) + bytes.fromhex(self.signature))

    def to_json_line(self) -> str:
        """The canonical JSONL form used in exports (payload embedded as an object)."""
        return (
            f'{{"actor":{_escape(self.actor)},"entry_hash":"{self.entry_hash}",'
            f'"payload":{self.payload},"prev_hash":"{self.prev_hash}","seq":{self.seq},'
            f'"signature":"{self.signature}","ts":"{self.ts}","type":{_escape(self.type)}}}'
        )


@dataclass(frozen=True)
class Checkpoint:
    """A signed tree head over the first ``tree_size`` entries."""

    tree_size: int
    root_hash: str
    ts: str
    signer: str
    signature: str

    def to_json_line(self) -> str:
        """Canonical JSON; also the format of a ``--trusted-head`` file."""
        return (
            f'{{"root_hash":"{self.root_hash}","signature":"{self.signature}",'
            f'"signer":{_escape(self.signer)},"tree_size":{self.tree_size},"ts":"{self.ts}"}}'
        )
