"""kill -9 of the coordinator at points of a round, then ``resume``: nothing lost, the same model.

Each crash is a real SIGKILL of a real run (``crashing_run.py`` kills its own process when
the code reaches the chosen point); the resumed run must end with a ledger that verifies, every
entry written before the crash still in it unchanged, and, for this seeded in-process run, the
uninterrupted run's final model bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from pharmafl.audit import dbsource
from pharmafl.audit.ledger import Ledger
from pharmafl.pipeline.config import LedgerConfig
from pharmafl.pipeline.configio import to_dict
from pharmafl.pipeline.engines import resume_federated, run_federated
from pharmafl.pipeline.resume import NotResumable

from .conftest import events, with_federation

SCRIPT = Path(__file__).with_name("crashing_run.py")
PICK = random.Random(20261202)  # the points are drawn, and the same on every run of the suite
# (point, N): the N-th call of the point's function, somewhere in rounds 2-3 of 3 (3 sites)
CRASHES = [
    ("train", PICK.randint(4, 8)),  # a site starts training
    ("aggregate", PICK.randint(2, 3)),  # the strategy starts aggregating
    ("append", PICK.randint(12, 24)),  # ledger rows inserted, not committed
    ("checkpoint", 3),  # round 2's checkpoint files written, its folder not yet renamed into place
]


@pytest.fixture
def cfg(small_cfg, monkeypatch):
    monkeypatch.setenv("PHARMAFL_KEY_PASSPHRASE", "a test passphrase")
    return replace(with_federation(small_cfg, rounds=3), ledger=LedgerConfig(enabled=True))


@pytest.fixture
def uninterrupted(cfg, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    run_federated(cfg, out)
    _MODELS[hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()] = out / "model.safetensors"
    return hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()


_MODELS: dict[str, Path] = {}


def uninterrupted_state(sha: str) -> dict:
    from safetensors.numpy import load_file

    return load_file(_MODELS[sha])


def crash(cfg, out: Path, point: str, n: int) -> subprocess.CompletedProcess:
    config = out.parent / f"{out.name}.json"
    config.write_text(json.dumps(to_dict(cfg)))
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(config), str(out), point, str(n)],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=600,
    )


def ledger_rows(run: Path) -> list[tuple[int, str]]:
    ledger = Ledger.open(run)
    try:
        return [(e.seq, e.entry_hash) for e in ledger.entries()]
    finally:
        ledger.close()


@pytest.mark.parametrize(("point", "n"), CRASHES, ids=[p for p, _ in CRASHES])
def test_kill_9_then_resume_loses_nothing_and_ends_with_the_same_model(cfg, tmp_path, uninterrupted, point, n):
    out = tmp_path / "run"
    proc = crash(cfg, out, point, n)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (out / "model.safetensors").exists()  # it died mid-run
    before = ledger_rows(out)
    saved = max([0, *(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("round-*"))])
    metrics = resume_federated(out, reason="test: after kill -9")
    assert metrics["status"] == "completed" and metrics["rounds"] == 3
    after = ledger_rows(out)
    assert after[: len(before)] == before  # no entry lost or rewritten
    result = dbsource.verify_target(out)  # the whole run, witnesses and all
    assert result.entries == len(after)
    assert hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest() == uninterrupted
    (resumed,) = [e["payload"] for e in events(out, "run_resumed")]
    assert resumed["session"] == 2 and resumed["from_round"] == saved  # the last checkpoint written whole
    begun = [e["payload"]["round"] for e in events(out, "round_started")]
    assert len(begun) == len(set(begun)), "a round number was reused"
    assert resumed["interrupted_rounds"] == [r for r in begun if saved < r < resumed["next_round"]]
    assert resumed["interrupted_rounds"], "the crash came mid-run: some round was interrupted"
    steps = {e["payload"]["round"]: e["payload"]["step"] for e in events(out, "round_started")}
    assert [steps[r] for r in begun if r >= resumed["next_round"]] == list(range(resumed["steps_done"] + 1, 4))
    assert not list((out / "checkpoints").glob(".round-*"))  # the crash's half-written checkpoint is gone


def test_a_checkpoint_altered_on_disk_is_refused(cfg, tmp_path):
    out = tmp_path / "run"
    assert crash(cfg, out, "train", 8).returncode == -signal.SIGKILL  # round 3: rounds 1-2 checkpointed
    cp = out / "checkpoints" / "round-000002"
    model = cp / "model.safetensors"
    altered = model.read_bytes().replace(b"pharmafl-model/1", b"pharmafl-model/X")
    model.write_bytes(altered)
    doc = json.loads((cp / "checkpoint.json").read_text())
    doc["model_sha256"] = hashlib.sha256(altered).hexdigest()  # a careful forger fixes the checkpoint's own hash
    (cp / "checkpoint.json").write_text(json.dumps(doc))
    with pytest.raises(NotResumable, match="not what the ledger recorded for round 2"):
        resume_federated(out, reason="test")
    assert len(events(out, "run_resumed")) == 0  # refused before anything was written


def test_a_completed_run_is_not_resumed(cfg, tmp_path):
    out = tmp_path / "run"
    run_federated(cfg, out)
    with pytest.raises(NotResumable, match="the run completed"):
        resume_federated(out, reason="test")


def test_a_stopped_run_resumes_to_the_planned_rounds(cfg, tmp_path, monkeypatch):
    """Too few sites in round 2: the run stops cleanly (run_ended "stopped"), then resumes."""
    from pharmafl.sites.site import Site

    out = tmp_path / "run"
    real = Site.fit

    def flaky(self, round, state, instructions):
        if round == 2:
            raise ConnectionError(f"{self.id} is unreachable")
        return real(self, round, state, instructions)

    monkeypatch.setattr(Site, "fit", flaky)
    first = run_federated(cfg, out)
    assert first["status"].startswith("stopped:") and first["rounds"] == 1
    monkeypatch.setattr(Site, "fit", real)
    metrics = resume_federated(out, reason="the sites are back")
    assert metrics["status"] == "completed" and metrics["rounds"] == 3
    assert [e["payload"]["status"].split(":")[0] for e in events(out, "run_ended")] == ["stopped", "completed"]
    (resumed,) = [e["payload"] for e in events(out, "run_resumed")]
    assert resumed["previous_status"].startswith("stopped:") and resumed["reason"] == "the sites are back"
    assert resumed["interrupted_rounds"] == [2] and resumed["next_round"] == 3
    assert dbsource.verify_target(out).entries > 0
    assert json.loads((out / "status.json").read_text())["status"] == "completed"
    from pharmafl.compliance.sections import summary_section

    ledger = Ledger.open(out)
    try:
        summary = summary_section(list(ledger.entries()))  # what QA's report says of the run
    finally:
        ledger.close()
    assert [s["ended_status"].split(":")[0] for s in summary["sessions"]] == ["stopped", "completed"]
    assert summary["interrupted_rounds"] == [2] and summary["status"] == "completed" and summary["rounds"] == 3


def test_a_site_that_does_not_answer_in_time_is_recorded_and_joins_again_later(cfg, tmp_path):
    """In-process: site-02 hangs in round 2; the round completes without it, round 3 has it back."""
    import threading

    from pharmafl.pipeline.engine_local import LocalEngine
    from pharmafl.pipeline.engines import run_listeners
    from pharmafl.pipeline.events import EventBus
    from pharmafl.pipeline.run import make_site, prepare

    cfg = with_federation(cfg, round_timeout_s=10, min_sites=2)
    plan = prepare(cfg, tmp_path / "run")
    release = threading.Event()

    class Hanging:
        def __init__(self, site):
            self.site, self.id = site, site.id

        def fit(self, round, state, instructions):
            if self.id == "site-02" and round == 2:
                release.wait(120)  # hung (a stuck file system, a lost connection) until the test lets go
            return self.site.fit(round, state, instructions)

        def __getattr__(self, name):
            return getattr(self.site, name)

    class LetGo:
        def on_event(self, event):
            if event.type == "round_ended" and event.payload["round"] == 2:
                release.set()

        def close(self):
            pass

    bus = EventBus([*run_listeners(plan), LetGo()])
    try:
        metrics = LocalEngine(site_factory=lambda p, s: Hanging(make_site(p, s))).run(plan, bus)
    finally:
        bus.close()
    assert metrics["status"] == "completed" and metrics["rounds"] == 3
    (late,) = [e["payload"] for e in events(plan.run_dir, "site_timed_out")]
    assert late["round"] == 2 and late["site"] == "site-02" and late["timeout_s"] == 10 and late["waited_s"] >= 10
    participants = {e["payload"]["round"]: e["payload"]["participants"] for e in events(plan.run_dir, "aggregated")}
    assert participants[2] == ["site-01", "site-03"]
    assert participants[3] == ["site-01", "site-02", "site-03"]  # back once it finished the late call
    assert dbsource.verify_target(plan.run_dir).entries > 0


def _nvflare_children(pid: int) -> dict:
    import psutil

    out = {}
    for child in psutil.Process(pid).children(recursive=True):
        cmd = " ".join(child.cmdline())
        for site in ("site-01", "site-02", "site-03"):
            if "simulator_worker" in cmd and f"/{site} " in cmd + " ":
                out[site] = child
    return out


def _start(cfg, out: Path) -> subprocess.Popen:
    config = out.parent / f"{out.name}.json"
    config.write_text(json.dumps(to_dict(cfg)))
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), str(config), str(out), "none", "0"],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait_for(out: Path, proc, found, what: str, limit_s: float = 300):
    import time

    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        trace = out / "events.jsonl"
        seen = [json.loads(x) for x in trace.read_text().splitlines() if x.endswith("}")] if trace.is_file() else []
        if any(found(e) for e in seen):
            return time.monotonic()
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before {what}"
        time.sleep(0.05)
    raise AssertionError(f"no {what} within {limit_s} s")


@pytest.mark.slow
def test_nvflare_kill_9_of_the_coordinator_then_resume(cfg, tmp_path, uninterrupted):
    """The simulator's server process (it holds RUN/.lock) killed mid-round 2; the job resumes on NVFlare."""
    import psutil

    cfg = with_federation(cfg, engine="nvflare")
    out = tmp_path / "run"
    proc = _start(cfg, out)
    try:
        _wait_for(out, proc, lambda e: e["type"] == "site_update" and e["payload"]["round"] == 2, "round 2")
        tree = psutil.Process(proc.pid).children(recursive=True)
        coordinator = int((out / ".lock").read_text())
        os.kill(coordinator, signal.SIGKILL)
    finally:  # then the rest of the job, as an operator restarting the machine would
        for child in psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else ():
            child.kill()
        proc.kill()
        proc.wait()
    assert coordinator in [c.pid for c in tree]
    metrics = resume_federated(out, reason="test: the server was killed")
    assert metrics["status"] == "completed" and metrics["rounds"] == 3
    assert dbsource.verify_target(out).entries > 0
    from safetensors.numpy import load

    mine, theirs = load((out / "model.safetensors").read_bytes()), uninterrupted_state(uninterrupted)
    assert max(float(abs(mine[k] - theirs[k]).max()) for k in theirs) <= 1e-6
    (resumed,) = [e["payload"] for e in events(out, "run_resumed")]
    assert resumed["engine"] == "nvflare" and resumed["interrupted_rounds"] == [2]


