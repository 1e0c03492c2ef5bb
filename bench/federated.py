"""Federated DAVIS/KIBA benchmarks; every figure printed side by side from one invocation.

python bench/federated.py accuracy [--rounds 20 --local-epochs 2]
    DAVIS, 10 sites, compound split: centralized vs FedAvg vs FedProx vs SCAFFOLD at equal
    total local epochs (rounds x local epochs); test CI/MSE and federated/centralized CI;
    plus FedAvg with the local optimizer reset every round, and FedAvg on an iid split.
python bench/federated.py scale [--sites 10 50 100]
    in-process engine on KIBA (compound split): seconds per round and peak RSS, each size
    in a fresh process.
python bench/federated.py nvflare [--sites 3 10]
    NVFlare simulator vs in-process engine on the same small job: start-up and per-round
    overhead.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from pharmafl.models.dti import ModelConfig
from pharmafl.pipeline.central import CentralConfig, train_central
from pharmafl.pipeline.config import DataConfig, FederationConfig, LedgerConfig, RunConfig
from pharmafl.pipeline.engines import run_federated
from pharmafl.sites.training import TrainConfig


def accuracy(args) -> None:
    epochs = args.rounds * args.local_epochs
    base = RunConfig(
        name="bench",
        seed=0,
        data=DataConfig(dataset="davis", sites=10, partition="compound"),
        federation=FederationConfig(
            rounds=args.rounds, local_epochs=args.local_epochs, engine="local", site_threads=args.threads
        ),
        ledger=LedgerConfig(enabled=False),
    )
    runs = [  # (row, partition, strategy, options, train config)
        ("FedAvg", "compound", "fedavg", {}, TrainConfig()),
        (f"FedProx (mu={args.mu:g})", "compound", "fedprox", {"mu": args.mu}, TrainConfig()),
        ("SCAFFOLD", "compound", "scaffold", {}, TrainConfig()),
        ("FedAvg, local Adam reset each round", "compound", "fedavg", {}, TrainConfig()),
        ("FedAvg, iid split, site batch 64", "iid", "fedavg", {}, TrainConfig(batch_size=64, group_size=8)),
    ]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        central = train_central(CentralConfig(epochs=epochs, lr_schedule="constant"), Path(tmp) / "central")
        hist = (Path(tmp) / "central" / "history.csv").read_text().splitlines()
        last = dict(zip(hist[0].split(","), hist[-1].split(",")))
        rows["centralized (last epoch)"] = (float(last["test_mse"]), float(last["test_ci"]), time.perf_counter() - t0)
        rows["centralized (best validation epoch)"] = (central["test_mse"], central["test_ci"], central["seconds"])
        print(f"centralized {epochs} epochs: {rows['centralized (last epoch)']}", flush=True)
        for k, (row, part, strategy, options, train) in enumerate(runs):
            fed = replace(
                base.federation,
                strategy=strategy,
                strategy_options=options,
                local_optimizer="reset" if "reset" in row else "keep",
            )
            cfg = replace(base, data=replace(base.data, partition=part), train=train, federation=fed)
            t0 = time.perf_counter()
            m = run_federated(cfg, Path(tmp) / f"run{k}")
            rows[row] = (m["test_mse"], m["test_ci"], time.perf_counter() - t0)
            print(f"{row}: {rows[row]}", flush=True)
    ref = rows["centralized (last epoch)"][1]
    print(
        f"\nDAVIS, 10 sites, {args.rounds} rounds x {args.local_epochs} local epochs = {epochs} epochs; "
        f"centralized {epochs} epochs; same optimizer (Adam 5e-4, constant)"
    )
    print(f"{'run':40s} {'test MSE':>9} {'test CI':>8} {'CI / central':>13} {'seconds':>8}")
    for name, (mse, ci, sec) in rows.items():
        print(f"{name:40s} {mse:9.4f} {ci:8.4f} {ci / ref:13.3f} {sec:8.0f}")


def _scale_child(sites: int, rounds: int, out: str) -> None:
    cfg = RunConfig(
        name="scale",
        seed=0,
        data=DataConfig(dataset="kiba", sites=sites, partition="compound"),
        federation=FederationConfig(rounds=rounds, local_epochs=1, engine="local", min_sites=1),
        ledger=LedgerConfig(enabled=False),
    )
    t0 = time.perf_counter()
    run_federated(cfg, Path(out))
    total = time.perf_counter() - t0
    rounds_pq = Path(out) / "events.jsonl"
    stamps = [json.loads(line) for line in rounds_pq.read_text().splitlines()]
    n_round_ends = sum(1 for e in stamps if e["type"] == "round_ended")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"sites": sites, "rounds": n_round_ends, "seconds": total, "peak_rss_mb": peak_mb}))


def scale(args) -> None:
    print(f"{'sites':>5} {'s/round':>8} {'total s':>8} {'peak RSS MB':>12}")
    for n in args.sites:
        with tempfile.TemporaryDirectory() as tmp:
            r1 = _child(["scale-child", str(n), "1", f"{tmp}/r1"])
            r2 = _child(["scale-child", str(n), "2", f"{tmp}/r2"])
        per_round = r2["seconds"] - r1["seconds"]  # set-up (partition, featurize) cancels out
        print(
            f"{n:5d} {per_round:8.1f} {r2['seconds']:8.1f} {max(r1['peak_rss_mb'], r2['peak_rss_mb']):12.0f}",
            flush=True,
        )


def _child(argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def nvflare(args) -> None:
    small = RunConfig(
        name="overhead",
        seed=0,
        data=DataConfig(dataset="davis", partition="iid"),
        model=ModelConfig(max_len=128, embed_dim=32, latent_dim=32),
        train=TrainConfig(batch_size=256),
        ledger=LedgerConfig(enabled=False),
    )
    print(f"{'sites':>5} {'engine':>8} {'1 round s':>10} {'3 rounds s':>11} {'s/round':>8}")
    for n in args.sites:
        times = {}
        for engine in ("local", "nvflare"):
            for rounds in (1, 3):
                cfg = replace(
                    small, data=replace(small.data, sites=n), federation=FederationConfig(rounds=rounds, engine=engine)
                )
                with tempfile.TemporaryDirectory() as tmp:
                    t0 = time.perf_counter()
                    run_federated(cfg, Path(tmp) / "run")
                    times[engine, rounds] = time.perf_counter() - t0
            per_round = (times[engine, 3] - times[engine, 1]) / 2
            print(f"{n:5d} {engine:>8} {times[engine, 1]:10.1f} {times[engine, 3]:11.1f} {per_round:8.2f}", flush=True)
        overhead_round = (times["nvflare", 3] - times["nvflare", 1] - times["local", 3] + times["local", 1]) / 2
        startup = times["nvflare", 1] - times["local", 1] - overhead_round
        print(f"      NVFlare over in-process: start-up {startup:.1f} s, per round {overhead_round:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    a = sub.add_parser("accuracy")
    a.add_argument("--rounds", type=int, default=20)
    a.add_argument("--local-epochs", type=int, default=2)
    a.add_argument("--mu", type=float, default=0.01)
    a.add_argument("--threads", type=int, default=2, help="torch threads per site (in-process engine)")
    s = sub.add_parser("scale")
    s.add_argument("--sites", type=int, nargs="+", default=[10, 50, 100])
    c = sub.add_parser("scale-child")
    c.add_argument("n", type=int)
    c.add_argument("rounds", type=int)
    c.add_argument("out")
    f = sub.add_parser("nvflare")
    f.add_argument("--sites", type=int, nargs="+", default=[3, 10])
    args = parser.parse_args()
    if args.what == "accuracy":
        accuracy(args)
    elif args.what == "scale":
        scale(args)
    elif args.what == "scale-child":
        _scale_child(args.n, args.rounds, args.out)
    else:
        nvflare(args)


if __name__ == "__main__":
    main()
