"""Fault tolerance: what a checkpoint costs per round, how long resuming takes to start, and how
soon a round completes after a site dies.

    .venv/bin/python bench/faults.py                  # all three parts (about 6 minutes on 2 cores)
    .venv/bin/python bench/faults.py --part checkpoint --rounds 4

``checkpoint``: the 10-site DAVIS config (``configs/davis-10sites.yaml``, compound split) on the
in-process engine; every round's wall time is measured against the time spent writing the
coordinator's checkpoint (``CheckpointStore.save``) and the sites' carried state
(``CarriedState.save``), side by side in the same run. The run is made to fail as round 3 opens
(a listener raises: the run ends ``failed``, resumable), then ``resume`` is timed from the call to
the resumed session's first ``round_started`` (verifying the ledger, checking and loading the
checkpoint, building the sites) and left to finish.

``straggler``: 3 sites on NVFlare's simulator (a 24-compound x 30-target DAVIS subset, so a
round is seconds), ``round_timeout_s`` T; one site's process is killed with SIGKILL as round 2
opens; prints when round 2 completed, counted from the kill and from the round's deadline.

Prints figures only (recorded in docs/benchmarks.md with the machine); tests never assert times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class Timer:
    """Wraps ``owner.name`` to add the seconds each call takes to ``self.seconds``."""

    def __init__(self, owner, name: str):
        self.owner, self.name, self.real, self.seconds, self.calls = owner, name, getattr(owner, name), 0.0, 0
        timer = self

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return timer.real(*args, **kwargs)
            finally:
                timer.seconds += time.perf_counter() - start
                timer.calls += 1

        setattr(owner, name, timed)


class Clock:
    """Times rounds from the events; optionally makes the run fail as round ``fail_at`` opens."""

    def __init__(self, fail_at: int | None = None):
        self.fail_at, self.opened, self.rounds, self.first_round_at = fail_at, {}, {}, None

    def on_event(self, event):
        now = time.perf_counter()
        if event.type == "round_started":
            self.first_round_at = self.first_round_at or now
            if event.payload["step"] == self.fail_at:
                self.fail_at = None
                raise RuntimeError("bench: the run is made to fail here, to be resumed")
            self.opened[event.payload["round"]] = now
        elif event.type == "round_ended":
            self.rounds[event.payload["round"]] = now - self.opened[event.payload["round"]]

    def close(self):
        pass


def checkpoint_part(rounds: int, data_dir: str | None) -> None:
    from pharmafl.pipeline import checkpoints
    from pharmafl.pipeline.config import load_run_config
    from pharmafl.pipeline.engines import resume_federated, run_federated
    from pharmafl.sites import carried

    cfg = load_run_config(ROOT / "configs" / "davis-10sites.yaml", [f"federation.rounds={rounds}"])
    cfg = replace(cfg, federation=replace(cfg.federation, engine="local"))
    server = Timer(checkpoints.CheckpointStore, "save")
    sites = Timer(carried.CarriedState, "save")
    with tempfile.TemporaryDirectory(prefix="pharmafl-bench-faults-") as tmp:
        out = Path(tmp) / "run"
        first = Clock(fail_at=3)
        try:
            run_federated(cfg, out, data_dir=Path(data_dir) if data_dir else None, listeners=[first])
        except RuntimeError as exc:
            print(f"  (session 1 ended as planned: {exc})")
        second = Clock()
        start = time.perf_counter()
        resume_federated(out, reason="bench", listeners=[second])
        startup = second.first_round_at - start
        times = {**first.rounds, **second.rounds}
        round_s = sum(times.values()) / len(times)
        size_mb = sum(p.stat().st_size for p in (out / "checkpoints").rglob("*") if p.is_file()) / 1e6
        print(f"rounds timed: {len(times)}, mean {round_s:.2f} s per 10-site round (in-process, 1 thread per site)")
        print(
            f"coordinator checkpoint: {server.seconds / server.calls * 1000:.1f} ms per round "
            f"({server.seconds / server.calls / round_s * 100:.2f}% of a round), "
            f"{size_mb / server.calls:.2f} MB each"
        )
        print(
            f"sites' carried state: {sites.seconds / server.calls * 1000:.1f} ms per round, all 10 sites "
            f"({sites.seconds / server.calls / round_s * 100:.2f}% of a round)"
        )
        total = (server.seconds + sites.seconds) / server.calls
        print(f"checkpointing in all: {total * 1000:.1f} ms per round = {total / round_s * 100:.2f}% (goal <= 2%)")
        print(f"resume start-up (verify, check and load the checkpoint, build 10 sites): {startup:.2f} s")


def straggler_part(timeout_s: float, data_dir: str | None) -> None:
    import pandas as pd
    import psutil

    from pharmafl.models.dti import ModelConfig
    from pharmafl.pipeline.config import DataConfig, FederationConfig, LedgerConfig, RunConfig
    from pharmafl.pipeline.configio import to_dict
    from pharmafl.sites.training import TrainConfig

    shared = Path(data_dir or os.environ.get("PHARMAFL_DATA", "~/.cache/pharmafl")).expanduser()
    with tempfile.TemporaryDirectory(prefix="pharmafl-bench-straggler-") as tmp:
        tmp = Path(tmp)
        drugs = pd.read_csv(shared / "davis_deepdta_drugs.csv.gz").iloc[:24]
        targets = pd.read_csv(shared / "davis_deepdta_targets.csv.gz").iloc[::15].iloc[:30]
        pairs = pd.read_csv(shared / "davis_deepdta_pairs.csv.gz")
        pairs = pairs[pairs.drug_id.isin(drugs.drug_id) & pairs.target_id.isin(targets.target_id)]
        drugs[["drug_id", "smiles"]].to_csv(tmp / "drugs.csv", index=False)
        targets[["target_id", "sequence"]].to_csv(tmp / "targets.csv", index=False)
        pairs = pairs.rename(columns={"deepdta_fold": "fold"})[["drug_id", "target_id", "affinity", "fold"]]
        pairs.assign(unit="nM_Kd").to_csv(tmp / "measurements.csv", index=False)
        cfg = RunConfig(
            name="straggler",
            seed=7,
            data=DataConfig(dataset=str(tmp), sites=3, partition="iid"),
            model=ModelConfig(max_len=64, embed_dim=16, kernel_size=4, latent_dim=32),
            train=TrainConfig(batch_size=64),
            federation=FederationConfig(rounds=2, engine="nvflare", round_timeout_s=timeout_s, min_sites=1),
            ledger=LedgerConfig(enabled=False),
        )
        (tmp / "cfg.json").write_text(json.dumps(to_dict(cfg)))
        out = tmp / "run"
        code = (
            "import json,sys; from pathlib import Path; from pharmafl.pipeline.config import RunConfig;"
            "from pharmafl.pipeline.configio import from_dict; from pharmafl.pipeline.engines import run_federated;"
            "run_federated(from_dict(RunConfig, json.loads(Path(sys.argv[1]).read_text())), Path(sys.argv[2]))"
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(tmp / "cfg.json"), str(out)],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def seen(type_: str, rnd: int) -> bool:
            trace = out / "events.jsonl"
            lines = trace.read_text().splitlines() if trace.is_file() else []
            return any(
                (e := json.loads(x))["type"] == type_ and e["payload"].get("round") == rnd
                for x in lines
                if x.endswith("}")
            )

        try:
            while not seen("round_started", 2):
                time.sleep(0.02)
            opened = time.monotonic()
            victim = next(
                c
                for c in psutil.Process(proc.pid).children(recursive=True)
                if "simulator_worker" in " ".join(c.cmdline()) and "/site-03 " in " ".join(c.cmdline()) + " "
            )
            victim.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            while not seen("round_ended", 2):
                time.sleep(0.02)
            done = time.monotonic()
            proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        print(f"round_timeout_s {timeout_s:g}: site-03 killed {killed - opened:.2f} s into round 2")
        print(
            f"round 2 completed without it {done - killed:.2f} s after its death, "
            f"{done - opened - timeout_s:+.2f} s after the round's deadline"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("checkpoint", "straggler", "all"), default="all")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of the checkpoint part (it fails at 3)")
    parser.add_argument("--timeout", type=float, default=20.0, help="round_timeout_s of the straggler part")
    parser.add_argument("--data-dir", default=os.environ.get("PHARMAFL_DATA"))
    args = parser.parse_args()
    os.environ.setdefault("PHARMAFL_KEY_PASSPHRASE", "bench-faults-not-secret")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    if args.part in ("checkpoint", "all"):
        print("== checkpoint cost and resume start-up")
        checkpoint_part(args.rounds, args.data_dir)
    if args.part in ("straggler", "all"):
        print("== a site's death to the round completing without it")
        straggler_part(args.timeout, args.data_dir)


if __name__ == "__main__":
    main()
