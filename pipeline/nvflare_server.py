"""NVFlare server components: the run's coordinator inside NVFlare's FedAvg workflow.

NVFlare's built-in aggregation sums updates in arrival order (irreproducible) and would see
plain weights only. :class:`PharmaflAggregator` buffers every site's result in
``accept_model`` and, in ``aggregate_model``, hands them all to the same
:class:`~pharmafl.pipeline.coordinator.Coordinator` the in-process engine uses, which sums in
sorted site order. It returns the full new global weights (NVFlare replaces its global model
with them) and the next round's instructions in the model's ``meta``.

The job runs ``rounds + 2`` NVFlare rounds: round ``rounds + 1`` only asks every site to
evaluate the final model on its own validation and test data, and the last one only asks
the sites to cosign the ``run_ended`` checkpoint. Every model the server sends after a
checkpoint carries the witness requests for it; the sites' cosignatures come back with
their next results and go to the ledger (:meth:`EventBus.cosigned`).

:class:`PlanPersistor` gives NVFlare the initial weights, rebuilt from the plan's model
config and seed (no torch model class travels in the job config).

Both read the run's plan from the coordinator's run directory: ``plan_path`` is absolute in
the simulator and in POC; in a job for a provisioned system it is ``<run name>/plan.json``,
relative to the runs folder the server kit's ``local/pharmafl.json`` names
(:func:`pharmafl.pipeline.provision.runs_of_kit`), so the job names no path of the server.
"""

from __future__ import annotations

import time
from pathlib import Path

from nvflare.apis.event_type import EventType
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.abstract.model import ModelLearnable, make_model_learnable
from nvflare.app_common.abstract.model_persistor import ModelPersistor
from nvflare.app_common.aggregators.model_aggregator import ModelAggregator
from nvflare.app_common.app_constant import AppConstants

from pharmafl.pipeline.coordinator import RoundAborted
from pharmafl.pipeline.events import EventBus
from pharmafl.pipeline.nvflare_wire import (
    STOP_METRIC,
    WITNESS_KEY,
    WITNESS_ONLY,
    encode_instructions,
    result_from_model,
    witness_answer,
)
from pharmafl.pipeline.run import RunPlan, end_run, initial_state, server_side, start_run
from pharmafl.sites.site import Declined


def load_plan(plan_path: str, fl_ctx=None) -> RunPlan:
    """The plan at ``plan_path``: absolute, or relative to the server kit's runs folder."""
    path = Path(plan_path)
    if not path.is_absolute():
        from pharmafl.errors import ConfigError
        from pharmafl.pipeline.provision import runs_of_kit

        runs = runs_of_kit(Path(fl_ctx.get_workspace().get_root_dir()))
        path = runs / path
        if not path.is_file():
            raise ConfigError(
                f"{path}: no such plan; the server's runs folder {runs} holds no run "
                f"{path.parent.name!r}: prepare it there (pharmafl run --out {path.parent} ...)"
            )
    return RunPlan.load(path)


class PlanPersistor(ModelPersistor):
    """Initial weights from the plan; the final model is saved by the aggregator."""

    def __init__(self, plan_path: str):
        super().__init__()
        self.plan_path = plan_path

    def load_model(self, fl_ctx) -> ModelLearnable:
        return make_model_learnable(initial_state(load_plan(self.plan_path, fl_ctx).cfg), {})

    def save_model(self, model_learnable: ModelLearnable, fl_ctx) -> None:
        """Nothing to do: ``RUN/model.safetensors`` is written once, at the end of the run."""


