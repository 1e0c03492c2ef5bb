"""The outermost wrapper of a site: everything it asserts leaves signed by its own key.

``SignedSite(inner, home, run_id)`` trains as ``inner`` does (plain, DP-SGD, update-clipped,
secret-shared), then turns what the result claims into site statements signed at the site
with the key in its home (:meth:`pharmafl.sites.home.SiteHome.sign_statement`; format in
``docs/trust-domains.md``):

==================  ==============================================================
``site_update``     update_hash, num_examples, update_bytes, metrics
``clip``            the DP clip statistics (DP-SGD or client-level update clipping)
``privacy_spent``   ε this round and in total on this data (DP-SGD only)
``secure_shares``   commitment, share and header hashes, envelope hash (secure aggregation)
``site_declined``   reason and its numbers (a round the budget cannot pay for)
==================  ==============================================================

The coordinator receives the statements with the result and embeds them verbatim in its
ledger entries; it never holds the key. The site also answers the coordinator's witness
requests (:meth:`witness`), cosigning each checkpoint that extends the last one it saw.
"""

from __future__ import annotations

import math
from dataclasses import replace

from pharmafl.sites.secret_sharing import parse_envelope
from pharmafl.sites.site import Declined, FitResult, Instructions, State

CLIP_KEYS = ("clip_norm", "clipped", "total", "max_norm", "mean_norm")


class SignedSite:
    """``inner`` whose results carry its signed statements; ``home`` holds the key."""

    def __init__(self, inner, home, run_id: str, *, secure: bool = False):
        if inner.id != home.site:
            raise ValueError(f"site {inner.id!r} cannot sign with the home of {home.site!r}")
        self.inner, self.id, self.home, self.run_id, self.secure = inner, inner.id, home, run_id, secure
        self._witness = None

    def evaluate(self, state: State) -> dict[str, float]:
        return self.inner.evaluate(state)

    def fit(self, round: int, state: State, instructions: Instructions) -> FitResult | Declined:
        out = self.inner.fit(round, state, instructions)
        if isinstance(out, Declined):
            return replace(out, statements=(self._sign(round, "site_declined", {"reason": out.reason, **out.details}),))
        return replace(out, statements=tuple(self._sign(round, t, p) for t, p in statement_payloads(out, self.secure)))

    def witness(self, request: dict) -> dict:
        """Cosign the coordinator's checkpoint if it extends what this site cosigned before."""
        if self._witness is None:
            self._witness = self.home.witness()
        return self._witness.add_checkpoint(request)

    def _sign(self, round: int, type_: str, payload: dict) -> dict:
        return self.home.sign_statement(self.run_id, round, type_, payload)


def statement_payloads(res: FitResult, secure: bool) -> list[tuple[str, dict]]:
    """(type, payload) of every statement a result makes, in the order the ledger records them."""
    out = [
        (
            "site_update",
            {
                "update_hash": res.update_hash,
                "num_examples": res.num_examples,
                "update_bytes": len(res.payload),
                "metrics": _finite(res.metrics),
            },
        )
    ]
    if res.privacy:
        p = _finite(res.privacy)
        out.append(("clip", {k: p.get(k) for k in CLIP_KEYS}))
        if "epsilon_total" in p:
            out.append(("privacy_spent", {k: v for k, v in p.items() if k not in CLIP_KEYS}))
    if secure:
        env = parse_envelope(res.payload)
        out.append(
            (
                "secure_shares",
                {
                    "commitment": env.header["commitment"],
                    "share_hashes": env.share_hashes(),
                    "header_sha256": env.header_sha256,
                    "envelope_hash": res.update_hash,
                    "num_examples": res.num_examples,
                },
            )
        )
    return out


def _finite(values: dict) -> dict:
    """The values with NaN and infinities as None (JSON has no form for them; the
    coordinator rejects such a result and the statement still records what was sent)."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in values.items()}
