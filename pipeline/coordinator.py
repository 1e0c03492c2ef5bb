"""The server side of a round, shared by every engine.

An engine delivers the sites' :class:`~pharmafl.sites.site.FitResult` objects (in whatever
order they arrived) and the sites that failed; :meth:`Coordinator.finish_round` does the rest
in sorted site order:

    collect -> hash -> validate -> weigh -> aggregate -> diagnose -> record

Every step emits its events on the bus; nothing here writes the ledger directly.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from pharmafl.pipeline import events as ev
from pharmafl.pipeline.aggregate import State, add, site_weights
from pharmafl.pipeline.artifacts import checkpoint_hash, read_server_state, server_state_bytes
from pharmafl.pipeline.diagnostics import DriftMonitor, update_diagnostics
from pharmafl.pipeline.events import EventBus
from pharmafl.pipeline.statements import check_statements
from pharmafl.pipeline.strategies.base import Strategy
from pharmafl.sites import update as wire
from pharmafl.sites.signed_site import CLIP_KEYS, statement_payloads
from pharmafl.sites.site import Declined, FitResult, Instructions


class RoundAborted(Exception):
    """Fewer than ``min_sites`` sites returned a usable update."""


@dataclass
class RoundOutcome:
    round: int
    state: State
    participants: list[str]
    failed: dict[str, str]
    metrics: dict
    diagnostics: dict | None = None


@dataclass
class Coordinator:
    """Aggregates rounds with ``strategy`` and reports everything on ``bus``."""

    strategy: Strategy
    bus: EventBus
    weighting: str = "examples"
    min_sites: int = 1
    drift: DriftMonitor = field(default_factory=DriftMonitor)
    evaluate: Callable[[State], dict] | None = None  # benchmark metrics of a global state
    model_config: dict = field(default_factory=dict)  # stored with checkpoints (their hashes)
    stop_on_decline: bool = False  # privacy.on_exhausted == "stop"
    run_id: str = ""  # what every site statement of this run is bound to
    site_keys: Mapping[str, bytes] = field(default_factory=dict)  # pinned in the consortium's cards
    secure: bool = False  # results are secret-share envelopes (their statements say so)
    _statements: dict = field(default_factory=dict, repr=False)  # site -> {type: statement}, this round
    _steps: dict = field(default_factory=dict, repr=False)  # round -> step, rounds open

    def start_round(self, round: int, state: State, sites: list[str], step: int | None = None) -> Instructions:
        """Open ``round`` (the ``step``-th of the run; the same unless a resumed run redid one)."""
        step = round if step is None else step
        self._steps[round] = step
        self.bus.emit(ev.ROUND_STARTED, "server", round=round, step=step, sites=sorted(sites))
        return replace(self.strategy.instructions(round, state), step=step)

    def server_state(self) -> bytes:
        """What the server carries from round to round (strategy, drift monitor), as bytes whose
        hash ``round_ended`` records and the round's checkpoint holds."""
        arrays, data = self.strategy.state()
        return server_state_bytes(arrays, {"strategy": data, "drift_streak": dict(sorted(self.drift.streak.items()))})

    def load_server_state(self, blob: bytes) -> None:
        """Take up :meth:`server_state` (a resumed run)."""
        arrays, data = read_server_state(blob)
        self.strategy.load_state(arrays, data["strategy"])
        self.drift.streak = dict(data["drift_streak"])

    def finish_round(
        self,
        round: int,
        state: State,
        results: Mapping[str, FitResult],
        failures: Mapping[str, str] | None = None,
        declined: Mapping[str, Declined] | None = None,
        timed_out: Mapping[str, tuple[float, float]] | None = None,
    ) -> RoundOutcome:
        """Aggregate ``round``; ``timed_out``: site -> (timeout, seconds waited), no answer in time."""
        failed = dict(failures or {})
        declined = dict(declined or {})
        for site, (timeout, waited) in sorted((timed_out or {}).items()):
            self.bus.emit(
                ev.SITE_TIMED_OUT, "server", round=round, site=site, timeout_s=timeout, waited_s=round_s(waited)
            )
        for site in sorted(declined):
            d = declined[site]
            stmts, problem = check_statements(
                d.statements,
                [("site_declined", {"reason": d.reason, **d.details})],
                site=site,
                round=round,
                run_id=self.run_id,
                key=self.site_keys.get(site),
            )
            problem = problem or _fields_problem("decline", d.details)
            if problem is None and not isinstance(d.reason, str):
                problem = f"decline reason {d.reason!r} is not a string"
            if problem is not None:
                failed[site] = f"decline not accepted: {problem}"
                del declined[site]
                continue
            self.bus.emit_statement(stmts["site_declined"])
        if declined and self.stop_on_decline:
            raise RoundAborted(
                f"round {round}: {sorted(declined)} declined ({declined[min(declined)].reason}) "
                f"and privacy.on_exhausted is 'stop'"
            )
        updates, metrics = self._collect(round, state, results, failed)
        for site in sorted(failed):
            self.bus.emit(ev.SITE_FAILED, "server", round=round, site=site, error=failed[site])
        self._require(round, [u.site for u in updates], {**failed, **{s: "timed out" for s in timed_out or {}}})
        new_state, participants, weights, diag, extra = self._combine(round, state, updates, metrics, failed)
        applied = add(new_state, state, scale=-1.0)  # the global update actually applied
        self.bus.emit(
            ev.AGGREGATED,
            "server",
            round=round,
            participants=participants,
            weights={s: float(w) for s, w in zip(participants, weights)},
            aggregate_hash=checkpoint_hash(applied, {}),
            checkpoint_hash=checkpoint_hash(new_state, self.model_config),
            strategy=self.strategy.name,
            **extra,
        )
        spent = self.strategy.privacy_spent(round)
        if spent is not None:
            self.bus.emit(
                ev.PRIVACY_SPENT, "server", round=round, party="server", **spent
            )  # its own, unsigned by sites
        for alarm in self.drift.observe(diag["cosine_to_mean"]) if diag else ():
            self.bus.emit(ev.ALARM, "server", round=round, **alarm)
        round_metrics = {"sites": metrics}
        if self.evaluate is not None:
            round_metrics["global"] = self.evaluate(new_state)
        self.bus.emit(
            ev.ROUND_ENDED,
            "server",
            round=round,
            step=self._steps.pop(round, round),
            metrics=round_metrics,
            diagnostics=diag,
            server_state_hash=hashlib.sha256(self.server_state()).hexdigest(),
        )
        return RoundOutcome(round, new_state, participants, failed, round_metrics, diag)

    def _require(self, round: int, usable: list[str], failed: Mapping[str, str]) -> None:
        if len(usable) < self.min_sites:
            raise RoundAborted(
                f"round {round}: {len(usable)} usable update(s) from {sorted(usable)}, "
                f"fewer than min_sites={self.min_sites}; failed: {dict(failed)}"
            )

    def _combine(self, round, state, updates, metrics, failed):
        """(new state, participants, their weights, diagnostics, extra ``aggregated`` payload)."""
        losses = [metrics[u.site]["global_val_mse"] for u in updates] if self.weighting == "quality" else None
        weights = site_weights(self.weighting, [u.num_examples for u in updates], losses)
        new_state = self.strategy.aggregate(state, updates, weights)
        diag = update_diagnostics([u.site for u in updates], [u.delta for u in updates], weights)
        return new_state, [u.site for u in updates], weights, diag, {}

    def _collect(self, round, state, results, failed):
        """Check and open each result in sorted site order."""
        updates, metrics = [], {}
        self._statements = {}
        for site in sorted(results):
            res = results[site]
            stmts, problem = self._signed(site, round, res)
            if problem is not None:  # nothing the site claimed can be recorded as its statement
                failed[site] = problem
                continue
            self._statements[site] = stmts
            problem = self._check(site, round, res, state)
            self.bus.emit_statement(stmts["site_update"], accepted=problem is None, problem=problem)
            for type_ in ("clip", "privacy_spent"):  # spent even if the update is rejected
                if type_ in stmts and _privacy_problem(res.privacy) is None:
                    self.bus.emit_statement(stmts[type_])
            if problem is not None:
                failed[site] = problem
                continue
            updates.append(self._open(site, round, res))
            metrics[site] = dict(res.metrics)
        return updates, metrics

    def _signed(self, site: str, round: int, res: FitResult) -> tuple[dict, str | None]:
        """The result's statements by type, checked against the result and the pinned key."""
        if res.site != site or res.round != round:
            return {}, f"result is labelled {res.site} round {res.round}, expected {site} round {round}"
        try:
            expected = statement_payloads(res, self.secure)
        except Exception as exc:  # an envelope that does not parse: the site's result is unusable
            return {}, f"{type(exc).__name__}: {exc}"
        stmts, problem = check_statements(
            res.statements, expected, site=site, round=round, run_id=self.run_id, key=self.site_keys.get(site)
        )
        return stmts, None if problem is None else f"statement not accepted: {problem}"

    def _check(self, site: str, round: int, res: FitResult, state: State) -> str | None:
        problem = _validate(site, round, res, state, self.strategy.required_parts)
        if problem is None and self.weighting == "quality":
            problem = _quality_problem(res.metrics)
        return problem

    def _open(self, site: str, round: int, res: FitResult):
        return wire.decode(res.payload)

    def finish_run(self, state: State, status: str, rounds: int, model_hash: str, metrics: dict) -> None:
        self.bus.emit(
            ev.RUN_ENDED,
            "server",
            status=status,
            rounds=rounds,
            model_hash=model_hash,
            metrics=metrics,
            finished_at=time.time(),
        )

    def close(self) -> None:
        """Release what the coordinator started (the secure-aggregation parties); idempotent."""