class PharmaflAggregator(ModelAggregator):
    """Buffers all site results of a round, then runs the pharmafl coordinator on them."""

    def __init__(self, plan_path: str):
        super().__init__()
        self.plan_path = plan_path
        self._buffer: dict[str, FLModel] = {}
        self.plan: RunPlan | None = None

    def handle_event(self, event_type: str, fl_ctx) -> None:
        super().handle_event(event_type, fl_ctx)
        if event_type == EventType.START_RUN:
            self._start(fl_ctx)
        elif event_type == EventType.END_RUN and self.plan is not None:
            try:
                self.coord.close()
            finally:
                self.bus.close()

    def _start(self, fl_ctx) -> None:
        from pharmafl.pipeline.engines import run_listeners

        self.plan = load_plan(self.plan_path, fl_ctx)
        self.started = time.perf_counter()
        self.bus = EventBus(run_listeners(self.plan))
        self.coord = server_side(self.plan, self.bus)
        self.state = initial_state(self.plan.cfg)
        self.rounds_done, self.stopped, self.finished, self._asked = 0, None, False, set()
        start_run(self.plan, self.bus, engine="nvflare")
        self.instructions = self.coord.start_round(1, self.state, list(self.plan.sites))

    def accept_model(self, model: FLModel) -> None:
        self._buffer[model.meta["client_name"]] = model

    def reset_stats(self) -> None:
        self._buffer = {}

    def aggregate_model(self) -> FLModel:
        r = int(self.fl_ctx.get_prop(AppConstants.CURRENT_ROUND)) + 1
        received, self._buffer = self._buffer, {}
        self.bus.cosigned(
            {s: a for s in self.plan.sites if (a := witness_answer(received.get(s))) is not None}
            | {s: "no answer from the site" for s in self._asked if s not in received}
        )
        if self.finished:  # the witness-only round after run_ended: the job is done
            return FLModel(
                params_type=ParamsType.FULL,
                params=self.state,
                metrics={STOP_METRIC: 1.0},
                meta=encode_instructions(None),
            )
        rounds = self.plan.cfg.federation.rounds
        if r > rounds or self.stopped:
            return self._finish(received, status=self.stopped)
        results, failures, declined = {}, {}, {}
        for site in self.plan.sites:
            if site not in received:
                failures[site] = "no result: the site dropped out (see its NVFlare log)"
                continue
            outcome = result_from_model(site, r, received[site])
            if isinstance(outcome, str):
                failures[site] = outcome
            elif isinstance(outcome, Declined):
                declined[site] = outcome
            else:
                results[site] = outcome
        try:
            self.state = self.coord.finish_round(r, self.state, results, failures, declined).state
            self.rounds_done = r
        except RoundAborted as exc:
            self.stopped = f"stopped: {exc}"
            return self._finish({}, status=self.stopped)
        except Exception as exc:  # recorded; the job stops and the driver reports the status
            self.stopped = f"failed: {type(exc).__name__}: {exc}"
            return self._finish({}, status=self.stopped)
        if r < rounds:
            self.instructions = self.coord.start_round(r + 1, self.state, list(self.plan.sites))
            meta = encode_instructions(self.instructions)
        else:
            meta = encode_instructions(None)  # the extra round: evaluate the final model only
        return FLModel(
            params_type=ParamsType.FULL, params=self.state, metrics={STOP_METRIC: 0.0}, meta=self._witnessed(meta)
        )

    def _witnessed(self, meta: dict) -> dict:
        """``meta`` plus the requests to cosign the checkpoint just written (one per site)."""
        requests = self.bus.witness_requests()
        self._asked = set(requests)
        return {**meta, WITNESS_KEY: requests} if requests else meta

    def _finish(self, received: dict[str, FLModel], status: str | None = None) -> FLModel:
        site_metrics = {}
        for site in self.plan.sites:
            m = received.get(site)
            if m is not None and "final_metrics" in (m.meta or {}):
                site_metrics[site] = dict(m.meta["final_metrics"])
            else:
                site_metrics[site] = {"error": "no final evaluation (run stopped or site dropped out)"}
        end_run(
            self.plan,
            self.coord,
            self.state,
            status=status or "completed",
            rounds=self.rounds_done,
            site_metrics=site_metrics,
            seconds=time.perf_counter() - self.started,
        )
        self.finished = True  # one more exchange: the sites cosign the run_ended checkpoint
        return FLModel(
            params_type=ParamsType.FULL,
            params=self.state,
            metrics={STOP_METRIC: 0.0},
            meta=self._witnessed({**encode_instructions(None), WITNESS_ONLY: True}),
        )
