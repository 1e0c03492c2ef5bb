"""The coordinator under secure aggregation: it relays envelopes and sees only the sum.

A round reads as the clear one does, with the sum done by the parties:

    collect envelopes -> hash -> validate header -> record commitments -> secure-sum
    (open shares, agree, MPC bound check, reveal the weighted sum to the server) ->
    mean -> strategy -> record

Per-site diagnostics (update norms, cosines) and the drift alarm need individual updates
and are not computed; the ledger gets, per site, the commitment and share hashes
(``secure_shares``) and the bound-check result (``bound_check``), and per round the hash of
the revealed sum, the participants and who was excluded and why (``aggregated.secure``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
from pharmafl.pipeline import events as ev
from pharmafl.pipeline.coordinator import Coordinator, _report_problem
from pharmafl.pipeline.secure_agg.config import SecureAggregationConfig
from pharmafl.pipeline.secure_agg.service import AggregationService
from pharmafl.sites import update as wire
from pharmafl.sites.secret_sharing import ShareError, parse_envelope, unflatten
from pharmafl.sites.site import FitResult, State
from pharmafl.sites.update import Update


@dataclass
class SecureCoordinator(Coordinator):
    service: AggregationService | None = None
    settings: SecureAggregationConfig = field(default_factory=SecureAggregationConfig)
    context: str = ""  # the run's encryption context (RunPlan.secagg_context)
    _parsed: dict = field(default_factory=dict, repr=False)
    secure: bool = True

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
            return (f"envelope is labelled {env.site} round {env.round} of {h.get('context')!r}, expected "
                    f"{site} round {round} of {self.context!r}")  # fmt: skip
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
        by_site = {e.site: e for e in envelopes}
        weight = {s: (e.header["num_examples"] if self.weighting == "examples" else 1) for s, e in by_site.items()}
        length = sum(int(np.prod(np.shape(v), dtype=np.int64)) for v in state.values())
        res = self.service.run_round(round, by_site, weight, context=self.context, length=length,
                                     max_norm=cfg.max_update_norm, slack=cfg.slack, sketches=cfg.sketches,
                                     buckets=cfg.buckets)  # fmt: skip
        excluded = {}
        for site in sorted(res.unopened):
            excluded[site] = failed[site] = f"share could not be opened: {res.unopened[site]}"
            self.bus.emit(ev.SITE_FAILED, "server", round=round, site=site, error=failed[site])
        for site in res.usable:
            self.bus.emit(ev.BOUND_CHECK, "server", round=round, site=site, passed=res.passed[site],
                          max_update_norm=cfg.max_update_norm, slack=cfg.slack, sketches=cfg.sketches,
                          buckets=cfg.buckets, sketch_seed=res.sketch_seed)  # fmt: skip
            if not res.passed[site]:
                excluded[site] = failed[site] = (f"update over the agreed norm bound {cfg.max_update_norm} "
                                                 f"(MPC check; the update was not revealed)")  # fmt: skip
        participants = [s for s in res.usable if res.passed[s]]
        self._require(round, participants, failed)
        total_weight = sum(weight[s] for s in participants)
        mean = unflatten(np.asarray(res.total, np.float64) / total_weight, by_site[participants[0]].layout)
        num_examples = sum(by_site[s].header["num_examples"] for s in participants)
        new_state = self.strategy.aggregate_mean(state, Update("server", round, num_examples, mean), len(participants))
        weights = np.array([weight[s] / total_weight for s in participants])
        extra = {"secure": {"parties": list(self.service.names),
                            "sum_hash": hashlib.sha256(np.asarray(res.total, "<f8").tobytes()).hexdigest(),
                            "excluded": excluded, "seconds": {k: round_(v) for k, v in res.seconds.items()}}}  # fmt: skip
        return new_state, participants, weights, None, extra

    def close(self) -> None:
        if self.service is not None:
            self.service.close()
            self.service = None


def round_(x: float) -> float:
    return float(f"{x:.4g}")
