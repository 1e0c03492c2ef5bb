"""Centralized DAVIS benchmark: training throughput side by side, then accuracy per epoch.

Part 1 (throughput) trains the same model on the same data three ways, interleaved step by
step so machine load hits all three alike, and prints training pairs/s and their ratios:

  per-pair  random 512-pair batches, one drug and one target encoding per pair (GraphDTA)
  unique    random batches, each distinct drug/target of a batch encoded once
  grouped   batches of same-target chunks (pharmafl's default), unique encoding

Part 2 (accuracy) trains with the default settings for ``--epochs`` and prints validation
and test MSE/CI per epoch; the kept epoch is picked on validation (as ``train-central``).

    python bench/centralized.py [--epochs 300] [--steps 12] [--out runs/bench-central]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pharmafl.models.dti import DTIModel, ModelConfig
from pharmafl.pipeline.central import CentralConfig, train_central
from pharmafl.sites.batching import grouped_batches, random_batches
from pharmafl.sites.site import featurize_dataset
from pharmafl.sites.tables import load_dataset
from pharmafl.sites.training import TrainConfig


def throughput(steps: int, batch_size: int = 512) -> dict:
    ds = load_dataset("davis")
    pairs = featurize_dataset(ds, ModelConfig(), None)
    train = pairs.subset(np.flatnonzero(ds.measurements["fold"].str.startswith("train").to_numpy()))
    rng = np.random.default_rng(0)
    plans = {
        "per-pair": (random_batches(len(train), batch_size, rng), False),
        "unique": (random_batches(len(train), batch_size, rng), True),
        "grouped": (grouped_batches(train.target.numpy(), batch_size, rng), True),
    }
    models = {name: DTIModel(seed=0) for name in plans}
    optims = {name: torch.optim.Adam(m.parameters(), lr=5e-4) for name, m in models.items()}
    seconds = dict.fromkeys(plans, 0.0)
    counted = dict.fromkeys(plans, 0)
    entities = {name: [] for name in plans}
    for step in range(steps + 1):  # step 0 warms up
        for name, (batches, unique) in plans.items():
            index = batches[step % len(batches)]
            t0 = time.perf_counter()
            batch = train.collate(index, unique=unique)
            loss = F.mse_loss(models[name](*batch.args()), batch.labels)
            optims[name].zero_grad()
            loss.backward()
            optims[name].step()
            if step:
                seconds[name] += time.perf_counter() - t0
                counted[name] += len(index)
                entities[name].append(int(batch.targets.shape[0]))
    rate = {name: counted[name] / seconds[name] for name in plans}
    return {
        "pairs_per_s": rate,
        "targets_encoded_per_batch": {n: float(np.mean(v)) for n, v in entities.items()},
        "ratio_unique_vs_per_pair": rate["unique"] / rate["per-pair"],
        "ratio_grouped_vs_per_pair": rate["grouped"] / rate["per-pair"],
        "steps": steps,
        "batch_size": batch_size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=400)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant in part 1")
    parser.add_argument("--batching", default="grouped", choices=["grouped", "random"])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-central"))
    parser.add_argument("--skip-accuracy", action="store_true")
    args = parser.parse_args()
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    print(f"machine: {machine}")

    t = throughput(args.steps)
    print("\n== throughput (training pairs/s, same model, interleaved) ==")
    for name, r in t["pairs_per_s"].items():
        print(f"  {name:9s} {r:9.1f} pairs/s   targets encoded per batch: {t['targets_encoded_per_batch'][name]:.0f}")
    print(f"  unique / per-pair : {t['ratio_unique_vs_per_pair']:.1f}x")
    print(f"  grouped / per-pair: {t['ratio_grouped_vs_per_pair']:.1f}x  (goal >= 10x)")
    if args.skip_accuracy:
        return

    print(
        f"\n== accuracy: {args.epochs} epochs, {args.batching} batching, cosine learning rate, "
        "epoch kept on validation =="
    )
    print(f"{'epoch':>5} {'sec':>6} {'val MSE':>8} {'val CI':>7} {'test MSE':>9} {'test CI':>8}")

    def show(r):
        print(
            f"{r['epoch']:5d} {r['seconds']:6.0f} {r['val_mse']:8.4f} {r['val_ci']:7.4f} "
            f"{r['test_mse']:9.4f} {r['test_ci']:8.4f}",
            flush=True,
        )

    cfg = CentralConfig(epochs=args.epochs, train=TrainConfig(batching=args.batching))
    out = args.out
    if out.exists():
        out = out.with_name(f"{out.name}-{int(time.time())}")
    m = train_central(cfg, out, on_epoch=show)
    print(json.dumps({"throughput": t, "accuracy": m, "machine": machine}, indent=2))


if __name__ == "__main__":
    main()
