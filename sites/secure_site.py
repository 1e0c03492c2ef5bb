"""Secure aggregation's site half: a wrapper that sends the update only as secret shares.

``SecureSite(inner, parties, context)`` trains as ``inner`` does (plain, DP-SGD or
update-clipped: privacy first, then sharing), then replaces the plaintext update with an
envelope of shares encrypted to the aggregation parties
(:mod:`pharmafl.sites.secret_sharing`). The plaintext update never leaves the site.

With ``openings_dir`` the site keeps, per round, the update bytes and the commitment salt
(``round-NNNN.update`` / ``round-NNNN.json``): :func:`open_commitment` recomputes the
commitment recorded in the ledger, so the site can later prove what it sent.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from pharmafl.errors import ConfigError
from pharmafl.fileio import write_bytes_atomic
from pharmafl.sites import update as wire
from pharmafl.sites.secret_sharing import SERVER, PartyKey, commitment, seal_update
from pharmafl.sites.site import Declined, FitResult, Instructions, State


class SecureSite:
    """``inner`` whose updates leave as shares for ``parties`` (server first, then helpers)."""

    def __init__(self, inner, parties: Sequence[PartyKey], context: str, openings_dir: Path | None = None):
        if len(parties) < 2 or parties[0].name != SERVER:
            raise ConfigError(f"site {inner.id}: secure aggregation needs the server's party first and at least "
                              f"one helper, got {[p.name for p in parties]}")  # fmt: skip
        self.inner, self.id = inner, inner.id
        self.parties = [p.public_only() for p in parties]
        self.context = context
        self.openings_dir = Path(openings_dir) if openings_dir is not None else None

    def evaluate(self, state: State) -> dict[str, float]:
        return self.inner.evaluate(state)

    def fit(self, round: int, state: State, instructions: Instructions) -> FitResult | Declined:
        out = self.inner.fit(round, state, instructions)
        if isinstance(out, Declined):
            return out
        update = wire.decode(out.payload)
        salt = os.urandom(32)
        envelope = seal_update(site=self.id, round=round, num_examples=out.num_examples, parts=update.parts,
                               update_hash=out.update_hash, salt=salt, parties=self.parties,
                               context=self.context)  # fmt: skip
        if self.openings_dir is not None:
            stem = self.openings_dir / f"round-{round:04d}"
            write_bytes_atomic(stem.with_suffix(".update"), out.payload)
            doc = {"site": self.id, "round": round, "update_sha256": out.update_hash, "salt": salt.hex(),
                   "commitment": commitment(salt, out.update_hash)}  # fmt: skip
            write_bytes_atomic(stem.with_suffix(".json"), json.dumps(doc, indent=1).encode())
        return replace(out, payload=envelope, update_hash=wire.sha256(envelope))


def open_commitment(openings_dir: Path, round: int) -> dict:
    """Re-derive a kept round's commitment from the update bytes and salt (what a site shows
    an auditor); raises if the kept files disagree with each other."""
    stem = Path(openings_dir) / f"round-{round:04d}"
    doc = json.loads(stem.with_suffix(".json").read_text())
    payload = stem.with_suffix(".update").read_bytes()
    actual = wire.sha256(payload)
    if actual != doc["update_sha256"]:
        raise ConfigError(f"{stem}.update hashes to {actual}, but {stem}.json records {doc['update_sha256']}")
    return {"site": doc["site"], "round": round, "update_sha256": actual,
            "commitment": commitment(bytes.fromhex(doc["salt"]), actual)}  # fmt: skip