def round_s(seconds: float) -> float:
    return float(f"{seconds:.4g}")


def _validate(site: str, round: int, res: FitResult, state: State, required_parts=("delta",)) -> str | None:
    """Why an update is unusable, or None."""
    actual = wire.sha256(res.payload)
    if actual != res.update_hash:
        return f"update hash mismatch: site claimed {res.update_hash}, bytes hash to {actual}"
    try:
        upd = wire.decode(res.payload)
    except wire.UpdateError as exc:
        return str(exc)
    if upd.site != site or upd.round != round:
        return f"update is labelled {upd.site} round {upd.round}, expected {site} round {round}"
    missing = sorted(set(required_parts) - set(upd.parts))
    if missing:
        return f"update lacks the parts {missing} the strategy needs (it holds {sorted(upd.parts)})"
    for part, arrays in sorted(upd.parts.items()):
        if set(arrays) != set(state):
            return f"{part}/ parameters differ from the model's: {sorted(set(arrays) ^ set(state))[:5]}"
        for k, v in arrays.items():
            if v.shape != np.shape(state[k]):
                return f"{part}/{k} has shape {v.shape}, expected {np.shape(state[k])}"
            if not np.all(np.isfinite(v)):
                return f"{part}/{k} holds NaN or infinite values"
    problem = _report_problem(res)
    if problem is not None:
        return problem
    if type(res.num_examples) is not int or not 1 <= res.num_examples <= MAX_EXAMPLES:
        return f"example count {res.num_examples!r:.40} is not an integer in 1..{MAX_EXAMPLES} (2**53)"
    if upd.num_examples != res.num_examples:
        return f"example count {res.num_examples} disagrees with the payload's {upd.num_examples}"
    return None


