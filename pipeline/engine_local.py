"""The in-process engine: the same site and strategy code, no processes.

For tests, sweeps and 100-site simulations. Sites train one after another in sorted order;
after every checkpoint each site's witness is asked to cosign it (as the NVFlare engine
does through its messages);
a site that raises is reported as failed and the round goes on without it (if at least
``min_sites`` remain). With ``federation.round_timeout_s`` each site's call runs on a worker
thread waited for that long (sites train one after another here, so each has the whole
timeout): a site still busy then is recorded as timed out; in the next round it is first given
the timeout to finish that late call (its result is dropped), then trains as usual. For the same seed and
config it produces the same final model as the NVFlare engine. The round lifecycle itself is
:class:`~pharmafl.pipeline.rounds.RoundDriver`'s.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from pharmafl.pipeline.events import EventBus
from pharmafl.pipeline.rounds import RoundDriver, RoundTask
from pharmafl.pipeline.run import RunPlan, make_site, server_side
from pharmafl.sites.site import Declined, FitResult, Site

SiteFactory = Callable[[RunPlan, str], Site]


class Replies(NamedTuple):
    """What the sites answered in one round."""

    results: dict[str, FitResult]
    failures: dict[str, str]
    declined: dict[str, Declined]
    timed_out: dict[str, tuple[float, float]]  # site -> (timeout, seconds waited)


@dataclass
class LocalEngine:
    site_factory: SiteFactory = make_site
    transcript_dir: Path | None = None  # secure aggregation: where parties save what they receive (tests)
    _busy: dict = field(default_factory=dict, repr=False)  # site -> the worker still running its late call

    def run(self, plan: RunPlan, bus: EventBus, resume=None) -> dict:
        """One session of ``plan``'s run (``resume``: a :class:`~pharmafl.pipeline.resume.ResumePoint`)."""
        sites = {sid: self.site_factory(plan, sid) for sid in plan.sites}
        coord = server_side(plan, bus, transcript_dir=self.transcript_dir)
        try:
            driver = RoundDriver(plan, bus, coord, engine="local", resume=resume)
        except BaseException:
            coord.close()
            raise
        try:
            driver.begin()
            if resume is not None:
                self._witness(bus, sites)  # the run_resumed checkpoint (and what the crash left uncosigned)
            while (task := driver.next_round()) is not None:
                if not driver.complete(*self._fit_all(sites, task)):
                    break
                self._witness(bus, sites)
        except Exception as exc:  # recorded and re-raised: the run ends with what it has
            driver.fail(exc)
        finally:
            coord.close()
        site_metrics = {}
        for sid in sorted(sites):
            try:
                site_metrics[sid] = sites[sid].evaluate(driver.state)
            except Exception as exc:  # a site down at the end is reported, not fatal
                site_metrics[sid] = {"error": repr(exc)}
        metrics = driver.end(site_metrics)
        self._witness(bus, sites)  # the run_ended checkpoint
        if driver.error is not None:
            raise driver.error
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

    def _fit_all(self, sites: dict[str, Site], task: RoundTask) -> Replies:
        replies = Replies({}, {}, {}, {})
        for sid in sorted(sites):
            begun = time.monotonic()
            worker = self._busy.pop(sid, None)
            if worker is not None:  # still on a late call: this round's timeout is its time to finish it
                worker.join(task.timeout_s)
                if worker.is_alive():
                    self._busy[sid] = worker
                    replies.timed_out[sid] = (task.timeout_s, time.monotonic() - begun)
                    continue
            try:
                out = self._call(sid, sites[sid], task)
            except TimeoutError:
                replies.timed_out[sid] = (task.timeout_s, time.monotonic() - begun)
                continue
            except Exception as exc:  # a failing site drops out of this round
                replies.failures[sid] = f"{type(exc).__name__}: {exc}"
                continue
            (replies.declined if isinstance(out, Declined) else replies.results)[sid] = out
        return replies

    def _call(self, sid: str, site: Site, task: RoundTask):
        """``site.fit`` for ``task``; with a timeout, on a worker thread waited for that long."""
        if task.timeout_s is None:
            return site.fit(task.round, task.state, task.instructions)
        box: dict = {}

        def work():
            try:
                box["out"] = site.fit(task.round, task.state, task.instructions)
            except BaseException as exc:  # noqa: BLE001 - handed to the round below
                box["error"] = exc

        worker = threading.Thread(target=work, name=f"pharmafl-{sid}-round-{task.round}", daemon=True)
        worker.start()
        worker.join(task.timeout_s)
        if worker.is_alive():
            self._busy[sid] = worker
            raise TimeoutError(sid)
        if "error" in box:
            raise box["error"]
        return box["out"]
