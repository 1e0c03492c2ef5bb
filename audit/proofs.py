"""Inclusion and consistency proofs for a stored ledger, as JSON (``pharmafl ledger prove``).

An **inclusion proof** shows that entry ``seq`` is leaf ``seq`` of the tree of size ``n``
whose root a checkpoint signed: ``ceil(log2 n)`` sibling hashes at most (RFC 9162
§2.1.3). A **consistency proof** shows that the tree of size ``old`` is a prefix of the
tree of size ``new``, i.e. nothing before ``old`` was changed or removed when the ledger
grew (§2.1.4). Both are computed with :class:`~pharmafl.audit.merkle.MerkleTree` and
checked with the verifier's own functions (:mod:`pharmafl.audit.rfc9162`) before they are
returned, and the roots are compared with the signed checkpoints of the same sizes when
there are any.

Hashes are lowercase hex; ``leaf_hash`` = SHA-256(0x00 || entry_hash || signature).
"""

from __future__ import annotations

import json
from typing import Any

from pharmafl.audit.errors import LedgerError
from pharmafl.audit.ledger import Ledger
from pharmafl.audit.merkle import MerkleTree
from pharmafl.audit.records import Checkpoint
from pharmafl.audit.rfc9162 import verify_consistency, verify_inclusion


def _tree(ledger: Ledger, size: int) -> tuple[MerkleTree, list]:
    entries = list(ledger.entries(0, size))
    if len(entries) < size:
        raise LedgerError(
            f"the ledger has {len(entries)} entries; tree size {size} is out of range (choose 1..{len(entries)})"
        )
    return MerkleTree(e.leaf_hash() for e in entries), entries


def _signed(checkpoints: list[Checkpoint], size: int) -> dict[str, Any] | None:
    cp = next((c for c in checkpoints if c.tree_size == size), None)
    return None if cp is None else json.loads(cp.to_json_line())


def inclusion(ledger: Ledger, seq: int, tree_size: int | None = None) -> dict[str, Any]:
    """Proof that entry ``seq`` is in the tree of ``tree_size`` entries (default: the latest
    checkpoint if it covers ``seq``, else the whole ledger)."""
    checkpoints = ledger.checkpoints()
    if tree_size is None:
        covering = [c.tree_size for c in checkpoints if c.tree_size > seq]
        tree_size = covering[-1] if covering else len(ledger)
    if not 0 <= seq < tree_size:
        raise LedgerError(
            f"seq {seq} is not in a tree of {tree_size} entries; choose a seq in 0..{tree_size - 1} "
            "or a larger --tree-size"
        )
    tree, entries = _tree(ledger, tree_size)
    path, root = tree.inclusion_proof(seq, tree_size), tree.root(tree_size)
    leaf = tree.levels[0][seq]
    signed = _signed(checkpoints, tree_size)
    verified = verify_inclusion(seq, tree_size, leaf, path, root) and (
        signed is None or signed["root_hash"] == root.hex()
    )
    return {
        "kind": "inclusion",
        "seq": seq,
        "tree_size": tree_size,
        "entry": json.loads(entries[seq].to_json_line()),
        "leaf_hash": leaf.hex(),
        "proof": [h.hex() for h in path],
        "root_hash": root.hex(),
        "checkpoint": signed,
        "verified": verified,
    }


def consistency(ledger: Ledger, old_size: int, new_size: int | None = None) -> dict[str, Any]:
    """Proof that the first ``old_size`` entries are a prefix of the first ``new_size``."""
    new_size = len(ledger) if new_size is None else new_size
    if not 0 < old_size <= new_size:
        raise LedgerError(f"consistency needs 0 < OLD <= NEW, got OLD={old_size}, NEW={new_size}")
    tree, _ = _tree(ledger, new_size)
    path = tree.consistency_proof(old_size, new_size)
    old_root, new_root = tree.root(old_size), tree.root(new_size)
    checkpoints = ledger.checkpoints()
    old_cp, new_cp = _signed(checkpoints, old_size), _signed(checkpoints, new_size)
    verified = verify_consistency(old_size, new_size, old_root, new_root, path) and all(
        cp is None or cp["root_hash"] == root.hex() for cp, root in ((old_cp, old_root), (new_cp, new_root))
    )
    return {
        "kind": "consistency",
        "old_size": old_size,
        "new_size": new_size,
        "old_root": old_root.hex(),
        "new_root": new_root.hex(),
        "proof": [h.hex() for h in path],
        "old_checkpoint": old_cp,
        "new_checkpoint": new_cp,
        "verified": verified,
    }
