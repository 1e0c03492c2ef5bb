"""One round driver for every engine: start (or resume) -> rounds -> finish.

An engine only moves messages: it asks :meth:`RoundDriver.next_round` for the round to run
(its number, its step, the global weights and the strategy's instructions), delivers them to
the sites however it does (function calls, NVFlare tasks), and hands the answers to
:meth:`RoundDriver.complete`. The driver owns everything else, identically for both engines:

* the run's first and last events (``run_started`` or ``run_resumed``; ``run_ended``) and the
  status strings: ``completed``, ``stopped: <why>`` (fewer than ``min_sites`` usable updates,
  a budget spent, a site declined under ``on_exhausted: stop``), ``failed: <error>``;
* the numbering: ``step`` is the run's logical round (1 .. ``federation.rounds``) and drives
  the sites' seeds; ``round`` numbers every round begun and is never reused, so a round
  interrupted by a crash is redone under the next number, from the same checkpoint and with
  the same step (the aggregation parties refuse a round number twice; the verifier refuses a
  site's statement of one round twice);
* a checkpoint after every completed round (:mod:`pharmafl.pipeline.checkpoints`), holding the
  ledger head it belongs to;
* ``RUN/status.json``: where the run stands (running, round, or its final status), written after
  every round, so an operator can read what happened even when the ledger could not record it
  (a full disk).

A round the sites did not answer in time (``federation.round_timeout_s``) completes without
them, each recorded as ``site_timed_out``.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from pharmafl.console import stderr
from pharmafl.errors import RefusedError
from pharmafl.fileio import write_bytes_atomic
from pharmafl.pipeline import events as ev
from pharmafl.pipeline.aggregate import State
from pharmafl.pipeline.checkpoints import CheckpointStore
from pharmafl.pipeline.coordinator import Coordinator, RoundAborted
from pharmafl.pipeline.events import EventBus
from pharmafl.pipeline.run import RunPlan, _git_commit, end_run, initial_state, start_run, versions
from pharmafl.sites.site import Declined, FitResult, Instructions

COMPLETED = "completed"


class RunInterrupted(RefusedError):
    """The run stopped and its end could not be recorded (the ledger or the disk failed); it resumes."""


class RunBusy(RefusedError):
    """Another process is running this run (it holds ``RUN/.lock``)."""


class RunLock:
    """``RUN/.lock``, held (``flock``) by the process that drives the run's rounds while it does.

    The kernel drops the lock when that process dies, however it dies; so a live holder means
    the run is still going (an NVFlare simulator outlives the ``pharmafl run`` that started it if
    that is killed), and ``resume`` refuses to start a second coordinator on the same ledger.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunBusy(
                f"{self.path.parent} is being run by process {holder} (it holds {self.path}); wait for it to "
                f"end, or stop it (kill {holder}) and then resume"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    @staticmethod
    def holder(run_dir: Path) -> int | None:
        """The pid of the process running ``run_dir`` now, or None."""
        lock = RunLock(run_dir)
        if not lock.path.exists():
            return None
        try:
            lock.acquire()
        except RunBusy:
            text = lock.path.read_text().strip()
            return int(text) if text.isdigit() else -1
        lock.release()
        return None


@dataclass(frozen=True)
class RoundTask:
    """What an engine delivers to every site for one round."""

    round: int
    step: int
    state: State
    instructions: Instructions
    timeout_s: float | None


class RoundDriver:
    """The lifecycle of one session of a run: a fresh start, or ``resume`` from a
    :class:`~pharmafl.pipeline.resume.ResumePoint`."""

    def __init__(self, plan: RunPlan, bus: EventBus, coord: Coordinator, *, engine: str, resume=None):
        self.plan, self.bus, self.coord, self.engine, self.resume = plan, bus, coord, engine, resume
        self.lock = RunLock(plan.run_dir).acquire()  # released at end(), or when this process dies
        self.store = CheckpointStore(plan.run_dir)
        self.planned = plan.cfg.federation.rounds
        self.timeout_s = plan.cfg.federation.round_timeout_s
        self.started = time.perf_counter()
        self.status, self.error, self.task = COMPLETED, None, None
        if resume is None:
            self.state, self.round, self.step = initial_state(plan.cfg), 1, 1
        else:
            self.state, self.round, self.step = resume.state, resume.next_round, resume.steps_done + 1
            if resume.server_state is not None:
                coord.load_server_state(resume.server_state)

    @property
    def rounds_done(self) -> int:
        return self.step - 1

    @property
    def stopped(self) -> bool:
        return self.status != COMPLETED

    def begin(self) -> None:
        """``run_started``, or ``run_resumed`` with where this session takes the run up."""
        if self.resume is None:
            start_run(self.plan, self.bus, engine=self.engine)
        else:
            r = self.resume
            self.bus.emit(
                ev.RUN_RESUMED,
                "server",
                run_id=self.plan.run_id,
                session=r.session,
                from_round=r.from_round,
                steps_done=r.steps_done,
                next_round=r.next_round,
                interrupted_rounds=list(r.interrupted_rounds),
                checkpoint_hash=r.checkpoint_hash,
                server_state_hash=r.server_state_hash,
                previous_status=r.previous_status,
                reason=r.reason,
                engine=self.engine,
                git_commit=_git_commit(),
                versions=versions(),
            )
        self._status("running")

    def next_round(self) -> RoundTask | None:
        """The next round to run (opened: ``round_started``), or None: the run is done or stopped."""
        if self.stopped or self.step > self.planned:
            self.task = None
            return None
        try:
            instructions = self.coord.start_round(self.round, self.state, list(self.plan.sites), step=self.step)
        except Exception as exc:  # the ledger could not record it (a full disk): the run stops here
            self.fail(exc)
            return None
        self.task = RoundTask(self.round, self.step, self.state, instructions, self.timeout_s)
        return self.task

    def complete(
        self,
        results: dict[str, FitResult],
        failures: dict[str, str] | None = None,
        declined: dict[str, Declined] | None = None,
        timed_out: dict[str, tuple[float, float]] | None = None,
    ) -> bool:
        """Aggregate the open round and checkpoint it; False: the run stopped (``status`` says why)."""
        task, self.task = self.task, None
        try:
            outcome = self.coord.finish_round(task.round, task.state, results, failures, declined, timed_out)
            self.state = outcome.state
            self.store.save(
                round=task.round,
                step=task.step,
                state=outcome.state,
                model_config=self.coord.model_config,
                server_state=self.coord.server_state(),
                ledger=self.bus.ledger_head(),
                run_id=self.plan.run_id,
            )
        except RoundAborted as exc:
            self.status = f"stopped: {exc}"
            self.round += 1  # begun: its number is spent
            return False
        except Exception as exc:  # recorded in run_ended; the engine re-raises it after the end
            self.round += 1
            self.fail(exc)
            return False
        self.round, self.step = self.round + 1, self.step + 1
        self._status("running")
        return True

    def fail(self, exc: BaseException) -> None:
        """The session breaks on ``exc`` (an engine error, the ledger or the disk failing)."""
        self.status, self.error = f"failed: {type(exc).__name__}: {exc}", exc

    def end(self, site_metrics: dict[str, dict]) -> dict:
        """Save the final model, record ``run_ended``; the final metrics. If that cannot be recorded
        (the disk is full), the status goes to ``RUN/status.json`` and stderr, and
        :class:`RunInterrupted` says how to resume."""
        try:
            metrics = end_run(
                self.plan,
                self.coord,
                self.state,
                status=self.status,
                rounds=self.rounds_done,
                site_metrics=site_metrics,
                seconds=time.perf_counter() - self.started,
            )
        except Exception as exc:
            status = f"{self.status}; then run_ended could not be recorded: {type(exc).__name__}: {exc}"
            self._status(status)
            self.lock.release()
            raise RunInterrupted(
                f"the run stopped after {self.rounds_done} completed round(s) ({status}); nothing recorded "
                f"is lost: fix the cause (free disk space) and continue with: pharmafl resume {self.plan.run_dir}"
            ) from exc
        self._status(metrics["status"])
        self.lock.release()
        return metrics

    def _status(self, status: str) -> None:
        """``RUN/status.json``; best effort (it is for people: the ledger is the record)."""
        doc = {
            "status": status,
            "engine": self.engine,
            "session": 1 if self.resume is None else self.resume.session,
            "rounds_done": self.rounds_done,
            "planned_rounds": self.planned,
            "next_round": self.round,
            "updated": time.time(),
        }
        try:
            write_bytes_atomic(self.plan.run_dir / "status.json", (json.dumps(doc, indent=1) + "\n").encode())
        except OSError as exc:
            stderr.print(f"warning: could not write {self.plan.run_dir / 'status.json'} ({exc}); status: {status}")
