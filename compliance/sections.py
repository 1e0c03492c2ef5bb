"""The report's sections computed from ledger entries: privacy, lineage, run summary.

Pure functions of the (already verified) entries; numbers that JSON cannot hold (NaN,
infinity) become ``None``. Each returns plain JSON data that goes into the signed record
``report.json`` unchanged, so the PDF, HTML and Parquet copies all show the same figures.

What a site asserts (its update hash, ε spent, commitment, a decline) is a statement the site
signed, embedded in the coordinator's entry; every figure here is read through
:func:`pharmafl.audit.records.asserted`, so it is the site's own, under the site's name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from pharmafl.audit.records import asserted

EPS_TOLERANCE = 1e-9


def clean(value: Any) -> Any:
    """``value`` with non-finite floats as None and tuples as lists (canonical JSON can hold it)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def _first(entries: Sequence[Any], type_: str) -> dict | None:
    return next((e.data for e in entries if e.type == type_), None)


def _last(entries: Sequence[Any], type_: str) -> dict | None:
    return next((e.data for e in reversed(entries) if e.type == type_), None)


def privacy_section(entries: Sequence[Any]) -> dict:
    """Per site: ε by round, δ, accountant, unit in words, budget, and whether it was respected."""
    started = _first(entries, "run_started") or {}
    settings = started.get("privacy")
    spent = [e for e in entries if e.type == "privacy_spent"]
    declined = [e for e in entries if e.type == "site_declined"]
    if not settings and not spent:
        return {
            "enabled": False,
            "statement": "This run was trained without differential privacy: no (ε, δ) "
            "guarantee applies to any site's data.",
            "sites": [],
        }
    settings = settings or {}
    sites: dict[str, dict] = {}
    for e in spent:
        party, d = asserted(e)
        s = sites.setdefault(party, {"party": party, "epsilon_by_round": [], "declined_rounds": []})
        s["epsilon_by_round"].append([d.get("round"), d.get("epsilon_round"), d.get("epsilon_total")])
        for key in (
            "delta",
            "accountant",
            "noise_multiplier",
            "sample_rate",
            "steps",
            "privacy_unit",
            "budget",
            "noise_source",
            "epsilon_prior",
        ):
            if key in d:
                s[key] = d[key]
    for e in declined:
        party, d = asserted(e)
        sites.setdefault(party, {"party": party, "epsilon_by_round": [], "declined_rounds": []})[
            "declined_rounds"
        ].append(d.get("round"))
    for s in sites.values():
        totals = [t for _, _, t in s["epsilon_by_round"] if isinstance(t, (int, float))]
        s["epsilon_total"] = max(totals) if totals else 0.0
        budget = s.get("budget")
        s["respected"] = budget is None or s["epsilon_total"] <= budget + EPS_TOLERANCE
    respected = all(s["respected"] for s in sites.values())
    unit = settings.get("unit") or next((s.get("privacy_unit") for s in sites.values()), None)
    protects = settings.get("protects") or f"one {unit}"
    mode = settings.get("mode", "local")
    where = (
        "each site trains with DP-SGD (Opacus) under its own budget"
        if mode == "local"
        else "the server adds client-level noise to the aggregate (DP-FedAvg)"
    )
    statement = (
        f"Differential privacy mode '{mode}': {where}. The privacy unit is {unit}: the guarantee "
        f"protects {protects}. Accountant: {settings.get('accountant') or 'see per party'}. "
        + (
            "Every party stayed within its ε budget."
            if respected
            else "WARNING: at least one party exceeded its ε budget."
        )
    )
    return clean(
        {
            "enabled": True,
            "mode": mode,
            "unit": unit,
            "protects": protects,
            "accountant": settings.get("accountant"),
            "budget": settings.get("epsilon"),
            "clip_norm": settings.get("clip_norm"),
            "respected": respected,
            "statement": statement,
            "sites": [sites[k] for k in sorted(sites)],
        }
    )


def lineage_section(entries: Sequence[Any], model_sha256: str | None) -> dict:
    """Data-manifest hashes -> rounds (update and aggregate hashes) -> final model hash.

    Under secure aggregation each site's update also carries its ``commitment`` (from
    ``secure_shares``) and each round the ``secure`` sum hash, parties and exclusions.
    """
    started = _first(entries, "run_started") or {}
    ended = _last(entries, "run_ended") or {}
    rounds: dict[int, dict] = {}
    for e in entries:
        site, d = asserted(e)
        if e.type == "site_update":
            u = rounds.setdefault(d.get("round"), {"round": d.get("round"), "updates": {}})["updates"].setdefault(
                site, {}
            )
            u.pop("kind", None)
            u.update(
                {
                    "update_hash": d.get("update_hash"),
                    "accepted": d.get("accepted", True),
                    "num_examples": d.get("num_examples"),
                }
            )
        elif e.type == "secure_shares":  # secure aggregation: the site's salted commitment to its plaintext update
            u = rounds.setdefault(d.get("round"), {"round": d.get("round"), "updates": {}})["updates"].setdefault(
                site,
                {
                    "update_hash": d.get("commitment"),
                    "accepted": True,
                    "num_examples": d.get("num_examples"),
                    "kind": "commitment (secure aggregation)",
                },
            )
            u["commitment"] = d.get("commitment")
        elif e.type == "aggregated":
            r = rounds.setdefault(d.get("round"), {"round": d.get("round"), "updates": {}})
            r.update({k: d.get(k) for k in ("aggregate_hash", "checkpoint_hash", "participants", "strategy")})
            if isinstance(d.get("secure"), dict):  # the hash of the secure sum the aggregate was computed from
                r["secure"] = {k: d["secure"].get(k) for k in ("parties", "sum_hash", "excluded")}
    model_hash = ended.get("model_hash")
    return clean(
        {
            "manifests": manifests_of(started),
            "config_hash": started.get("config_hash"),
            "rounds": [rounds[k] for k in sorted(rounds, key=lambda r: (r is None, r))],
            "model_hash": model_hash,
            "model_file_sha256": model_sha256,
            "model_file_matches": None if model_sha256 is None else model_sha256 == model_hash,
        }
    )


