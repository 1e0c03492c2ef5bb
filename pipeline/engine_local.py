"""The in-process engine: the same site and strategy code, no processes.

For tests, sweeps and 100-site simulations. Sites train one after another in sorted order;
after every checkpoint each site's witness is asked to cosign it (as the NVFlare engine
does through its messages);
a site that raises is reported as failed and the round goes on without it (if at least
``min_sites`` remain). For the same seed and config it produces the same final model as the
NVFlare engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pharmafl.pipeline.coordinator import RoundAborted
from pharmafl.pipeline.events import EventBus
from pharmafl.pipeline.run import RunPlan, end_run, initial_state, make_site, server_side, start_run
from pharmafl.sites.site import Declined, FitResult, Instructions, Site

SiteFactory = Callable[[RunPlan, str], Site]


@dataclass
class LocalEngine:
    site_factory: SiteFactory = make_site
    transcript_dir: Path | None = None  # secure aggregation: where parties save what they receive (tests)

    def run(self, plan: RunPlan, bus: EventBus) -> dict:
        start = time.perf_counter()
        sites = {sid: self.site_factory(plan, sid) for sid in plan.sites}
        coord = server_side(plan, bus, transcript_dir=self.transcript_dir)
        state = initial_state(plan.cfg)
        start_run(plan, bus, engine="local")
        status, done, error = "completed", 0, None
        try:
            for r in range(1, plan.cfg.federation.rounds + 1):
                instructions = coord.start_round(r, state, list(sites))
                results, failures, declined = self._fit_all(sites, r, state, instructions)
                state = coord.finish_round(r, state, results, failures, declined).state
                done = r
                self._witness(bus, sites)
        except RoundAborted as exc:
            status = f"stopped: {exc}"
        except Exception as exc:  # recorded and re-raised: the run ends with what it has
            status, error = f"failed: {type(exc).__name__}: {exc}", exc
        finally:
            coord.close()
        site_metrics = {}
        for sid in sorted(sites):
            try:
                site_metrics[sid] = sites[sid].evaluate(state)
            except Exception as exc:  # a site down at the end is reported, not fatal
                site_metrics[sid] = {"error": repr(exc)}
        metrics = end_run(
            plan,
            coord,
            state,
            status=status,
            rounds=done,
            site_metrics=site_metrics,
            seconds=time.perf_counter() - start,
        )
        self._witness(bus, sites)  # the run_ended checkpoint
        if error is not None:
            raise error
        return metrics

    @staticmethod
    def _witness(bus: EventBus, sites: dict) -> None:
        """Deliver each site its request to cosign the latest checkpoint; hand back the answers."""
        answers = {}
        for sid, request in sorted(bus.witness_requests().items()):
            if sid not in sites:
                answers[sid] = "the site is not part of this engine"
                continue
            try:
                answers[sid] = sites[sid].witness(request)
            except Exception as exc:  # a refusal is recorded; the run goes on
                answers[sid] = f"{type(exc).__name__}: {exc}"
        bus.cosigned(answers)

    @staticmethod
    def _fit_all(sites: dict[str, Site], r: int, state, instructions: Instructions):
        results: dict[str, FitResult] = {}
        failures: dict[str, str] = {}
        declined: dict[str, Declined] = {}
        for sid in sorted(sites):
            try:
                out = sites[sid].fit(r, state, instructions)
            except Exception as exc:  # a failing site drops out of this round
                failures[sid] = f"{type(exc).__name__}: {exc}"
                continue
            if isinstance(out, Declined):
                declined[sid] = out
            else:
                results[sid] = out
        return results, failures, declined
