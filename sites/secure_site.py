"""Secure aggregation's site half: a wrapper that sends the update only as secret shares.

``SecureSite(inner, parties, context)`` trains as ``inner`` does (plain, DP-SGD or
update-clipped: privacy first, then sharing), then replaces the plaintext update with an
envelope of shares sealed to the aggregation parties
(:mod:`pharmafl.sites.secret_sharing`). The plaintext update never leaves the site. The
parties' keys come from the consortium the site accepted (``pharmafl site accept``), never
from the coordinator alone: :func:`pharmafl.sites.home.SiteHome.accepted_parties`.

With ``openings_dir`` (in the site's own home) the site keeps, per round, the update bytes
and what opens its commitment (salt, the helpers' seeds, the pieces' salts:
``round-NNNN.update`` / ``round-NNNN.json``). :func:`open_commitment` recomputes the
commitment the site signed, which binds the update to the shares the parties summed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from pharmafl.errors import ConfigError
from pharmafl.fileio import write_bytes_atomic
from pharmafl.sites import secret_sharing as ss, update as wire
from pharmafl.sites.site import Declined, FitResult, Instructions, State


class SecureSite:
    """``inner`` whose updates leave as shares for ``parties`` (the server's party first, then helpers)."""

    def __init__(self, inner, parties: Sequence[ss.PartyKey], context: str, openings_dir: Path | None = None):
        if len(parties) < 2:
            raise ConfigError(
                f"site {inner.id}: secure aggregation needs the server's party and at least one "
                f"helper, got {[p.name for p in parties]}"
            )
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
        sealed = ss.seal_update(
            site=self.id,
            round=round,
            num_examples=out.num_examples,
            parts=update.parts,
            update_hash=out.update_hash,
            parties=self.parties,
            context=self.context,
        )
        if self.openings_dir is not None:
            stem = self.openings_dir / f"round-{round:04d}"
            write_bytes_atomic(stem.with_suffix(".update"), out.payload)
            doc = {"site": self.id, "round": round, "update_sha256": out.update_hash, **sealed.opening}
            write_bytes_atomic(stem.with_suffix(".json"), json.dumps(doc, indent=1).encode())
        return replace(out, payload=sealed.envelope, update_hash=wire.sha256(sealed.envelope))


def open_commitment(openings_dir: Path, round: int) -> dict:
    """Re-derive a kept round's commitment from the update bytes, the salt and the seeds (what a
    site shows an auditor); raises if the kept files disagree with each other."""
    stem = Path(openings_dir) / f"round-{round:04d}"
    doc = json.loads(stem.with_suffix(".json").read_text())
    payload = stem.with_suffix(".update").read_bytes()
    actual = wire.sha256(payload)
    if actual != doc["update_sha256"]:
        raise ConfigError(f"{stem}.update hashes to {actual}, but {stem}.json records {doc['update_sha256']}")
    x_enc = ss.encode_fixed(ss.flatten(wire.decode(payload).parts))
    return {
        "site": doc["site"],
        "round": round,
        "update_sha256": actual,
        "commitment": ss.open_commitment(doc, actual, x_enc, site=doc["site"], round=round),
    }
