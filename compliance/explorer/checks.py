"""An entry page's checks, made on the data the page shows, whatever the start-up verdict said.

For one entry: its hash recomputed from its fields, its link to the previous entry, its Ed25519
signature under its writer's registered key, the site's embedded statement under the key the
site's card pins, and its RFC 9162 inclusion proof against the first cosigned checkpoint that
covers it, with that checkpoint's signature and each witness cosignature checked too. The page's
script folds the same proof again in the browser (``static/explorer.js``).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from pharmafl.audit import messages as m
from pharmafl.audit.records import Entry
from pharmafl.audit.rfc9162 import verify_inclusion
from pharmafl.compliance.sections import clean
from pharmafl.compliance.trail import trail_rows

if TYPE_CHECKING:
    from pharmafl.compliance.explorer.views import Explorer


def sig_ok(public_key: bytes, signature_hex: str, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(bytes.fromhex(signature_hex), message)
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


def payload_of(e: Entry) -> dict:
    """``e``'s payload as a dict; ``{}`` for one that does not parse (a tampered entry, still shown)."""
    try:
        data = e.data
        return data if isinstance(data, dict) else {}
    except ValueError:
        return {}


class EntryChecks:
    """The checks of any entry of ``explorer``'s ledger (its index, keys, pins and checkpoints)."""

    def __init__(self, explorer: Explorer):
        self.index, self.verdict, self.run_id = explorer.index, explorer.verdict, explorer.run_id
        self.keys, self.pinned, self.quorum = explorer.keys, explorer.pinned, explorer.quorum
        self.checkpoints, self.cosigned = explorer.checkpoints, explorer.cosigned

    def entry(self, seq: int) -> dict | None:
        e = self.index.entry(seq)
        if e is None:
            return None
        data = payload_of(e)
        key = self.keys.get(e.actor)
        checks = {
            "entry_hash": hashlib.sha256(
                m.entry_message(e.seq, e.ts, e.actor, e.type, e.payload, e.prev_hash)
            ).hexdigest()
            == e.entry_hash,
            "chain": self._prev_ok(e),
            "signature": key is not None
            and sig_ok(bytes.fromhex(key[0]), e.signature, bytes.fromhex(e.entry_hash))
            and key[1] <= e.seq,
        }
        statement = self._statement(data)
        if statement is not None:
            checks["statement"] = statement["verified"]
        proof = self._proof(e)
        if proof is not None:
            checks["inclusion"] = proof["verified"]
        try:
            row = trail_rows([e])[0]
        except (ValueError, KeyError, TypeError, AttributeError):
            row = {"what": e.payload[:200], "why": "unreadable payload", "signed_by": None, "round": None, "site": None}
        return clean(
            {
                "seq": e.seq,
                "ts": e.ts,
                "actor": e.actor,
                "type": e.type,
                "row": row,
                "canonical": e.to_json_line() if data else None,
                "payload": data,
                "payload_text": e.payload,
                "entry_hash": e.entry_hash,
                "prev_hash": e.prev_hash,
                "signature": e.signature,
                "signer": {
                    "actor": e.actor,
                    "public_key": key[0] if key else None,
                    "fingerprint": m.sha256_hex(bytes.fromhex(key[0])) if key else None,
                    "registered_at": key[1] if key else None,
                },
                "statement": statement,
                "proof": proof,
                "checks": checks,
                "ok": all(checks.values()),
                "in_verified_prefix": self.verdict.ok or e.seq < self.verdict.verified,
                "previous": e.seq - 1 if e.seq > 0 else None,
                "next": e.seq + 1 if e.seq + 1 < self.index.size else None,
            }
        )

    def _prev_ok(self, e: Entry) -> bool:
        if e.seq == 0:
            return e.prev_hash == m.GENESIS
        before = self.index.entry(e.seq - 1)
        return before is not None and before.entry_hash == e.prev_hash

    def _statement(self, data: dict) -> dict | None:
        st = data.get("statement")
        if not isinstance(st, dict):
            return None
        site, key = st.get("site"), self.pinned.get(st.get("site"))
        try:
            digest_ok = st.get("payload_sha256") == m.sha256_hex(m.canonical(st.get("payload")))
            message = m.statement_message(self.run_id, st["round"], site, st["type"], st["payload_sha256"])
            verified = digest_ok and key is not None and sig_ok(bytes.fromhex(key), st["signature"], message)
        except (KeyError, TypeError, ValueError):
            verified = False
        return {
            "site": site,
            "statement": st,
            "pinned_key": key,
            "fingerprint": m.sha256_hex(bytes.fromhex(key)) if isinstance(key, str) and m.is_hex(key, 64) else None,
            "verified": verified,
        }

    def _proof(self, e: Entry) -> dict | None:
        """The inclusion proof of ``e`` against the first cosigned checkpoint covering it (else the first
        signed one), with the checkpoint's own signature and its cosignatures checked."""
        covering = [c for c in self.checkpoints if c["tree_size"] > e.seq and c["tree_size"] <= self.index.size]
        if not covering:
            return None
        cp = next((c for c in covering if self.cosigned.get(c["tree_size"], 0) >= max(self.quorum, 1)), covering[0])
        size = cp["tree_size"]
        leaf = self.index.tree.levels[0][e.seq]
        path = self.index.tree.inclusion_proof(e.seq, size)
        try:
            root = bytes.fromhex(cp["root_hash"])
        except ValueError:
            root = b""
        signer = self.keys.get(cp["signer"])
        cp_ok = signer is not None and sig_ok(
            bytes.fromhex(signer[0]),
            cp["signature"],
            m.checkpoint_message(size, cp["root_hash"], cp["ts"], cp["signer"]),
        )
        body = m.checkpoint_body(m.origin_of(self.run_id), size, cp["root_hash"]) if self.run_id else b""
        cosigs = [
            {
                **c,
                "verified": c["witness"] in self.pinned
                and sig_ok(
                    bytes.fromhex(self.pinned[c["witness"]]),
                    c["signature"],
                    m.cosignature_message(body, c["timestamp"]),
                ),
            }
            for c in self.index.cosignatures(size)
        ]
        included = verify_inclusion(e.seq, size, leaf, path, root)
        return {
            "leaf_input": e.entry_hash + e.signature,
            "leaf_hash": leaf.hex(),
            "index": e.seq,
            "tree_size": size,
            "path": [h.hex() for h in path],
            "checkpoint": cp,
            "checkpoint_signature": cp_ok,
            "cosignatures": cosigs,
            "cosignature_rows": [
                [c["witness"], c["timestamp"], "yes" if c["verified"] else "NO", c["signature"]] for c in cosigs
            ],
            "quorum": self.quorum,
            "cosigned": sum(c["verified"] for c in cosigs),
            "included": included,
            "verified": included and cp_ok and sum(c["verified"] for c in cosigs) >= self.quorum,
        }
