"""Ed25519 signature checks (RFC 8032, ``cryptography``) in chunks on worker processes.

Part of the standalone verifier (:mod:`pharmafl.audit.verify`): the caller keeps hashing
while the workers verify; a failure comes back as ``(seq, why)``.
"""

from __future__ import annotations

import multiprocessing
import os
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def _first_bad(chunk: list[tuple]) -> tuple[int, str] | None:
    keys: dict[bytes, Ed25519PublicKey] = {}
    for seq, raw, sig, msg, what in chunk:
        try:
            (keys.get(raw) or keys.setdefault(raw, Ed25519PublicKey.from_public_bytes(raw))).verify(sig, msg)
        except InvalidSignature:
            return seq, what
    return None


def sig_ok(raw_key: bytes, sig: bytes, msg: bytes) -> bool:
    return _first_bad([(0, raw_key, sig, msg, "")]) is None


class Signatures:
    """Ed25519 checks in chunks on worker processes while the caller keeps hashing."""

    def __init__(self, jobs: int | None):
        self.jobs, self.todo, self.done, self.pool = jobs or os.cpu_count() or 1, [], [], None

    def add(self, *item) -> None:  # (seq, raw public key, signature, message, why it fails if it does)
        self.todo.append(item)
        if len(self.todo) == 4000:
            if self.pool is None and self.jobs > 1:
                self.pool = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn").Pool(self.jobs)
            self.done.append(self.pool.apply_async(_first_bad, (self.todo,)) if self.pool else _first_bad(self.todo))
            self.todo = []

    def failures(self) -> list[tuple[int, str]]:
        try:
            found = [r.get() if hasattr(r, "get") else r for r in self.done] + [_first_bad(self.todo)]
        finally:
            if self.pool is not None:
                self.pool.terminate()
        return [bad for bad in found if bad is not None][:1]
