"""Privacy attacks on one DAVIS site, without DP and under DP-SGD at ε ∈ {8, 3, 1}.

    python bench/attacks.py [--examples 32] [--rounds 10] [--epsilons inf 8 3 1] [--no-mia]

Gradient inversion (the strongest case: one site's update computed from a single training
pair, one step). The attacker sees the gradient — under DP, the clipped gradient plus the
site's Gaussian noise (σ of the site's plan for that ε, clip norm C). Three analytic attacks:

* head input: for the first dense layer of the head, ``y = W x + b``, so
  ``∂L/∂W = (∂L/∂b) xᵀ`` and ``x = ∂L/∂W_i / ∂L/∂b_i`` (Phong et al. 2017); the least-squares
  form over all rows recovers the pair's 256-d drug ‖ target embedding. Error: relative L2.
* drug atom features: the first GIN layer's weight gradient is ``Σ_n δ_n h_nᵀ`` over the
  molecule's nodes, so its column ``f`` is zero unless some atom has feature ``f``: the column
  norms score the 78 atom features (element, degree, H count, valence, aromaticity) present
  in the molecule; AUC of that score against the true atom-feature support.
* protein composition: the embedding gradient is non-zero only on rows of residues present in
  the sequence; AUC of the row norms against the true residue set.

Membership inference (loss threshold, Yeom et al. 2018): the site trains ``--rounds`` rounds
of one local epoch alone (its own DP-SGD plan at each ε); the attack scores each pair by
minus its loss under the final model; AUC between the site's training pairs and its held-out
validation pairs (same compounds and targets, never trained on).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import rankdata

from pharmafl.models.dti import ModelConfig
from pharmafl.pipeline.config import DataConfig, FederationConfig, LedgerConfig, RunConfig
from pharmafl.pipeline.run import initial_state, make_site, prepare
from pharmafl.sites import update as wire
from pharmafl.sites.csprng import SecureRandom
from pharmafl.sites.privacy import PrivacyConfig, PrivacyPlan
from pharmafl.sites.site import Instructions
from pharmafl.sites.training import TrainConfig, predict


def auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U)."""
    truth = truth.astype(bool)
    pos, neg = int(truth.sum()), int((~truth).sum())
    ranks = rankdata(scores)
    return float((ranks[truth].sum() - pos * (pos + 1) / 2) / (pos * neg))


def run_config(rounds: int, epsilon: float | None) -> RunConfig:
    privacy = PrivacyConfig() if epsilon is None else PrivacyConfig(mode="local", epsilon=epsilon)
    return RunConfig(
        name="attacks",
        seed=0,
        data=DataConfig(dataset="davis", sites=10, partition="compound"),
        model=ModelConfig(label_offset=5.0),
        train=TrainConfig(lr=1e-3),
        federation=FederationConfig(rounds=rounds, engine="local", site_threads=2),
        ledger=LedgerConfig(enabled=False),
        privacy=privacy,
    )


def single_pair_gradients(site, k: int, rng) -> list[tuple[dict, dict]]:
    """(gradients, truths) for ``k`` random training pairs of ``site`` at the initial model."""
    model = site.model_from(initial_state(run_config(1, None)))
    model.eval()  # no dropout: the attacker's best case
    captured = {}
    model.head[0].register_forward_hook(lambda m, i, o: captured.__setitem__("x", i[0].detach()))
    out = []
    for i in rng.choice(len(site.train), size=k, replace=False):
        batch = site.train.collate([int(i)], unique=False, dense=True)
        model.zero_grad()
        ((model(*batch.args()) - batch.labels) ** 2).sum().backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        graph = site.train.graphs[int(site.train.drug[int(i)])]
        tokens = site.train.tokens[int(site.train.target[int(i)])]
        truth = {
            "x": captured["x"][0].clone(),
            "atoms": np.asarray(graph.x).sum(axis=0) > 0,
            "residues": np.isin(np.arange(model.protein.embed.num_embeddings), tokens.numpy()),
        }
        out.append((grads, truth))
    return out