@pytest.mark.slow
def test_nvflare_a_stopped_and_a_killed_site_time_out_and_the_run_finishes(cfg, tmp_path):
    """SIGSTOP one site's process and SIGKILL another's as round 2 starts: the round completes after
    round_timeout_s with the third site, both recorded; the stopped one, continued, takes part in the
    next exchange (the final evaluation) and the run finishes."""
    cfg = with_federation(cfg, engine="nvflare", rounds=2, round_timeout_s=20, min_sites=1)  # > start-up + a round
    out = tmp_path / "run"
    proc = _start(cfg, out)
    try:
        _wait_for(out, proc, lambda e: e["type"] == "round_started" and e["payload"]["round"] == 2, "round 2")
        workers = _nvflare_children(proc.pid)
        assert set(workers) == {"site-01", "site-02", "site-03"}
        workers["site-02"].send_signal(signal.SIGSTOP)
        workers["site-03"].kill()
        ended = _wait_for(
            out, proc, lambda e: e["type"] == "round_ended" and e["payload"]["round"] == 2, "the end of round 2"
        )
        workers["site-02"].send_signal(signal.SIGCONT)
        assert proc.wait(timeout=400) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    del ended  # how long it took is a benchmark's business (bench/faults.py), not a test's
    late = [(e["payload"]["round"], e["payload"]["site"]) for e in events(out, "site_timed_out")]
    assert sorted(late) == [(2, "site-02"), (2, "site-03")]
    (end,) = [e["payload"] for e in events(out, "run_ended")]
    assert end["status"] == "completed" and end["rounds"] == 2
    participants = {e["payload"]["round"]: e["payload"]["participants"] for e in events(out, "aggregated")}
    assert participants == {1: ["site-01", "site-02", "site-03"], 2: ["site-01"]}
    final = end["metrics"]["sites"]
    assert "val_ci" in final["site-02"]  # continued, it answered the next exchange (the final evaluation)
    assert "error" in final["site-03"]


