"""Merkle tree hashing and proofs of RFC 9162 (Certificate Transparency 2.0), §2.1.

Pure functions over *leaf hashes* (bytes): no I/O, no ledger objects. With ``H`` =
SHA-256 and ``D[n]`` the list of ``n`` leaf inputs (§2.1.1):

.. math::

    \\mathrm{MTH}(\\{\\}) = H(), \\quad
    \\mathrm{MTH}(\\{d_0\\}) = H(\\mathtt{0x00} \\| d_0), \\quad
    \\mathrm{MTH}(D[n]) = H(\\mathtt{0x01} \\| \\mathrm{MTH}(D[0{:}k]) \\| \\mathrm{MTH}(D[k{:}n]))

where ``k`` is the largest power of two smaller than ``n``. The 0x00/0x01 prefixes
separate leaves from interior nodes, so no leaf can pass for a node (second-preimage
resistance). A ledger leaf input is ``entry_hash || signature`` (32 + 64 raw bytes),
see :mod:`pharmafl.audit.records`.

Inclusion proofs (``PATH``, §2.1.3.1) and consistency proofs (``PROOF``/``SUBPROOF``,
§2.1.4.1) are generated here; they are *verified* by the RFC's algorithms (§2.1.3.2,
§2.1.4.2) in :mod:`pharmafl.audit.verify`, re-exported below, so that the code a regulator
runs is the code the tests exercise.

:class:`MerkleTree` caches every complete (perfect, aligned) subtree so that a proof in a
tree of a million leaves costs O(log² n) hashes after one O(n) build; :class:`CompactRange`
is the O(log n)-memory accumulator the writer uses for signed tree heads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from pharmafl.audit.verify import verify_consistency, verify_inclusion

__all__ = [
    "CompactRange",
    "MerkleTree",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "merkle_root",
    "node_hash",
    "verify_consistency",
    "verify_inclusion",
]

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """``H(0x00 || data)`` (RFC 9162 §2.1.1)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``H(0x01 || left || right)`` (RFC 9162 §2.1.1)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


class MerkleTree:
    """All complete subtrees over ``leaf_hashes``; roots and proofs for any prefix size.

    ``levels[h][i]`` is the root of the perfect subtree over leaves ``[i*2**h, (i+1)*2**h)``.
    Every left child in the RFC 9162 recursion is such a subtree, so the root of any range
    the recursion visits costs O(log n) cached lookups.
    """

    def __init__(self, leaf_hashes: Iterable[bytes] = ()):
        self.levels: list[list[bytes]] = [[]]
        for h in leaf_hashes:
            self.append(h)

    def __len__(self) -> int:
        return len(self.levels[0])

    def append(self, leaf: bytes) -> None:
        """Add the next leaf hash, completing every subtree it closes."""
        self.levels[0].append(leaf)
        level = 0
        while len(self.levels[level]) % 2 == 0:
            below = self.levels[level]
            if level + 1 == len(self.levels):
                self.levels.append([])
            self.levels[level + 1].append(node_hash(below[-2], below[-1]))
            level += 1

    def _range_root(self, lo: int, hi: int) -> bytes:
        n = hi - lo
        if n == 0:
            return EMPTY_ROOT
        height = n.bit_length() - 1
        if n == 1 << height and lo % n == 0:
            return self.levels[height][lo >> height]
        k = _split(n)
        return node_hash(self._range_root(lo, lo + k), self._range_root(lo + k, hi))

    def _check_size(self, size: int, what: str) -> None:
        if not 0 <= size <= len(self):
            raise ValueError(f"{what} {size} is outside the tree of {len(self)} leaves (0..{len(self)})")

    def root(self, size: int | None = None) -> bytes:
        """``MTH(D[0:size])``; the whole tree by default."""
        size = len(self) if size is None else size
        self._check_size(size, "tree size")
        return self._range_root(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """``PATH(index, D[0:size])`` (RFC 9162 §2.1.3.1), leaf side first."""
        size = len(self) if size is None else size
        self._check_size(size, "tree size")
        if not 0 <= index < size:
            raise ValueError(f"leaf index {index} is not in a tree of size {size} (0..{size - 1})")
        proof: list[bytes] = []
        lo, hi = 0, size
        while hi - lo > 1:
            k = _split(hi - lo)
            if index < lo + k:
                proof.append(self._range_root(lo + k, hi))
                hi = lo + k
            else:
                proof.append(self._range_root(lo, lo + k))
                lo += k
        proof.reverse()
        return proof

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """``PROOF(old_size, D[0:new_size])`` (RFC 9162 §2.1.4.1); empty if the sizes are
        equal or ``old_size`` is 0 (every tree extends the empty tree)."""
        new_size = len(self) if new_size is None else new_size
        self._check_size(new_size, "new tree size")
        if not 0 <= old_size <= new_size:
            raise ValueError(f"old tree size {old_size} must be within 0..{new_size} (the new size)")
        if old_size in (0, new_size):
            return []
        proof: list[bytes] = []
        m, lo, hi, complete = old_size, 0, new_size, True
        while m != hi - lo:  # SUBPROOF(m, D[lo:hi], complete)
            k = _split(hi - lo)
            if m <= k:
                proof.append(self._range_root(lo + k, hi))
                hi = lo + k
            else:
                proof.append(self._range_root(lo, lo + k))
                m, lo, complete = m - k, lo + k, False
        if not complete:
            proof.append(self._range_root(lo, hi))
        proof.reverse()
        return proof


class CompactRange:
    """The roots of the perfect subtrees covering leaves ``[0, n)``: O(log n) memory.

    Appending merges equal-sized neighbours; the tree head folds them right to left,
    which is exactly ``MTH(D[n])`` because RFC 9162 splits off the largest power of two
    first.
    """

    def __init__(self) -> None:
        self.size = 0
        self._stack: list[tuple[int, bytes]] = []

    def append(self, leaf: bytes) -> None:
        self.size += 1
        stack = self._stack
        stack.append((1, leaf))
        while len(stack) > 1 and stack[-1][0] == stack[-2][0]:
            (width, right), (_, left) = stack.pop(), stack.pop()
            stack.append((2 * width, node_hash(left, right)))

    def copy(self) -> CompactRange:
        other = CompactRange()
        other.size, other._stack = self.size, list(self._stack)
        return other

    def root(self) -> bytes:
        if not self._stack:
            return EMPTY_ROOT
        acc = self._stack[-1][1]
        for _, h in reversed(self._stack[:-1]):
            acc = node_hash(h, acc)
        return acc


def merkle_root(leaf_hashes: Sequence[bytes]) -> bytes:
    """``MTH`` over leaves whose leaf hashes are given."""
    acc = CompactRange()
    for h in leaf_hashes:
        acc.append(h)
    return acc.root()


def inclusion_proof(index: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """``PATH(index, D[n])`` with ``n = len(leaf_hashes)``."""
    return MerkleTree(leaf_hashes).inclusion_proof(index)


def consistency_proof(old_size: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """``PROOF(old_size, D[n])`` with ``n = len(leaf_hashes)``."""
    return MerkleTree(leaf_hashes).consistency_proof(old_size)
