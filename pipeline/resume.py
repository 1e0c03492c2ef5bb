"""Where a run stopped, checked against its ledger: what ``pharmafl resume RUN`` continues from.

NVFlare 2.8+ has no snapshot/HA path (``persist_components`` is a no-op), so resuming is
pharmafl's own. :func:`resume_point` trusts nothing the coordinator's disk says on its own:

1. the ledger verifies (every check of ``pharmafl ledger verify`` but one: the entries written
   after the last witnessed checkpoint, which a crash leaves, are witnessed by the session
   that resumes, ``open_tail``);
2. it is this run's ledger (``run_started``'s run id and config hash are the plan's), and the
   run has not completed;
3. the latest checkpoint whose round the ledger shows completed is taken, and only if its
   model hashes to the round's ``aggregated.checkpoint_hash``, its server state to the
   round's ``round_ended.server_state_hash``, and the ledger head it names is one of the
   ledger's signed checkpoints. A later round the ledger shows begun (or even completed,
   when the crash came before its checkpoint was written) is *interrupted*: it is redone from
   that checkpoint, with the same step, under the next round number (round numbers are never
   reused: the aggregation parties and the verifier refuse a round's statements twice).

Nothing written is rewritten: the resumed session appends ``run_resumed`` (from round,
checkpoint hash, interrupted rounds, why) and goes on to the planned number of rounds.
Without a ledger (``ledger.enabled: false``) the checkpoint's own hashes are all there is.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from safetensors.numpy import load

from pharmafl.errors import ConfigError, RefusedError
from pharmafl.pipeline.aggregate import State
from pharmafl.pipeline.checkpoints import Checkpoint, CheckpointStore
from pharmafl.pipeline.run import RunPlan, initial_state


class NotResumable(RefusedError):
    """The run cannot be resumed as it is: its ledger or checkpoints do not hold up, or it completed."""


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed session takes a run up."""

    session: int  # 2 for the first resume
    state: State  # the global model to start from
    server_state: bytes | None  # None: the initial server state
    from_round: int  # the last completed round (0: none)
    steps_done: int
    next_round: int
    interrupted_rounds: tuple[int, ...]
    checkpoint_hash: str | None  # None: the initial model
    server_state_hash: str | None
    previous_status: str | None  # None: the previous session ended without run_ended
    reason: str


@dataclass
class _History:
    """What the ledger (or, without one, the event trace) says about the run so far."""

    sessions: int = 0
    begun: tuple[int, ...] = ()
    completed: dict | None = None  # round -> {"checkpoint_hash", "server_state_hash", "step"}
    last_status: str | None = None  # the run_ended of the last session, if it has one
    heads: dict | None = None  # tree size -> root hash of the ledger's signed checkpoints


def load_plan(run_dir: Path) -> RunPlan:
    path = Path(run_dir) / "plan.json"
    if not path.is_file():
        raise ConfigError(
            f"{run_dir} is not a run directory (no plan.json); give the --out folder of a run that "
            "`pharmafl run` started"
        )
    return RunPlan.load(path)


def resume_point(plan: RunPlan, reason: str = "resumed by the operator") -> ResumePoint:
    """Verify the run's record and find its last good checkpoint (module docstring)."""
    from pharmafl.pipeline.rounds import RunBusy, RunLock

    holder = RunLock.holder(plan.run_dir)
    if holder is not None and holder != os.getpid():
        raise RunBusy(
            f"{plan.run_dir} is still being run by process {holder}; wait for it to end, or stop it "
            f"(kill {holder}) and resume then"
        )
    history = _from_ledger(plan) if plan.cfg.ledger.enabled else _from_trace(plan)
    if history.last_status == "completed":
        raise NotResumable(f"{plan.run_dir}: the run completed; there is nothing to resume")
    store = CheckpointStore(plan.run_dir)
    store.discard_partial()
    chosen = _checkpoint(store, history, plan)
    if chosen is None:
        state, server, from_round, steps, model_sha, server_sha = initial_state(plan.cfg), None, 0, 0, None, None
    else:
        model, server = chosen.read()
        state, from_round, steps = dict(load(model)), chosen.round, chosen.step
        model_sha, server_sha = chosen.model_sha256, chosen.server_sha256
    last_begun = max([from_round, *history.begun])
    return ResumePoint(
        session=history.sessions + 1,
        state=state,
        server_state=server,
        from_round=from_round,
        steps_done=steps,
        next_round=last_begun + 1,
        interrupted_rounds=tuple(r for r in history.begun if r > from_round),
        checkpoint_hash=model_sha,
        server_state_hash=server_sha,
        previous_status=history.last_status,
        reason=reason,
    )