def privatize(grads: dict, plan: PrivacyPlan | None, random: SecureRandom) -> dict:
    """What the attacker sees: the clipped gradient plus the site's DP noise."""
    if plan is None:
        return grads
    norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads.values())))
    scale = min(1.0, plan.clip_norm / (norm + 1e-12))
    std = plan.noise_multiplier * plan.clip_norm
    return {n: g * scale + random.dp_noise(std, g) for n, g in grads.items()}


def invert(seen: dict, truth: dict) -> dict:
    gw, gb = seen["head.0.weight"].double(), seen["head.0.bias"].double()
    x_hat = (gb @ gw) / (gb @ gb)  # least squares of G_W = g_b x^T
    x = truth["x"].double()
    rel = float((x_hat - x).norm() / x.norm())
    atoms = seen["drug.layers.0.mlp.0.weight"].norm(dim=0).numpy()
    residues = seen["protein.embed.weight"].norm(dim=1).numpy()[1:]  # row 0 is padding
    return {
        "head_input_rel_error": rel,
        "atom_feature_auc": auc(atoms, truth["atoms"]),
        "residue_auc": auc(residues, truth["residues"][1:]),
    }


def membership(site, rounds: int) -> float:
    state = initial_state(run_config(rounds, None))
    for r in range(1, rounds + 1):
        res = site.fit(r, state, Instructions())
        delta = wire.decode(res.payload).delta
        state = {k: state[k] + delta[k] for k in state}
    model = site.inner.model_from(state) if hasattr(site, "inner") else site.model_from(state)
    inner = site.inner if hasattr(site, "inner") else site
    members = inner.train.subset(np.random.default_rng(0).choice(len(inner.train), len(inner.val), replace=False))
    loss = [(predict(model, p) - p.label.numpy()) ** 2 for p in (members, inner.val)]
    return auc(-np.concatenate(loss), np.r_[np.ones(len(loss[0])), np.zeros(len(loss[1]))])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--site", default="site-01")
    ap.add_argument("--epsilons", type=float, nargs="+", default=[float("inf"), 8.0, 3.0, 1.0], help="inf = no DP")
    ap.add_argument("--no-mia", action="store_true", help="gradient inversion only (seconds)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    print(
        f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for eps in [None if e == float("inf") else e for e in args.epsilons]:
            name = "no DP" if eps is None else f"ε = {eps:g}"
            plan = prepare(run_config(args.rounds, eps), Path(tmp) / f"run-{eps}")
            site = make_site(plan, args.site).inner  # below the signing wrapper
            inner = site.inner if hasattr(site, "inner") else site
            dp_plan = site.plan if hasattr(site, "plan") else None
            rng = np.random.default_rng(0)
            attacks = [
                invert(privatize(g, dp_plan, SecureRandom(seed=i)), t)
                for i, (g, t) in enumerate(single_pair_gradients(inner, args.examples, rng))
            ]
            t0 = time.perf_counter()
            mia = float("nan") if args.no_mia else membership(site, args.rounds)
            row = {k: float(np.mean([a[k] for a in attacks])) for k in attacks[0]}
            row.update(
                mia_auc=mia,
                train_seconds=time.perf_counter() - t0,
                sigma=dp_plan.noise_multiplier if dp_plan else 0.0,
                units=len(inner.train),
            )
            rows[name] = row
            print(name, {k: round(v, 4) for k, v in row.items()}, flush=True)
    print(
        f"\n{args.site} of DAVIS/10 sites (compound split), {args.examples} single-pair gradients, "
        f"membership after {args.rounds} local epochs"
    )
    print(
        f"{'setting':8s} {'σ':>6} {'head input rel. err':>20} {'atom-feature AUC':>17} {'residue AUC':>12} "
        f"{'MIA AUC':>8} {'train s':>8}"
    )
    for name, r in rows.items():
        print(
            f"{name:8s} {r['sigma']:6.3f} {r['head_input_rel_error']:20.4g} {r['atom_feature_auc']:17.3f} "
            f"{r['residue_auc']:12.3f} {r['mia_auc']:8.3f} {r['train_seconds']:8.0f}"
        )


if __name__ == "__main__":
    main()
