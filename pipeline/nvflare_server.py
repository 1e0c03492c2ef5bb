"""NVFlare server components: the run's coordinator inside NVFlare's FedAvg workflow.

NVFlare's built-in aggregation sums updates in arrival order (irreproducible) and would see
plain weights only. :class:`PharmaflAggregator` buffers every site's result in
``accept_model`` and, in ``aggregate_model``, hands them all to the same
:class:`~pharmafl.pipeline.coordinator.Coordinator` the in-process engine uses, which sums in
sorted site order. It returns the full new global weights (NVFlare replaces its global model
with them) and the next round's instructions in the model's ``meta``.

The round lifecycle (numbering, checkpoints, statuses, ``run_resumed``) is the same
:class:`~pharmafl.pipeline.rounds.RoundDriver` the in-process engine uses; this adapter only
turns NVFlare's rounds into its tasks. The job runs ``remaining rounds + 2`` NVFlare rounds:
the one after the last training round only asks every site to evaluate the final model on
its own validation and test data, and the last one only asks the sites to cosign the
``run_ended`` checkpoint. Every model the server sends carries its round's number, step and
instructions (round 1's too: they travel with the initial model) and, after a checkpoint, the
witness requests for it; the sites' cosignatures come back with their next results and go to
the ledger (:meth:`EventBus.cosigned`). A site missing from a round's results after
``federation.round_timeout_s`` (the controller's task timeout) is recorded as timed out.

:class:`PlanPersistor` gives NVFlare the weights the driver starts from: the initial model,
rebuilt from the plan's model config and seed (no torch model class travels in the job
config), or, when the job resumes a run (``resume_reason``), the checkpoint
:func:`pharmafl.pipeline.resume.resume_point` verified against the ledger.

:class:`PharmaflFedAvg` is NVFlare's FedAvg controller with the round's task timeout and
``min_responses`` (all sites until the timeout; the coordinator applies ``min_sites``).

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
from nvflare.app_common.workflows.fedavg import FedAvg

from pharmafl.pipeline.events import EventBus
from pharmafl.pipeline.nvflare_wire import (
    STOP_METRIC,
    WITNESS_KEY,
    WITNESS_ONLY,
    encode_task,
    result_from_model,
    witness_answer,
)
from pharmafl.pipeline.rounds import RoundDriver
from pharmafl.pipeline.run import RunPlan, server_side
from pharmafl.sites.site import Declined

_SERVERS: dict[str, PharmaflAggregator] = {}  # plan path -> the job's aggregator (one server process)


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


class PharmaflFedAvg(FedAvg):
    """FedAvg whose round task times out after ``round_timeout_s`` (None: waits for every site)."""

    def __init__(self, *args, round_timeout_s: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.round_timeout_s = round_timeout_s

    def send_model(self, task_name="train", data=None, targets=None, min_responses=None, timeout=0, callback=None):
        if self.round_timeout_s is not None:
            timeout = max(1, int(round(self.round_timeout_s)))  # NVFlare's task timeout is whole seconds
            min_responses = len(targets) if targets else min_responses
        return super().send_model(
            task_name=task_name,
            data=data,
            targets=targets,
            min_responses=min_responses,
            timeout=timeout,
            callback=callback,
        )


class PlanPersistor(ModelPersistor):
    """The weights the job starts from (the driver's); the final model is saved by the driver."""

    def __init__(self, plan_path: str):
        super().__init__()
        self.plan_path = plan_path

    def load_model(self, fl_ctx) -> ModelLearnable:
        server = _SERVERS.get(self.plan_path)
        if server is None:  # the aggregator did not start (it logged why): the job cannot run
            raise RuntimeError(f"pharmafl's aggregator did not start the run of {self.plan_path}; see the server log")
        return make_model_learnable(server.driver.state, server.first_meta())

    def save_model(self, model_learnable: ModelLearnable, fl_ctx) -> None:
        """Nothing to do: every round is checkpointed by the round driver (``RUN/checkpoints``)."""


class PharmaflAggregator(ModelAggregator):
    """Buffers all site results of a round, then hands them to the run's round driver."""

    def __init__(self, plan_path: str, resume_reason: str | None = None):
        super().__init__()
        self.plan_path = plan_path
        self.resume_reason = resume_reason
        self._buffer: dict[str, FLModel] = {}
        self.plan: RunPlan | None = None

    def handle_event(self, event_type: str, fl_ctx) -> None:
        super().handle_event(event_type, fl_ctx)
        if event_type == EventType.START_RUN:
            self._start(fl_ctx)
        elif event_type == EventType.END_RUN and self.plan is not None:
            _SERVERS.pop(self.plan_path, None)
            try:
                self.coord.close()
            finally:
                self.bus.close()

    def _start(self, fl_ctx) -> None:
        from pharmafl.pipeline.engines import run_listeners

        self.plan = load_plan(self.plan_path, fl_ctx)
        resume = None
        if self.resume_reason is not None:
            from pharmafl.pipeline.resume import resume_point

            resume = resume_point(self.plan, self.resume_reason)
        self.bus = EventBus(run_listeners(self.plan, resumed=resume is not None))
        self.coord = server_side(self.plan, self.bus)
        self.driver = RoundDriver(self.plan, self.bus, self.coord, engine="nvflare", resume=resume)
        self.finished, self.ended, self._asked = False, False, set()
        self.driver.begin()
        self.task = self.driver.next_round()
        self._sent = time.monotonic()
        _SERVERS[self.plan_path] = self

    def first_meta(self) -> dict:
        """The first model's meta: the first task (or, if none is left, the final evaluation)."""
        self._sent = time.monotonic()
        return self._witnessed(encode_task(self.task))

    def accept_model(self, model: FLModel) -> None:
        self._buffer[model.meta["client_name"]] = model

    def reset_stats(self) -> None:
        self._buffer = {}

    def aggregate_model(self) -> FLModel:
        received, self._buffer = self._buffer, {}
        waited = time.monotonic() - self._sent
        self.bus.cosigned(
            {s: a for s in self.plan.sites if (a := witness_answer(received.get(s))) is not None}
            | {s: "no answer from the site" for s in self._asked if s not in received}
        )
        if self.finished:  # the witness-only round after run_ended: the job is done
            return FLModel(params_type=ParamsType.FULL, params=self.driver.state, metrics={STOP_METRIC: 1.0}, meta={})
        if self.task is None:  # the final evaluation round's results: end the run
            return self._finish(received)
        results, failures, declined, timed_out = {}, {}, {}, {}
        timeout = self.task.timeout_s
        for site in self.plan.sites:
            if site not in received:
                if timeout is not None and waited >= timeout - 0.5:
                    timed_out[site] = (timeout, waited)
                else:
                    failures[site] = "no result: the site dropped out (see its NVFlare log)"
                continue
            try:
                outcome = result_from_model(site, self.task.round, received[site])
            except Exception as exc:  # a message that breaks the parser is that site's failure
                outcome = f"malformed result: {type(exc).__name__}: {exc}"
            if isinstance(outcome, str):
                failures[site] = outcome
            elif isinstance(outcome, Declined):
                declined[site] = outcome
            else:
                results[site] = outcome
        if not self.driver.complete(results, failures, declined, timed_out):
            return self._finish({})  # stopped or failed: no final evaluation, end now
        self.task = self.driver.next_round()
        if self.task is None and self.driver.stopped:  # the next round could not even be opened
            return self._finish({})
        return self._model(encode_task(self.task))

    def _model(self, meta: dict) -> FLModel:
        self._sent = time.monotonic()
        return FLModel(
            params_type=ParamsType.FULL,
            params=self.driver.state,
            metrics={STOP_METRIC: 0.0},
            meta=self._witnessed(meta),
        )

    def _witnessed(self, meta: dict) -> dict:
        """``meta`` plus the requests to cosign the checkpoint just written (one per site)."""
        requests = self.bus.witness_requests()
        self._asked = set(requests)
        return {**meta, WITNESS_KEY: requests} if requests else meta

    def _finish(self, received: dict[str, FLModel]) -> FLModel:
        site_metrics = {}
        for site in self.plan.sites:
            m = received.get(site)
            meta = m.meta if m is not None and isinstance(m.meta, dict) else {}
            if isinstance(meta.get("final_metrics"), dict):
                site_metrics[site] = dict(meta["final_metrics"])
            else:
                site_metrics[site] = {"error": "no final evaluation (run stopped or site dropped out)"}
        self.finished = True  # one more exchange: the sites cosign the run_ended checkpoint
        self.driver.end(site_metrics)  # RunInterrupted (run_ended not recorded) ends the job: NVFlare logs it
        return self._model({**encode_task(None), WITNESS_ONLY: True})