def _report_problem(res: FitResult) -> str | None:
    """Why a result's metrics or privacy report are unusable, or None."""
    if not isinstance(res.metrics, dict):
        return f"metrics malformed: a {type(res.metrics).__name__}, not a mapping"
    not_str = [k for k in res.metrics if not isinstance(k, str)]
    if not_str:
        return f"metrics malformed: keys that are not strings {not_str!r:.200}"
    bad = [k for k, v in res.metrics.items() if not _number(v)]
    if bad:
        return f"metrics {bad} are not finite numbers: {[res.metrics[k] for k in bad]!r:.200}"
    if res.privacy is not None:
        return _privacy_problem(res.privacy)
    return None


# The fields the coordinator itself records beside a site's statement (events.emit_statement):
# a report naming one would overwrite them (a privacy report claiming another round or site).
RESERVED_KEYS = ("round", "site", "party", "accepted", "problem")
MAX_EXAMPLES = 2**53  # a larger count has no exact JSON form; summed weights could overflow to inf


def _number(v) -> bool:
    """A finite int or float (not a bool); an int too large for a double is not."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an int beyond the doubles
        return False


def _fields_problem(what: str, values: dict, *, numbers: tuple[str, ...] = ()) -> str | None:
    """Why a site's report (a mapping the ledger records field by field) is unusable, or None:
    keys that are not strings or are the coordinator's own, values that are not JSON scalars,
    ``numbers`` that are missing or not finite numbers."""
    if not isinstance(values, dict):
        return f"{what} malformed: a {type(values).__name__}, not a mapping"
    not_str = [k for k in values if not isinstance(k, str)]
    reserved = [k for k in values if k in RESERVED_KEYS]
    bad = [k for k, v in values.items() if not (isinstance(v, str) or v is None or _number(v))]
    missing = [k for k in numbers if not _number(values.get(k))]
    if not (not_str or reserved or bad or missing):
        return None
    parts = [f"keys that are not strings {not_str!r:.200}"] if not_str else []
    parts += [f"reserved keys {reserved} (the coordinator records round and site itself)"] if reserved else []
    parts += [f"non-finite or non-scalar {bad}"] if bad else []
    parts += [f"missing or not a finite number {missing}"] if missing else []
    return f"{what} malformed: {'; '.join(parts)}"


def _quality_problem(metrics: dict) -> str | None:
    """Why a site cannot be weighted by quality, :math:`w_i \\propto n_i / \\ell_i`, or None: its
    validation loss :math:`\\ell_i` (``global_val_mse``) must be there, finite and positive. A
    missing one ended the round; one of 0 or below was clamped to 1e-8, a near-total weight."""
    loss = metrics.get("global_val_mse") if isinstance(metrics, dict) else None
    if not _number(loss) or loss <= 0:
        return (
            f"federation.weighting 'quality' needs the site's metrics.global_val_mse, a finite positive "
            f"number; got {loss!r:.40}"
        )
    return None


def _privacy_problem(privacy: dict) -> str | None:
    """A DP site's report: the clip counts always; ε of the round and in total once it spends."""
    spends = isinstance(privacy, dict) and "epsilon_total" in privacy
    numbers = ("clipped", "total") + (("epsilon_round", "epsilon_total") if spends else ())
    missing = [k for k in CLIP_KEYS if isinstance(privacy, dict) and k not in privacy]
    if missing:
        return f"privacy report malformed: missing {missing}"
    return _fields_problem("privacy report", privacy, numbers=numbers)
