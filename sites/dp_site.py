"""Privacy as a wrapper around a :class:`~pharmafl.sites.site.Site`, validated when built.

* :class:`DPSite` — DP-SGD (``privacy.mode: local``): the site's own (ε, δ) budget, its
  accountant history kept in its store (``privacy_state.json``), and before every round the
  check that the round fits the budget; if it does not, the site declines the round with the
  numbers (:class:`~pharmafl.sites.site.Declined`).
* :class:`UpdateClipSite` — DP-FedAvg's site half (``privacy.mode: client``): train as usual,
  clip the whole update to ``clip_norm``; the server adds the noise
  (:mod:`pharmafl.pipeline.strategies.client_dp`).

Both report in :attr:`FitResult.privacy` what the ledger records: clip statistics and, for
DP-SGD, ε this round, cumulative ε, δ, accountant, noise multiplier, sample rate, steps and
the privacy unit. What else leaves a DP site: the noised update, the example count, and
metrics on the site's validation split and test share (rows never trained on; not covered
by the guarantee, see ``docs/privacy.md``). The training loss is not sent.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch
from opacus import GradSampleModule
from opacus.validators import ModuleValidator

from pharmafl.errors import ConfigError
from pharmafl.fileio import write_bytes_atomic
from pharmafl.models.dti import DTIModel
from pharmafl.models.pairs import PairTensors
from pharmafl.sites import update as wire
from pharmafl.sites.csprng import SecureRandom
from pharmafl.sites.dp_training import ClipStats, count_units, dp_optimizer, dp_round, quiet_hooks, wrap
from pharmafl.sites.privacy import PrivacyConfig, PrivacyPlan, compose, epsilon_spent, round_fits
from pharmafl.sites.site import Declined, FitResult, Instructions, Site, State, round_seed, state_of, torch_threads
from pharmafl.sites.store import SiteStore
from pharmafl.sites.training import make_optimizer

STATE_FILE = "privacy_state.json"


def check_dp_model(model: torch.nn.Module, where: str) -> None:
    """One clear error when Opacus cannot take per-sample gradients of ``model``.

    Opacus's validator catches what it knows (BatchNorm, ...); for a DTI model a probe then
    runs two pairs through the dense form and checks every trainable parameter received a
    per-sample gradient (a layer whose dense form bypasses Opacus's hooks would not).
    """
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ConfigError(f"{where}: the model cannot be trained with DP-SGD: {'; '.join(map(str, errors))}")
    if not isinstance(model, DTIModel):
        return
    probe = copy.deepcopy(model)
    gsm = GradSampleModule(probe, batch_first=True, loss_reduction="sum")
    try:
        pairs = PairTensors.build([("a", "CCO"), ("b", "c1ccccc1O")], [("t", "MKTAYIAKQR")],
                                  [("a", "t", 1.0), ("b", "t", 2.0)], max_len=probe.config.max_len)  # fmt: skip
        batch = pairs.collate([0, 1], unique=False, dense=True)
        with quiet_hooks():
            gsm(*batch.args()).sum().backward()
        missing = [n for n, p in probe.named_parameters()
                   if p.requires_grad and getattr(p, "grad_sample", None) is None]  # fmt: skip
    finally:
        gsm._close()
    if missing:
        raise ConfigError(
            f"{where}: Opacus computes no per-sample gradients for {missing[:4]} of drug encoder "
            f"{probe.config.drug_encoder!r}; use model.drug_encoder 'gin' or 'gcn' under privacy.mode 'local'"
        )


def store_units(store: SiteStore, unit: str) -> int:
    """Privacy units among ``store``'s training rows: pairs, or distinct compounds."""
    rows = store.rows("train")
    if unit == "compound":
        return len(set(store.dataset.measurements["drug_id"].to_numpy()[rows]))
    return len(rows)


class DPSite:
    """``inner`` trained with DP-SGD under ``privacy`` and the site's ``plan`` (fixed, and the
    model checked with :func:`check_dp_model`, when the run was prepared), drawing sampling
    and noise from ``random``."""

    def __init__(self, inner: Site, privacy: PrivacyConfig, plan: PrivacyPlan, random: SecureRandom):
        self.inner, self.id = inner, inner.id
        self.cfg = privacy.for_site(inner.id)
        units = count_units(inner.train, self.cfg.unit)
        if units != plan.units or plan.unit != self.cfg.unit:
            raise ConfigError(f"site {inner.id}: the run planned DP for {plan.units} {plan.unit}s, the store holds "
                              f"{units} {self.cfg.unit}s; the store changed after the run was prepared")  # fmt: skip
        self.plan, self.random = plan, random
        self.state_path = Path(inner.store.path) / STATE_FILE
        self.history = self._load_history()
        self._optimizer_state: dict | None = None

    def _load_history(self) -> list:
        if not self.state_path.is_file():
            return []
        saved = json.loads(self.state_path.read_text())
        if saved.get("plan") != self.plan.as_dict():
            raise ConfigError(
                f"{self.state_path} records a different privacy plan ({saved.get('plan')}) than this run's "
                f"({self.plan.as_dict()}); the site's spent budget cannot be carried over"
            )
        return [tuple(h) for h in saved["history"]]

    def _save_history(self) -> None:
        doc = {"plan": self.plan.as_dict(), "history": [list(h) for h in self.history]}
        write_bytes_atomic(self.state_path, json.dumps(doc, indent=1).encode())

    @property
    def epsilon(self) -> float:
        return epsilon_spent(self.history, self.plan.delta, self.plan.accountant)

    def evaluate(self, state: State) -> dict[str, float]:
        return self.inner.evaluate(state)

    def fit(self, round: int, state: State, instructions: Instructions) -> FitResult | Declined:
        if instructions.scaffold_control is not None:
            raise ConfigError("SCAFFOLD's control variates are exact local gradients: not private under DP-SGD")
        plan = self.plan
        before = self.epsilon
        fits, after = round_fits(self.history, plan.round_step, plan.delta, plan.budget, plan.accountant)
        if not fits:
            return Declined(self.id, round, "privacy budget exhausted",
                            {"epsilon_total": before, "epsilon_if_trained": after, "budget": plan.budget,
                             "delta": plan.delta, "accountant": plan.accountant})  # fmt: skip
        metrics = {f"global_{k}": v for k, v in self.inner.evaluate(state).items()}
        with torch_threads(self.inner.threads):
            delta, stats = self._train(round, state, instructions)
        self.history = compose(self.history, plan.round_step)
        self._save_history()
        total = self.epsilon
        n = len(self.inner.train)
        payload = wire.encode(wire.Update(self.id, round, n, {"delta": delta}))
        privacy = {**stats.as_dict(), "epsilon_round": total - before, "epsilon_total": total, "delta": plan.delta,
                   "budget": plan.budget, "accountant": plan.accountant, "noise_multiplier": plan.noise_multiplier,
                   "sample_rate": plan.sample_rate, "steps": plan.steps_per_round, "privacy_unit": plan.unit,
                   "noise_source": self.random.source}  # fmt: skip
        metrics["train_pairs"] = n
        return FitResult(self.id, round, payload, wire.sha256(payload), n, metrics, privacy)

    def _train(self, round: int, state: State, instructions: Instructions) -> tuple[State, ClipStats]:
        inner, plan = self.inner, self.plan
        torch.manual_seed(int(round_seed(inner.seed, self.id, round).generate_state(1)[0]))  # dropout
        model = inner.model_from(state)
        gsm = wrap(model, plan.unit, plan.clip_norm)
        base = make_optimizer(model, inner.train_cfg)
        if inner.keep_optimizer_state and self._optimizer_state is not None:
            base.load_state_dict(self._optimizer_state)
        stats = ClipStats(plan.clip_norm)
        optimizer = dp_optimizer(
            base, plan.unit, noise_multiplier=plan.noise_multiplier, max_grad_norm=plan.clip_norm,
            expected_batch_size=max(1, int(plan.sample_rate * plan.units + 0.5)),
            random=self.random, stats=stats, after_noise=_proximal_grad(instructions.proximal_mu, model, state),
        )  # fmt: skip
        try:  # plan.steps_per_round covers the local epochs
            dp_round(gsm, optimizer, inner.train, plan, self.random, self.cfg.chunk_pairs)
        finally:
            gsm._close()
        if inner.keep_optimizer_state:
            self._optimizer_state = copy.deepcopy(base.state_dict())
        local = state_of(model)
        return {k: local[k] - np.asarray(state[k]) for k in state}, stats


def _proximal_grad(mu: float, model: torch.nn.Module, state: State):
    """FedProx's μ(w - w^t), added after the noise: data-independent, so still private."""
    if mu <= 0:
        return None
    start = {id(p): torch.from_numpy(np.asarray(state[k])) for k, p in model.named_parameters()}

    def add(params) -> None:
        for p in params:
            p.grad.add_(mu * (p.detach() - start[id(p)]))

    return add


class UpdateClipSite:
    """DP-FedAvg's site side: train as ``inner`` does, then clip the update's L2 norm."""

    def __init__(self, inner: Site, privacy: PrivacyConfig):
        self.inner, self.id = inner, inner.id
        self.clip_norm = float(privacy.clip_norm)

    def evaluate(self, state: State) -> dict[str, float]:
        return self.inner.evaluate(state)

    def fit(self, round: int, state: State, instructions: Instructions) -> FitResult:
        if instructions.scaffold_control is not None:
            raise ConfigError("SCAFFOLD's control variates are not clipped or noised: not private under client DP")
        res = self.inner.fit(round, state, instructions)
        upd = wire.decode(res.payload)
        norm = float(np.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in upd.delta.values())))
        scale = min(1.0, self.clip_norm / (norm + 1e-12))
        delta = {k: (v * scale).astype(np.float32) for k, v in upd.delta.items()}
        payload = wire.encode(wire.Update(self.id, round, upd.num_examples, {"delta": delta}))
        metrics = {k: v for k, v in res.metrics.items() if k != "train_loss"}
        privacy = {"clip_norm": self.clip_norm, "clipped": int(norm > self.clip_norm), "total": 1,
                   "max_norm": norm, "mean_norm": norm, "privacy_unit": "site"}  # fmt: skip
        return FitResult(self.id, round, payload, wire.sha256(payload), res.num_examples, metrics, privacy)