def manifests_of(started: dict) -> dict[str, str]:
    """Each site's data-manifest SHA-256: from the consortium's site cards pinned in
    ``run_started`` (each card signed by its site), else the run's own ``manifests``."""
    cards = (started.get("consortium") or {}).get("cards") or {}
    if cards:
        return {site: card.get("manifest_sha256") for site, card in sorted(cards.items())}
    return dict(sorted((started.get("manifests") or {}).items()))


def sessions_of(entries: Sequence[Any]) -> list[dict]:
    """One row per session of the run, in ledger order: ``run_started`` opens session 1, each
    ``run_resumed`` the next; a session's ``ended_status`` is its ``run_ended`` status, or None
    when it ended without one (interrupted: a crash or a kill), so a reader sees every stop."""
    sessions: list[dict] = []
    for e in entries:
        if e.type in ("run_started", "run_resumed"):
            d, resumed = e.data, e.type == "run_resumed"
            sessions.append(
                {
                    "session": d.get("session") if resumed else 1,
                    "started_seq": e.seq,
                    "ts": getattr(e, "ts", None),
                    "first_round": d.get("next_round") if resumed else 1,
                    "from_round": d.get("from_round") if resumed else None,
                    "checkpoint_hash": d.get("checkpoint_hash") if resumed else None,
                    "previous_status": d.get("previous_status") if resumed else None,
                    "reason": d.get("reason") if resumed else None,
                    "engine": d.get("engine"),
                    "git_commit": d.get("git_commit"),
                    "ended_status": None,
                }
            )
        elif e.type == "run_ended" and sessions and sessions[-1]["ended_status"] is None:
            sessions[-1]["ended_status"] = e.data.get("status")
    return sessions


def summary_section(entries: Sequence[Any]) -> dict:
    """Config, versions, sessions, global and per-site metrics, validation curves, cosine diagnostics.

    A resumed run is one run in several sessions; its status and rounds are those of the last
    session's ``run_ended``. When the last session has none (it was interrupted) the run is
    incomplete, whatever an earlier session's ``run_ended`` said.
    """
    started = _first(entries, "run_started") or {}
    sessions = sessions_of(entries)
    ended = _last(entries, "run_ended") or {}
    incomplete = "no run_ended entry: run incomplete"
    if len(sessions) > 1 and sessions[-1]["ended_status"] is None:
        ended = {}
        incomplete = f"no run_ended entry in session {sessions[-1]['session']}: run incomplete"
    curves, cosine_by_round, global_by_round, last_diag = [], [], [], None
    for e in entries:
        if e.type != "round_ended":
            continue
        d = e.data
        metrics, diag = d.get("metrics") or {}, d.get("diagnostics") or {}
        for site, m in sorted((metrics.get("sites") or {}).items()):
            curves.append(
                {
                    "round": d.get("round"),
                    "site": site,
                    "global_val_ci": m.get("global_val_ci"),
                    "global_val_mse": m.get("global_val_mse"),
                }
            )
        if metrics.get("global"):
            global_by_round.append({"round": d.get("round"), **metrics["global"]})
        if diag.get("cosine_to_mean"):
            cosine_by_round.append({"round": d.get("round"), **diag["cosine_to_mean"]})
        if diag.get("sites"):
            last_diag = {"sites": diag["sites"], "matrix": diag.get("cosine_matrix")}
    final = ended.get("metrics") or {}
    return clean(
        {
            "run_id": started.get("run_id"),
            "status": ended.get("status", incomplete),
            "rounds": ended.get("rounds"),
            "sessions": sessions,
            "interrupted_rounds": sorted(
                {r for e in entries if e.type == "run_resumed" for r in e.data.get("interrupted_rounds") or []}
            ),
            "timed_out": [
                {k: e.data.get(k) for k in ("round", "site", "timeout_s", "waited_s")}
                for e in entries
                if e.type == "site_timed_out"
            ],
            "engine": started.get("engine"),
            "seed": started.get("seed"),
            "git_commit": started.get("git_commit"),
            "config_hash": started.get("config_hash"),
            "config": flatten(started.get("config") or {}),
            "versions": started.get("versions") or {},
            "sites": started.get("sites") or sorted(manifests_of(started)),
            "global_metrics": {k: v for k, v in final.items() if k.startswith("test_")},
            "site_metrics": final.get("sites") or {},
            "global_by_round": global_by_round,
            "validation_curves": curves,
            "cosine_to_mean_by_round": cosine_by_round,
            "cosine_last_round": last_diag,
            "alarms": [e.data for e in entries if e.type == "alarm"],
            "failures": [e.data for e in entries if e.type == "site_failed"],
        }
    )


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists and scalars kept as leaves."""
    out: dict[str, Any] = {}
    for key, value in sorted(tree.items()):
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out