def _checkpoint(store: CheckpointStore, history: _History, plan: RunPlan) -> Checkpoint | None:
    """The latest checkpoint the record vouches for; refuses one it contradicts."""
    for cp in reversed(store.all()):
        if cp.run_id != plan.run_id:
            raise NotResumable(f"{cp.path} belongs to run {cp.run_id!r}, not {plan.run_id!r}: it is not this run's")
        done = (history.completed or {}).get(cp.round)
        if history.completed is not None and done is None:
            continue  # written after a round_ended that never made it to the ledger: cannot be
        if done is not None and (
            done["checkpoint_hash"] != cp.model_sha256
            or done["server_state_hash"] != cp.server_sha256
            or done["step"] != cp.step
        ):
            raise NotResumable(
                f"{cp.path}: its model or server state is not what the ledger recorded for round {cp.round} "
                f"(aggregated.checkpoint_hash {done['checkpoint_hash'][:16]}..., round_ended.server_state_hash "
                f"{str(done['server_state_hash'])[:16]}...; the checkpoint says {cp.model_sha256[:16]}..., "
                f"{cp.server_sha256[:16]}...): the checkpoint was altered; restore it, or move it away to resume "
                "from the one before"
            )
        if history.heads is not None and (
            cp.ledger is None or history.heads.get(cp.ledger.get("tree_size")) != cp.ledger.get("root_hash")
        ):
            raise NotResumable(
                f"{cp.path}: the ledger head it names ({cp.ledger}) is not one of the ledger's signed checkpoints; "
                "the checkpoint was written against another ledger"
            )
        return cp
    return None


def _from_ledger(plan: RunPlan) -> _History:
    from pharmafl.audit import Ledger, VerificationError
    from pharmafl.audit.dbsource import verify_database

    target = plan.cfg.ledger.url or plan.run_dir
    if plan.cfg.ledger.url is None and not (plan.run_dir / "ledger.db").is_file():
        raise NotResumable(f"{plan.run_dir} has no ledger.db: the run never started; start it anew with pharmafl run")
    try:
        verify_database(target, open_tail=True)
    except VerificationError as err:
        raise NotResumable(
            f"the run's ledger does not verify ({err}); a run resumes only from a ledger that does: "
            f"see pharmafl ledger verify {plan.run_dir}"
        ) from None
    ledger = Ledger.open(target)
    try:
        h = _History(completed={}, heads={cp.tree_size: cp.root_hash for cp in ledger.checkpoints()})
        begun, aggregated = [], {}
        for e in ledger.entries():
            d = e.data if e.type in _READ else None
            if e.type == "run_started":
                if d.get("run_id") != plan.run_id or d.get("config_hash") != plan.config_hash:
                    raise NotResumable(
                        f"the ledger records run {d.get('run_id')!r} (config {str(d.get('config_hash'))[:16]}...), "
                        f"not this plan's {plan.run_id!r} ({plan.config_hash[:16]}...); the plan was replaced"
                    )
                h.sessions = 1
            elif e.type == "run_resumed":
                h.sessions, h.last_status = h.sessions + 1, None
            elif e.type == "run_ended":
                h.last_status = d.get("status")
            elif e.type == "round_started":
                begun.append(d["round"])
            elif e.type == "aggregated":
                aggregated[d["round"]] = d.get("checkpoint_hash")
            elif e.type == "round_ended" and d["round"] in aggregated:
                h.completed[d["round"]] = {
                    "checkpoint_hash": aggregated[d["round"]],
                    "server_state_hash": d.get("server_state_hash"),
                    "step": d.get("step", d["round"]),
                }
        if h.sessions == 0:
            raise NotResumable(f"the ledger of {plan.run_dir} records no run_started: start the run anew")
        h.begun = tuple(begun)
        return h
    finally:
        ledger.close()


_READ = frozenset({"run_started", "run_resumed", "run_ended", "round_started", "aggregated", "round_ended"})


def _from_trace(plan: RunPlan) -> _History:
    """Without a ledger: the event trace (``events.jsonl``) is the record."""
    path = plan.run_dir / "events.jsonl"
    h = _History(sessions=0)
    begun = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else ():
        try:
            e = json.loads(line)
        except ValueError:
            continue  # the line a crash cut short
        if e["type"] == "run_started":
            h.sessions = 1
        elif e["type"] == "run_resumed":
            h.sessions, h.last_status = h.sessions + 1, None
        elif e["type"] == "run_ended":
            h.last_status = e["payload"].get("status")
        elif e["type"] == "round_started":
            begun.append(e["payload"]["round"])
    if h.sessions == 0:
        raise NotResumable(f"{plan.run_dir} records no run_started: the run never started; start it anew")
    h.begun = tuple(begun)
    return h
