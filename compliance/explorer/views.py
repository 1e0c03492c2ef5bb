"""What each explorer page shows, as plain JSON data (the HTML pages and the ``/api`` endpoints
render the same dicts; the static export writes them to files).

Built once at start-up from a verified :class:`~.source.Opened` ledger (:class:`Explorer`): the
report's own section functions (:mod:`pharmafl.compliance.sections`) over the entries they read,
the report's plots, the registered and pinned keys, and the users replayed as the offline
verifier replays them. Per request only bounded work is done: a trail page, one entry with its
proof, a range of rounds.

An entry page's checks, made on the data it shows, are :mod:`.checks`.

Nothing here reads the users table: password hashes and sealed keys never reach a page.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from pharmafl.audit import messages as m
from pharmafl.audit.evidence import Accounts
from pharmafl.audit.records import asserted
from pharmafl.audit.verify import VerificationError
from pharmafl.compliance.explorer.checks import EntryChecks, payload_of
from pharmafl.compliance.explorer.index import Query
from pharmafl.compliance.explorer.source import Opened
from pharmafl.compliance.part11 import alcoa_rows, part11_rows, signer_rows
from pharmafl.compliance.sections import clean, lineage_section, privacy_section, summary_section
from pharmafl.compliance.signatures import manifestation
from pharmafl.compliance.trail import trail_rows

SUMMARY_TYPES = ("run_started", "run_resumed", "run_ended", "round_ended", "site_timed_out", "alarm", "site_failed")
PRIVACY_TYPES = ("run_started", "privacy_spent", "site_declined")
LINEAGE_TYPES = ("site_update", "secure_shares", "aggregated")
ALARM_TYPES = ("alarm", "anomaly", "site_failed", "site_timed_out", "witness_refused", "party_refused")
ACCOUNT_TYPES = (
    "actor_key",
    "user_created",
    "user_role_changed",
    "user_disabled",
    "user_locked",
    "user_unlocked",
    "policy_changed",
    "report_generated",
    "report_rendered",
    "e_signature",
    "evidence_exported",
)
ROUNDS_PER_PAGE = 5
SHOWN_ROUNDS = 40  # rounds listed per site in the privacy page's table


def _thin(points: list) -> list:
    step = -(-len(points) // SHOWN_ROUNDS)
    return points[::step] + ([points[-1]] if (len(points) - 1) % step else [])


class Explorer:
    """Every page's data for one opened ledger."""

    def __init__(self, opened: Opened):
        self.opened, self.index, self.verdict = opened, opened.index, opened.verdict
        started = self.index.entries(["run_started"])
        self.started = payload_of(started[0]) if started else {}
        self.run_id = self.started.get("run_id")
        self.summary = summary_section(self.index.entries(SUMMARY_TYPES))
        self.privacy = privacy_section(self.index.entries(PRIVACY_TYPES))
        self.keys = self._registered_keys()
        cons = self.started.get("consortium") or {}
        self.pinned = {
            name: card.get("public_key")
            for cards in (cons.get("cards") or {}, cons.get("parties") or {})
            for name, card in cards.items()
            if isinstance(card, dict)
        }
        self.checkpoints = self.index.checkpoints()
        self.cosigned = self.index.cosigned_sizes()
        sites = len(cons.get("cards") or {})
        details = self.verdict.details.get("ledger", self.verdict.details)
        self.quorum = details.get("quorum", sites // 2 + 1 if sites else 0)
        self.accounts, self.accounts_error = self._accounts()
        self.checks = EntryChecks(self)
        self.model = self._model_check()
        self.plots = self._plots(opened.workdir / "plots")

    # -- start-up ------------------------------------------------------------------------------

    def _registered_keys(self) -> dict[str, tuple[str, int]]:
        keys = {}
        for e in self.index.entries(["actor_key"]):
            d = payload_of(e)
            if isinstance(d.get("actor"), str) and isinstance(d.get("public_key"), str):
                keys.setdefault(d["actor"], (d["public_key"], e.seq))
        return keys

    def _accounts(self) -> tuple[Accounts | None, str | None]:
        rows = ((e.seq, e.ts, e.actor, e.type, e.payload) for e in self.index.user_entries(ACCOUNT_TYPES))
        try:
            return Accounts(rows), None
        except VerificationError as err:
            return None, str(err)
        except (ValueError, KeyError, TypeError) as err:
            return None, f"the users cannot be replayed: {type(err).__name__}: {err}"

    def _plots(self, folder: Path) -> dict[str, Path]:
        from pharmafl.compliance.plots import draw_plots

        return draw_plots({"summary": self.summary, "privacy": self.privacy}, folder)

    # -- pages ---------------------------------------------------------------------------------

    def banner(self) -> dict:
        return asdict(self.verdict) | {"kind": self.opened.kind, "path": self.opened.path}

    def overview(self) -> dict:
        facets = self.index.facets()
        ended = self.index.entries(["run_ended"])
        return clean(
            {
                "verification": self.banner(),
                "run_id": self.run_id,
                "summary": self.summary,
                "entries": self.index.size,
                "checkpoints": len(self.checkpoints),
                "witnessed": sum(1 for c in self.checkpoints if self.cosigned.get(c["tree_size"], 0) >= self.quorum),
                "quorum": self.quorum,
                "types": dict(facets["type"]),
                "rounds": facets["rounds"],
                "sites": self.summary.get("sites") or [],
                "card_rows": [
                    [
                        name,
                        card.get("fingerprint"),
                        card.get("manifest_sha256"),
                        (card.get("counts") or {}).get("pairs"),
                        card.get("created"),
                    ]
                    for name, card in sorted(((self.started.get("consortium") or {}).get("cards") or {}).items())
                    if isinstance(card, dict)
                ],
                **_gains((payload_of(ended[-1]).get("metrics") or {}).get("gains") if ended else None),
                "model": self.model,
            }
        )

    def _model_check(self) -> dict:
        ended = self.index.entries(["run_ended"])
        model_hash = payload_of(ended[-1]).get("model_hash") if ended else None
        out = {"model_hash": model_hash, "file": None, "matches": None}
        run_dir = self.opened.run_dir
        if run_dir is not None and (run_dir / "model.safetensors").is_file():
            digest = hashlib.sha256((run_dir / "model.safetensors").read_bytes()).hexdigest()
            out.update(file="model.safetensors", file_sha256=digest, matches=digest == model_hash)
        return out

    def trail(self, query: Query, *, after: int | None = None, before: int | None = None, limit: int = 50) -> dict:
        page = self.index.page(query, after=after, before=before, limit=limit)
        rows = []
        for e in page.entries:
            try:
                rows += trail_rows([e])
            except (ValueError, KeyError, TypeError, AttributeError):  # a tampered payload: show the raw row
                rows.append(
                    {
                        "seq": e.seq,
                        "ts": e.ts,
                        "actor": e.actor,
                        "signed_by": None,
                        "type": e.type,
                        "round": None,
                        "site": None,
                        "what": e.payload[:200],
                        "why": "unreadable payload",
                        "entry_hash": e.entry_hash,
                    }
                )
        for r in rows:
            r["verified"] = self.verdict.ok or r["seq"] < self.verdict.verified
        return clean(
            {
                "query": query.as_params(),
                "rows": rows,
                "older": page.older,
                "newer": page.newer,
                "total": page.total,
                "limit": limit,
                "size": self.index.size,
                "facets": {k: [v for v, _ in vs] for k, vs in self.index.facets().items() if k != "rounds"},
            }
        )

    def entry(self, seq: int) -> dict | None:
        """The entry page's data: the entry, its signer, its statement, its proof and the checks
        (:class:`~.checks.EntryChecks`); None when there is no such entry."""
        return self.checks.entry(seq)

    def privacy_page(self, *, full: bool = True) -> dict:
        """The privacy section; unless ``full``, each site's ε-by-round list thinned to at most
        :data:`SHOWN_ROUNDS` rounds (evenly spaced, the last one kept) for the page's table: the plot
        and ``/api/privacy`` have every round."""
        privacy = self.privacy
        if not full and any(len(s["epsilon_by_round"]) > SHOWN_ROUNDS for s in privacy["sites"]):
            privacy = {
                **privacy,
                "sites": [{**s, "epsilon_by_round": _thin(s["epsilon_by_round"])} for s in privacy["sites"]],
            }
        return {"verification": self.banner(), "privacy": privacy, "thinned": privacy is not self.privacy}

    def lineage(self, first: int | None = None) -> dict:
        lo, hi = self.index.facets()["rounds"]
        lo, hi = lo or 0, hi or 0
        first = lo if first is None else max(lo, min(first, hi))
        last = min(hi, first + ROUNDS_PER_PAGE - 1)
        ended = self.index.entries(["run_ended"])
        entries = self.index.entries(LINEAGE_TYPES, (first, last))
        model = self.model
        section = lineage_section([*self.index.entries(["run_started"]), *entries, *ended], model.get("file_sha256"))
        seqs: dict[tuple, int] = {}
        for e in entries:
            who, d = asserted(e)
            seqs[(e.type, d.get("round"), who)] = e.seq
        for r in section["rounds"]:
            agg = seqs.get(("aggregated", r["round"], "server"))
            r["aggregated_seq"] = agg
            cp = next((c for c in self.checkpoints if agg is not None and c["tree_size"] > agg), None)
            r["checkpoint"] = None if cp is None else {**cp, "cosigned": self.cosigned.get(cp["tree_size"], 0)}
            for site, u in r["updates"].items():
                u["seq"] = seqs.get(("site_update", r["round"], site), seqs.get(("secure_shares", r["round"], site)))
        return clean(
            {
                "verification": self.banner(),
                "lineage": section,
                "first": first,
                "last": last,
                "rounds": [lo, hi],
                "previous": max(lo, first - ROUNDS_PER_PAGE) if first > lo else None,
                "next": last + 1 if last < hi else None,
                "run_ended_seq": ended[-1].seq if ended else None,
                "model": model,
            }
        )

    def signatures(self) -> dict:
        generated = {}
        for e in self.index.entries(["report_generated"]):
            generated.setdefault(payload_of(e).get("record_hash"), e.seq)
        rows = []
        for e in self.index.entries(["e_signature"]):
            d = payload_of(e)
            key = (self.accounts.keys if self.accounts else {}).get(e.actor)
            valid = key is not None and _signature_valid(d, key)
            try:
                shown = manifestation(d)
            except (KeyError, TypeError):
                shown = "malformed signature manifestation"
            rows.append(
                {
                    "seq": e.seq,
                    "manifestation": shown,
                    "signer": e.actor,
                    "printed_name": d.get("printed_name"),
                    "signed_at": d.get("signed_at"),
                    "meaning": d.get("meaning"),
                    "role": d.get("role"),
                    "record": d.get("record"),
                    "record_hash": d.get("record_hash"),
                    "record_seq": generated.get(d.get("record_hash")),
                    "signature": d.get("signature"),
                    "key_fingerprint": m.sha256_hex(bytes.fromhex(key)) if key else None,
                    "verified": valid and self.accounts_error is None,
                }
            )
        return clean(
            {
                "verification": self.banner(),
                "signatures": rows,
                "accounts_error": self.accounts_error,
                "part11": {"part11": part11_rows(), "signers": signer_rows(), "alcoa": alcoa_rows()},
            }
        )

    def alarms(self) -> dict:
        rows = []
        for e in self.index.entries(ALARM_TYPES):
            try:
                rows += trail_rows([e])
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
        by_round = self.summary.get("cosine_to_mean_by_round") or []
        sites = sorted({k for r in by_round for k in r if k != "round"})
        return clean(
            {
                "verification": self.banner(),
                "alarms": rows,
                "cosine_to_mean_by_round": by_round,
                "cosine_header": ["round", *sites],
                "cosine_rows": [[r["round"], *[r.get(s) for s in sites]] for r in by_round],
                "cosine_last_round": self.summary.get("cosine_last_round"),
                "plots": sorted(n for n in self.plots if n.startswith(("cosine", "site_validation", "global_test"))),
            }
        )


def _gains(gains) -> dict:
    """A run's per-site gains (``run_ended.metrics.gains``: site -> {figure: value}) as a table."""
    if not isinstance(gains, dict) or not gains or not all(isinstance(g, dict) for g in gains.values()):
        return {"gain_header": [], "gain_rows": []}
    keys = sorted({k for g in gains.values() for k in g})
    return {
        "gain_header": ["site", *keys],
        "gain_rows": [[s, *[g.get(k) for k in keys]] for s, g in sorted(gains.items())],
    }


def _signature_valid(payload: dict, public_key_hex: str) -> bool:
    from pharmafl.compliance.signatures import signature_valid

    try:
        return signature_valid(payload, public_key_hex)
    except (KeyError, TypeError, ValueError):
        return False


def as_json(data: dict) -> str:
    return json.dumps(data, sort_keys=True, ensure_ascii=False, allow_nan=False)
