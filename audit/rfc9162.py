"""RFC 9162 (Certificate Transparency 2.0) §2.1 Merkle tree hashing and proof *verification*.

Pure functions over SHA-256 hashes, stdlib only: what the standalone verifier, a site's
witness and ``pharmafl ledger prove`` all run. With ``D[n]`` the ``n`` leaf inputs (§2.1.1):

.. math::

    \\mathrm{MTH}(\\{\\}) = H(), \\quad
    \\mathrm{MTH}(\\{d_0\\}) = H(\\mathtt{0x00} \\| d_0), \\quad
    \\mathrm{MTH}(D[n]) = H(\\mathtt{0x01} \\| \\mathrm{MTH}(D[0{:}k]) \\| \\mathrm{MTH}(D[k{:}n]))

with ``k`` the largest power of two below ``n``. A ledger leaf input is
``entry_hash || signature`` (32 + 64 raw bytes). Proof *generation* is in
:mod:`pharmafl.audit.merkle`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

EMPTY_ROOT = hashlib.sha256(b"").digest()
Stack = list  # [(width, root)] of the perfect subtrees covering the leaves so far, left to right


def leaf_hash(data: bytes) -> bytes:
    """``H(0x00 || data)`` (§2.1.1)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``H(0x01 || left || right)`` (§2.1.1)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def push(stack: Stack, leaf: bytes) -> None:
    """Append a leaf hash to a compact range, merging equal-width neighbours (O(log n) memory)."""
    stack.append((1, leaf))
    while len(stack) > 1 and stack[-1][0] == stack[-2][0]:
        (width, right), (_, left) = stack.pop(), stack.pop()
        stack.append((2 * width, node_hash(left, right)))


def fold(stack: Stack) -> bytes:
    """``MTH`` of the leaves pushed so far: the subtree roots folded right to left."""
    if not stack:
        return EMPTY_ROOT
    root = stack[-1][1]
    for _, h in reversed(stack[:-1]):
        root = node_hash(h, root)
    return root


def root_from_leaves(leaf_hashes: Iterable[bytes]) -> bytes:
    """``MTH`` over leaves given by their leaf hashes."""
    stack: Stack = []
    for h in leaf_hashes:
        push(stack, h)
    return fold(stack)


def verify_inclusion(index: int, size: int, leaf: bytes, proof: list[bytes], root: bytes) -> bool:
    """§2.1.3.2: is ``leaf`` (a leaf hash) at ``index`` in the tree of ``size`` with ``root``?"""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


def verify_consistency(old: int, new: int, old_root: bytes, new_root: bytes, proof: list[bytes]) -> bool:
    """§2.1.4.2: is the tree of size ``old`` (root ``old_root``) a prefix of the tree of size ``new``?"""
    if not 0 <= old <= new:
        return False
    if old == new or old == 0:
        return not proof and (old == 0 or old_root == new_root)
    path = [old_root, *proof] if old & (old - 1) == 0 else list(proof)
    if not path:
        return False
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == old_root and sr == new_root
