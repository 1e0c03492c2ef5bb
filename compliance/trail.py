"""The audit trail section: every ledger entry in order as who, what, when, why.

Pure functions over entries (anything with ``seq, ts, actor, type, data, entry_hash``).
Any event type renders: known types get a sentence for *why*, unknown ones (e.g. a new
``secure_shares`` event) a generic one; *what* is a compact, bounded summary of the
payload's fields, hashes shortened. Rows can be filtered by round, site and event type
(an entry with no round or site is kept only when that filter is not set).

An entry that embeds a site's signed statement (written by the coordinator, ``server``)
shows what the site asserted (:func:`pharmafl.audit.records.asserted`): ``site`` and
``signed_by`` are that site, ``what`` its round, payload and the coordinator's own fields;
``actor`` stays the entry's writer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pharmafl.audit.records import asserted

_HASH = re.compile(r"[0-9a-f]{64,128}")
WHY_FIELDS = ("reason", "message", "meaning", "status", "error", "what")
WHY = {
    "actor_key": "registers {target}'s Ed25519 public key before its first entry (a user's: her own enrolment)",
    "run_started": "the coordinator starts the run (config, code version, data manifests)",
    "round_started": "the coordinator opens round {round}",
    "site_update": "the site's signed statement of its model update for round {round}, by hash",
    "clip": "the site's signed DP-SGD per-example gradient clipping statistics for round {round}",
    "privacy_spent": "privacy accounting after round {round}",
    "site_declined": "the site declined round {round} (its signed statement)",
    "site_failed": "a site failed in round {round}",
    "secure_shares": "the site's secret shares for round {round} (its signed commitment and share hashes, not the "
    "update)",
    "witness_refused": "a site's witness refused to cosign a checkpoint",
    "bound_check": "the MPC check of a site's update norm bound in round {round}",
    "aggregated": "the server aggregates round {round}",
    "alarm": "a diagnostic alarm",
    "round_ended": "round {round} closes with its metrics",
    "site_timed_out": "{site} did not answer round {round} within {timeout_s} s",
    "run_ended": "the run ends; final model by hash",
    "run_resumed": "the coordinator resumes the run (session {session}) from round {from_round}; {interrupted}",
    "user_created": "an admin creates a user account and commits to its one-time enrolment code",
    "user_login": "the user authenticated with user id and password",
    "login_failed": "a failed login",
    "login_refused": "a login refused",
    "user_locked": "too many failed logins: account locked",
    "password_changed": "the user set a new password",
    "action_refused": "the user's role may not take this action",
    "user_role_changed": "an admin changes a user's role",
    "user_unlocked": "an admin unlocks an account",
    "user_disabled": "an admin disables an account",
    "policy_changed": "an admin changes the password policy",
    "e_signature": "electronic signature on a record",
    "report_generated": "a compliance report is generated",
    "report_rendered": "a report's human-readable copies are re-rendered with their signatures",
    "evidence_exported": "an evidence package is exported",
    "explorer_rendered": "the explorer's static pages of an evidence package are rendered (their SHA-256 recorded)",
}


@dataclass(frozen=True)
class TrailFilter:
    """Which entries the trail shows; empty tuples show everything."""

    rounds: tuple[int, ...] = ()
    sites: tuple[str, ...] = ()
    types: tuple[str, ...] = ()

    def keeps(self, row: dict) -> bool:
        return (
            (not self.rounds or row["round"] in self.rounds)
            and (not self.sites or row["site"] in self.sites)
            and (not self.types or row["type"] in self.types)
        )

    def as_dict(self) -> dict:
        return {"rounds": list(self.rounds), "sites": list(self.sites), "types": list(self.types)}


def _short(value: Any) -> str:
    if isinstance(value, str):
        return value[:12] + "…" if _HASH.fullmatch(value) else (value if len(value) <= 48 else value[:45] + "…")
    if isinstance(value, bool) or value is None:
        return str(value).lower() if value is not None else "null"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        if len(value) <= 4 and all(isinstance(v, (str, int, float)) for v in value):
            return "[" + ", ".join(_short(v) for v in value) + "]"
        return f"[{len(value)} items]"
    if isinstance(value, dict):
        return f"{{{len(value)} fields}}"
    return type(value).__name__


def summarize(payload: dict, limit: int = 200) -> str:
    """``key=value`` for the payload's fields (hashes shortened), at most ``limit`` characters."""
    text = ", ".join(f"{k}={_short(v)}" for k, v in sorted(payload.items()) if k not in WHY_FIELDS)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# Types whose sentence says more than the operator's text would: the text, if any, follows it.
DESCRIBED = frozenset({"run_resumed", "site_timed_out"})


class _Fields(dict):
    """A payload to format a sentence with: a missing field reads ``?`` rather than raising."""

    def __missing__(self, key: str) -> str:
        return "?"


def _interrupted(rounds: Any) -> str:
    if not isinstance(rounds, list):
        return "interrupted rounds: ?"
    if not rounds:
        return "no round was interrupted"
    if len(rounds) == 1:
        return f"round {rounds[0]} was interrupted and is redone"
    return f"rounds {', '.join(str(r) for r in rounds)} were interrupted and are redone"


def why(type_: str, payload: dict) -> str:
    given = next((f"{k}: {payload[k]}" for k in WHY_FIELDS if isinstance(payload.get(k), str) and payload[k]), None)
    if given and type_ not in DESCRIBED:
        return given
    template = WHY.get(type_, "{type} recorded by its actor")
    fields = _Fields(payload, target=payload.get("actor", "?"), type=type_)
    fields["interrupted"] = _interrupted(payload.get("interrupted_rounds"))
    sentence = template.format_map(fields)
    return f"{sentence}; {given}" if given else sentence


def site_of(actor: str, payload: dict) -> str | None:
    if actor.startswith("site-"):
        return actor
    site = payload.get("site")
    return site if isinstance(site, str) else None


def locate(actor: str, who: str, data: dict) -> tuple[str | None, int | None, str | None]:
    """``(signed_by, round, site)`` of an entry written by ``actor`` asserting ``data`` for ``who``
    (:func:`~pharmafl.audit.records.asserted`): the site whose statement it embeds (else None), its
    round (an int, else None) and the site it concerns. The trail and the explorer's index filter on these."""
    signed_by = who if who != actor else None
    rnd = data.get("round")
    return (
        signed_by,
        rnd if isinstance(rnd, int) and not isinstance(rnd, bool) else None,
        signed_by or site_of(actor, data),
    )


def trail_rows(entries: Iterable[Any], keep: TrailFilter = TrailFilter()) -> list[dict]:
    """One row per entry: seq, ts (when), actor (who wrote it), signed_by (the site whose
    statement it embeds, else None), type and what, why, round, site, entry_hash."""
    rows = []
    for e in entries:
        who, data = asserted(e)
        signed_by, rnd, site = locate(e.actor, who, data)
        row = {
            "seq": e.seq,
            "ts": e.ts,
            "actor": e.actor,
            "signed_by": signed_by,
            "type": e.type,
            "round": rnd,
            "site": site,
            "what": summarize(data),
            "why": why(e.type, data),
            "entry_hash": e.entry_hash,
        }
        if keep.keeps(row):
            rows.append(row)
    return rows


def count_by_type(rows: Sequence[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[r["type"]] = out.get(r["type"], 0) + 1
    return dict(sorted(out.items()))
