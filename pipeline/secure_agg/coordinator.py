"""The coordinator under secure aggregation: it relays envelopes and sees only the sum.

A round reads as the clear one does, with the sum done by the parties:

    collect envelopes -> hash -> validate header -> record commitments -> relay to the
    parties (each checks the site's signature, opens its share, agrees, MPC bound check,
    reveals the weighted sum to the server's party only if at least min_sites passed) ->
    record the parties' signed statements -> mean -> strategy -> record

Per-site diagnostics (update norms, cosines) and the drift alarm need individual updates
and are not computed; the ledger gets, per site, the commitment and share hashes
(``secure_shares``) and the bound-check result (``bound_check``), per party its signed
``party_registered`` / ``party_round`` / ``party_refused`` statements, and per round the
hash of the revealed sum, the participants and who was excluded and why
(``aggregated.secure``). The weights are the parties', taken from the sites' signed headers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from pharmafl.pipeline import events as ev
from pharmafl.pipeline.coordinator import Coordinator, RoundAborted, _report_problem
from pharmafl.pipeline.secure_agg.client import AggregationService, SecureAggregationError
from pharmafl.pipeline.secure_agg.config import SecureAggregationConfig
from pharmafl.pipeline.statements import statement_problem
from pharmafl.sites import update as wire
from pharmafl.sites.secret_sharing import ShareError, parse_envelope, unflatten
from pharmafl.sites.site import FitResult, State
from pharmafl.sites.update import Update


@dataclass
class SecureCoordinator(Coordinator):
    service: AggregationService | None = None
    settings: SecureAggregationConfig = field(default_factory=SecureAggregationConfig)
    context: str = ""  # the run's encryption context (RunPlan.secagg_context)
    local_parties: object = None  # simulation: the party services this process started (closed with it)
    party_keys: dict = field(default_factory=dict)  # party id -> pinned Ed25519 key (its card)
    _parsed: dict = field(default_factory=dict, repr=False)
    _registered: bool = field(default=False, repr=False)
    secure: bool = True

    def _party_statements(self, statements) -> None:
        """Put the parties' signed statements into the ledger, each checked against its card."""
        for stmt in statements:
            who = stmt.get("site") if isinstance(stmt, dict) else None
            why = (
                statement_problem(
                    stmt,
                    site=who,
                    round=stmt.get("round"),
                    run_id=self.run_id,
                    type_=stmt.get("type"),
                    payload=stmt.get("payload") or {},
                    key=self.party_keys.get(who, b""),
                )
                if who in self.party_keys
                else f"a statement by {who!r}, which is not a pinned party"
            )
            if why is not None:
                raise SecureAggregationError(f"an aggregation party sent a statement that does not verify: {why}")
            self.bus.emit_statement(stmt)

    def start_round(self, round: int, state: State, sites: list[str], step: int | None = None):
        if not self._registered:  # the parties' registrations, right after run_started (or run_resumed)
            self._party_statements(self.service.statements)
            self._registered = True
        return super().start_round(round, state, sites, step=step)

    def _check(self, site: str, round: int, res: FitResult, state: State) -> str | None:
        """Why an envelope is unusable, or None (its shares are checked by the parties)."""
        actual = wire.sha256(res.payload)
        if actual != res.update_hash:
            return f"envelope hash mismatch: site claimed {res.update_hash}, bytes hash to {actual}"
        try:
            env = parse_envelope(res.payload)
        except ShareError as exc:
            return str(exc)
        self._parsed[site] = env  # parsed once: _open takes it from here
        h = env.header
        if env.site != site or env.round != round or h.get("context") != self.context:
            return (
                f"envelope is labelled {env.site} round {env.round} of {h.get('context')!r}, expected "
                f"{site} round {round} of {self.context!r}"
            )
        expected = [(f"delta/{k}", tuple(np.shape(v))) for k, v in sorted(state.items())]
        if env.layout != expected:
            return f"envelope layout differs from the model's parameters (first: {env.layout[:2]} vs {expected[:2]})"
        missing = sorted(set(self.service.names) - set(env.blobs))
        if missing:
            return f"envelope holds no share for parties {missing}"
        if h["num_examples"] != res.num_examples or res.num_examples < 1:
            return f"example count {res.num_examples} is invalid or disagrees with the envelope's {h['num_examples']}"
        return _report_problem(res)

    def _open(self, site: str, round: int, res: FitResult):
        env = self._parsed.pop(site)
        self.bus.emit_statement(self._statements[site]["secure_shares"])  # the site's own, checked in _signed
        return env

    def _combine(self, round, state, envelopes, metrics, failed):
        self._parsed.clear()  # envelopes rejected after parsing
        cfg = self.settings
        by_site = {env.site: (env, self._statements[env.site]["secure_shares"]) for env in envelopes}
        res = self.service.run_round(round, by_site)
        self._party_statements(res.statements)
        if res.aborted is not None:
            raise RoundAborted(f"round {round}: the aggregation parties did not aggregate: {res.aborted}")
        excluded = {}
        for site in sorted(by_site):
            if site in res.excluded:
                excluded[site] = failed[site] = res.excluded[site]
            if site in res.passed:
                self.bus.emit(
                    ev.BOUND_CHECK,
                    "server",
                    round=round,
                    site=site,
                    passed=res.passed[site],
                    max_update_norm=cfg.max_update_norm,
                    slack=cfg.slack,
                    sketches=cfg.sketches,
                    buckets=cfg.buckets,
                    sketch_seed=res.sketch_seed,
                )
            elif site in excluded:
                self.bus.emit(ev.SITE_FAILED, "server", round=round, site=site, error=excluded[site])
        participants = [s for s in res.usable if res.passed[s]]
        self._require(round, participants, failed)
        if not res.revealed:
            raise RoundAborted(f"round {round}: the parties revealed no sum ({len(participants)} site(s) passed)")
        weight = {s: res.weights[s] for s in participants}
        total_weight = sum(weight.values())
        layout = by_site[participants[0]][0].layout
        mean = unflatten(np.asarray(res.total, np.float64) / total_weight, layout)
        num_examples = sum(by_site[s][0].header["num_examples"] for s in participants)
        new_state = self.strategy.aggregate_mean(state, Update("server", round, num_examples, mean), len(participants))
        weights = np.array([weight[s] / total_weight for s in participants])
        extra = {
            "secure": {
                "parties": list(self.service.names),
                "sum_hash": hashlib.sha256(np.asarray(res.total, "<f8").tobytes()).hexdigest(),
                "excluded": excluded,
                "seconds": {k: round_(v) for k, v in res.seconds.items()},
            }
        }
        return new_state, participants, weights, None, extra

    def close(self) -> None:
        if self.service is not None:
            self.service.close()
            self.service = None
        if self.local_parties is not None:
            self.local_parties.close()
            self.local_parties = None


def round_(x: float) -> float:
    return float(f"{x:.4g}")
