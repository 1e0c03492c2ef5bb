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
by the registrar, and an actor is registered at most once, except a ``user:*`` key: the
user enrols it herself (her own ``actor_key`` entry, signed by the new key, with an extra
``enrolment`` object); the registrar may never register a user.

A **site statement** (``site_update``, ``clip``, ``privacy_spent``, ``site_declined``,
``secure_shares``) is signed at the site and embedded verbatim as ``payload["statement"]``
of the coordinator's entry; :func:`asserted` says who asserts what. A **cosignature** is a
site witness's C2SP ``cosignature/v1`` of a checkpoint (:class:`Cosignature`).

Every message is built in :mod:`pharmafl.audit.messages` (re-exported here), the one copy
the writer, the sites and the verifier share; the separating prefixes (domain separation)
make a signature over one kind of message useless as a signature over another.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pharmafl.audit.errors import LedgerError
from pharmafl.audit.merkle import leaf_hash
from pharmafl.audit.messages import (  # noqa: F401 - re-exported: the one copy of every message
    ACTOR as _ACTOR,
    CHECKPOINT_DOMAIN,
    ENTRY_DOMAIN,
    GENESIS,
    KEY_PROOF_DOMAIN,
    STATEMENT_TYPES,
    card_message,
    checkpoint_body,
    checkpoint_message,
    cosignature_key_id,
    cosignature_line,
    cosignature_message,
    entry_line,
    entry_message,
    key_proof_message,
    make_card,
    make_statement,
    origin_of,
    statement_message,
)

GENESIS_PREV_HASH = GENESIS
ACTOR_KEY = "actor_key"
ALGORITHM = "Ed25519"

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
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def fingerprint(public_key: bytes) -> str:
    """SHA-256 of the raw 32-byte Ed25519 public key, lowercase hex."""
    return hashlib.sha256(public_key).hexdigest()


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
        return entry_line(
            self.seq, self.ts, self.actor, self.type, self.payload, self.prev_hash, self.entry_hash, self.signature
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


@dataclass(frozen=True)
class Cosignature:
    """A witness's C2SP ``cosignature/v1`` of the checkpoint of ``tree_size``.

    ``witness`` is the site id (the cosigner name), ``timestamp`` the POSIX time it signed
    at, ``signature`` the hex of the 64-byte Ed25519 signature over
    ``cosignature_message(checkpoint_body(origin_of(run_id), tree_size, root), timestamp)``.
    """

    tree_size: int
    witness: str
    timestamp: int
    signature: str

    def to_json_line(self) -> str:
        """Canonical JSON, one line of a bundle's ``cosignatures.jsonl``."""
        return (
            f'{{"signature":"{self.signature}","timestamp":{self.timestamp},'
            f'"tree_size":{self.tree_size},"witness":{_escape(self.witness)}}}'
        )


def asserted(entry: Entry) -> tuple[str, dict[str, Any]]:
    """Who asserts what in ``entry``: ``(site, fields)`` for an embedded site statement
    (its round and signed payload, then the coordinator's own fields), else
    ``(entry.actor, entry.data)``."""
    data = entry.data
    statement = data.get("statement")
    if not isinstance(statement, dict):
        return entry.actor, data
    rest = {k: v for k, v in data.items() if k != "statement"}
    return statement["site"], {"round": statement["round"], **statement["payload"], **rest}