@pytest.fixture
def small_volume(tmp_path):
    """A 4 MiB tmpfs mounted for the test (needs root, as CI has: the skip names why otherwise)."""
    volume = tmp_path / "volume"
    volume.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(volume)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.decode().strip()}): the disk-full test needs root")
    try:
        yield volume
    finally:
        subprocess.run(["umount", "-l", str(volume)], check=False)


def test_a_ledger_whose_disk_fills_up_stops_the_run_cleanly_and_resumes_once_space_is_back(cfg, tmp_path, small_volume):
    from pharmafl.pipeline.rounds import RunInterrupted

    cfg = replace(cfg, ledger=LedgerConfig(enabled=True, url=f"sqlite:///{small_volume / 'ledger.db'}"))
    filler = small_volume / "filler"

    class FillTheDisk:  # after round 1 something else takes all the space left on the ledger's volume
        def on_event(self, event):
            if event.type == "round_ended" and event.payload["round"] == 1:
                with open(filler, "wb") as fh:
                    try:
                        while True:
                            fh.write(b"\0" * 65536)
                            fh.flush()
                    except OSError:
                        pass

        def close(self):
            pass

    out = tmp_path / "run"
    with pytest.raises(RunInterrupted, match="pharmafl resume") as stopped:
        run_federated(cfg, out, listeners=[FillTheDisk()])
    assert "is full" in str(stopped.value.__cause__) or "full" in str(stopped.value)
    status = json.loads((out / "status.json").read_text())  # what the operator reads: the ledger could not take it
    assert status["status"].startswith("failed: LedgerError") and "run_ended could not be recorded" in status["status"]
    assert status["rounds_done"] == 1
    ledger = Ledger.open(cfg.ledger.url)
    try:
        kept = [(e.seq, e.entry_hash, e.type) for e in ledger.entries()]
    finally:
        ledger.close()
    assert [t for *_, t in kept].count("round_ended") == 1 and "run_ended" not in [t for *_, t in kept]
    filler.unlink()  # space is back
    metrics = resume_federated(out, reason="disk space freed")
    assert metrics["status"] == "completed" and metrics["rounds"] == 3
    ledger = Ledger.open(cfg.ledger.url)
    try:
        after = [(e.seq, e.entry_hash, e.type) for e in ledger.entries()]
    finally:
        ledger.close()
    assert after[: len(kept)] == kept
    assert dbsource.verify_target(cfg.ledger.url).entries == len(after)


