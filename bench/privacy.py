"""Privacy-utility benchmark: DAVIS, 10 sites, DP-SGD at ε ∈ {8, 3, 1} against no DP.

    python bench/privacy.py steps [--steps 10]
    python bench/privacy.py utility [--rounds 10] [--local-epochs 1] [--epsilons 8 3 1] [--out runs/bench-privacy]

``steps`` (step time; run it on a quiet machine) — one site's training step of the same model on the same 128 pairs,
the variants interleaved step by step:

  plain     ordinary training step (pharmafl's default: unique-entity encoding, sparse graphs)
  per-pair  ordinary step, each pair encoding its own drug and target on dense graphs (the
            forward DP-SGD needs)
  DP-SGD    per-pair forward, Opacus per-sample gradients, clipping, CSPRNG noise, Adam step

``utility`` (utility and membership) — the same federated run (compound split, FedAvg,
``--rounds`` x ``--local-epochs``) without DP and with DP-SGD at each ε (pair unit, PRV
accountant, noise derived from the target ε, δ = 0.1/n per site): test MSE/CI on the DeepDTA
test fold, CI relative to no DP, ε actually spent (max over sites), and the loss-threshold
membership-inference AUC of the final model (each site's training pairs vs its validation
pairs, equal numbers). Writes ``privacy_utility.png`` and ``privacy.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from pharmafl.models.dti import DTIModel, ModelConfig  # noqa: E402
from pharmafl.pipeline.artifacts import load_model  # noqa: E402
from pharmafl.pipeline.config import DataConfig, FederationConfig, LedgerConfig, RunConfig  # noqa: E402
from pharmafl.pipeline.engines import run_federated  # noqa: E402
from pharmafl.pipeline.run import RunPlan, make_site, prepare  # noqa: E402
from pharmafl.sites.csprng import SecureRandom  # noqa: E402
from pharmafl.sites.dp_training import ClipStats, _dp_step, dp_optimizer, units_of, wrap  # noqa: E402
from pharmafl.sites.privacy import PrivacyConfig  # noqa: E402
from pharmafl.sites.training import TrainConfig, predict  # noqa: E402

LR = 1e-3  # Adam; the same for every row

from attacks import auc  # noqa: E402


def config(rounds: int, local_epochs: int, epsilon: float | None, batch_size: int = 512) -> RunConfig:
    privacy = (
        PrivacyConfig() if epsilon is None else PrivacyConfig(mode="local", epsilon=epsilon, batch_size=batch_size)
    )
    return RunConfig(
        name="privacy",
        seed=0,
        data=DataConfig(dataset="davis", sites=10, partition="compound"),
        model=ModelConfig(label_offset=5.0),
        train=TrainConfig(lr=LR),
        federation=FederationConfig(rounds=rounds, local_epochs=local_epochs, engine="local", site_threads=2),
        ledger=LedgerConfig(enabled=False),
        privacy=privacy,
    )


def step_times(plan: RunPlan, steps: int, batch: int = 128) -> dict:
    site = make_site(plan, "site-01").inner  # below the signing wrapper
    site = getattr(site, "inner", site)
    rng = np.random.default_rng(0)
    models = {k: DTIModel.from_config(plan.cfg.model) for k in ("plain", "per-pair", "DP-SGD")}
    opts = {k: torch.optim.Adam(m.parameters(), lr=5e-4) for k, m in models.items()}
    gsm = wrap(models["DP-SGD"], "pair", 1.0)
    dp_opt = dp_optimizer(
        opts["DP-SGD"],
        "pair",
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        expected_batch_size=batch,
        random=SecureRandom(),
        stats=ClipStats(1.0),
    )
    unit = units_of(site.train, "pair")
    seconds = dict.fromkeys(models, 0.0)
    for s in range(steps + 1):  # step 0 warms up
        index = rng.choice(len(site.train), size=batch, replace=False)
        for name in models:
            t0 = time.perf_counter()
            if name == "DP-SGD":
                _dp_step(gsm, dp_opt, site.train, index, unit, "pair", 64)
            else:
                b = site.train.collate(index, unique=name == "plain", dense=name == "per-pair")
                loss = F.mse_loss(models[name](*b.args()), b.labels)
                opts[name].zero_grad()
                loss.backward()
                opts[name].step()
            if s:
                seconds[name] += time.perf_counter() - t0
    gsm._close()
    return {k: v / steps for k, v in seconds.items()}


def membership_auc(run_dir: Path) -> float:
    plan = RunPlan.load(run_dir / "plan.json")
    model = load_model(run_dir / "model.safetensors")
    member, other = [], []
    for sid in plan.sites:
        site = make_site(plan, sid).inner  # below the signing wrapper
        site = getattr(site, "inner", site)
        pick = np.random.default_rng(0).choice(len(site.train), len(site.val), replace=False)
        for pairs, out in ((site.train.subset(pick), member), (site.val, other)):
            out.append((predict(model, pairs) - pairs.label.numpy()) ** 2)
    m, o = np.concatenate(member), np.concatenate(other)
    return auc(-np.r_[m, o], np.r_[np.ones(len(m)), np.zeros(len(o))])


def steps(args) -> None:
    torch.set_num_threads(2)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, 2 threads")
    with tempfile.TemporaryDirectory() as tmp:
        plan = prepare(config(1, 1, None), Path(tmp) / "run")
        for batch in (128, 256):
            times = step_times(plan, args.steps, batch)
            print(f"\nStep time, one DAVIS site (compound split), {batch} pairs, {args.steps} interleaved steps:")
            for k, v in times.items():
                print(
                    f"  {k:9s} {v * 1000:8.0f} ms  {v / times['plain']:5.2f}x plain  "
                    f"{v / times['per-pair']:5.2f}x per-pair  {batch / v:7.0f} pairs/s"
                )


def utility(args) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, 2 threads per site")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for eps in [None, *args.epsilons]:
            name = "no DP" if eps is None else f"ε = {eps:g}"
            run = Path(tmp) / f"run-{eps}"
            t0 = time.perf_counter()
            m = run_federated(config(args.rounds, args.local_epochs, eps, args.batch_size), run)
            events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
            spent = [e["payload"]["epsilon_total"] for e in events if e["type"] == "privacy_spent"]
            plans = json.loads((run / "plan.json").read_text())["privacy_plans"] or {}
            sigma = [p["noise_multiplier"] for p in plans.values()]
            rows[name] = {
                "epsilon": eps,
                "test_mse": m["test_mse"],
                "test_ci": m["test_ci"],
                "epsilon_spent": max(spent) if spent else None,
                "sigma_min": min(sigma, default=0.0),
                "sigma_max": max(sigma, default=0.0),
                "mia_auc": membership_auc(run),
                "seconds": time.perf_counter() - t0,
            }
            print(name, rows[name], flush=True)
    ref = rows["no DP"]["test_ci"]
    print(
        f"\nDAVIS, 10 sites (compound split), FedAvg, {args.rounds} rounds x {args.local_epochs} local epoch(s), "
        f"DP batch {args.batch_size} pairs (expected)"
    )
    print(
        f"{'setting':8s} {'σ (sites)':>13} {'ε spent':>8} {'test MSE':>9} {'test CI':>8} {'CI / no DP':>11} "
        f"{'MIA AUC':>8} {'seconds':>8}"
    )
    for name, r in rows.items():
        sig = f"{r['sigma_min']:.2f}-{r['sigma_max']:.2f}" if r["epsilon"] else "-"
        spent = f"{r['epsilon_spent']:.2f}" if r["epsilon_spent"] is not None else "-"
        print(
            f"{name:8s} {sig:>13} {spent:>8} {r['test_mse']:9.4f} {r['test_ci']:8.4f} {r['test_ci'] / ref:11.3f} "
            f"{r['mia_auc']:8.3f} {r['seconds']:8.0f}"
        )
    (args.out / "privacy.json").write_text(json.dumps(rows, indent=1))
    plot(rows, args.out / "privacy_utility.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("steps")
    s.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    u = sub.add_parser("utility")
    u.add_argument("--rounds", type=int, default=10)
    u.add_argument("--local-epochs", type=int, default=1)
    u.add_argument("--batch-size", type=int, default=512, help="expected DP batch (privacy units)")
    u.add_argument("--epsilons", type=float, nargs="+", default=[8.0, 3.0, 1.0])
    u.add_argument("--out", type=Path, default=Path("runs/bench-privacy"))
    args = ap.parse_args()
    {"steps": steps, "utility": utility}[args.cmd](args)


def plot(rows: dict, path: Path) -> None:
    dp = [r for r in rows.values() if r["epsilon"] is not None]
    eps = [r["epsilon"] for r in dp]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.6))
    ax[0].plot(eps, [r["test_ci"] for r in dp], "o-", label="DP-SGD")
    ax[0].axhline(rows["no DP"]["test_ci"], ls="--", c="gray", label="no DP")
    ax[0].set(xscale="log", xlabel="ε (per site, δ = 0.1/n)", ylabel="test CI", title="Utility")
    ax[1].plot(eps, [r["mia_auc"] for r in dp], "o-", c="C3", label="DP-SGD")
    ax[1].axhline(rows["no DP"]["mia_auc"], ls="--", c="gray", label="no DP")
    ax[1].axhline(0.5, ls=":", c="k", lw=0.8)
    ax[1].set(xscale="log", xlabel="ε", ylabel="membership AUC", title="Loss-threshold attack")
    for a in ax:
        a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