def test_the_resume_command_continues_a_killed_run_and_refuses_with_one_line(cfg, tmp_path, capsys):
    from pharmafl.pipeline.cli import main

    out = tmp_path / "run"
    assert crash(cfg, out, "train", 5).returncode == -signal.SIGKILL
    assert main(["resume", str(out), "--reason", "the machine rebooted", "--json", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "completed" and summary["rounds"] == 3
    assert events(out, "run_resumed")[0]["payload"]["reason"] == "the machine rebooted"
    assert main(["resume", str(out), "--quiet"]) == 1  # completed: refused, one line, nothing written
    err = capsys.readouterr().err
    assert "the run completed; there is nothing to resume" in err and "Traceback" not in err
    assert len(events(out, "run_resumed")) == 1
    assert main(["resume", str(tmp_path), "--quiet"]) == 2  # not a run directory
    err = capsys.readouterr().err
    assert "is not a run directory (no plan.json)" in err and "Traceback" not in err


def test_resume_refuses_a_run_that_is_still_running(cfg, tmp_path):
    from pharmafl.pipeline.rounds import RunBusy, RunLock

    out = tmp_path / "run"
    assert crash(cfg, out, "train", 5).returncode == -signal.SIGKILL
    holder = subprocess.Popen(  # another process holding the run's lock, as a live coordinator does
        [
            sys.executable,
            "-c",
            "import fcntl,sys,time; f=open(sys.argv[1],'w'); fcntl.flock(f, fcntl.LOCK_EX); "
            "f.write('424242'); f.flush(); print('held', flush=True); time.sleep(60)",
            str(out / ".lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert RunLock.holder(out) == 424242
        with pytest.raises(RunBusy, match="still being run by process 424242"):
            resume_federated(out, reason="test")
    finally:
        holder.kill()
        holder.wait()
    assert len(events(out, "run_resumed")) == 0
    assert resume_federated(out, reason="test")["status"] == "completed"  # the lock died with its holder
