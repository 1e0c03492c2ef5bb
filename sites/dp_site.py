"""Privacy as a wrapper around a :class:`~pharmafl.sites.site.Site`, validated when built.

* :class:`DPSite` — DP-SGD (``privacy.mode: local``): the site's own (ε, δ) budget across
  runs. Its privacy ledger (:class:`~pharmafl.sites.home.PrivacyLedger`, in the site's home)
  holds every run's accountant history per dataset; a run starts from what earlier runs
  spent on the same data (``epsilon_prior``), reports the cumulative ε (``epsilon_total``),
  and before every round checks that the round keeps the cumulative ε within the site's
  budget (``site.json``'s ``epsilon_budget``, else the run's); if it does not, the site
  declines the round with the numbers (:class:`~pharmafl.sites.site.Declined`).
* :class:`UpdateClipSite` — DP-FedAvg's site half (``privacy.mode: client``): train as usual,
  clip the whole update to ``clip_norm``; the server adds the noise
  (:mod:`pharmafl.pipeline.strategies.client_dp`).

Both report in :attr:`FitResult.privacy` what the ledger records: clip statistics and, for
DP-SGD, ε this round, cumulative ε on this data (``epsilon_prior``: the part spent before
this run), δ, accountant, noise multiplier, sample rate, steps and the privacy unit. What
else leaves a DP site: the noised update, the example count, and metrics on the site's
validation split and test share (rows never trained on; not covered by the guarantee, see
``docs/privacy.md``). The training loss is not sent.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from opacus import GradSampleModule
from opacus.validators import ModuleValidator

from pharmafl.errors import ConfigError
from pharmafl.models.dti import DTIModel
from pharmafl.models.pairs import PairTensors
from pharmafl.sites import update as wire
from pharmafl.sites.csprng import SecureRandom
from pharmafl.sites.dp_training import ClipStats, count_units, dp_optimizer, dp_round, quiet_hooks, wrap
from pharmafl.sites.privacy import History, PrivacyConfig, PrivacyPlan, compose, epsilon_spent
from pharmafl.sites.site import Declined, FitResult, Instructions, Site, State, round_seed, state_of, torch_threads
from pharmafl.sites.store import store_units  # noqa: F401  (re-exported)
from pharmafl.sites.training import make_optimizer


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
        pairs = PairTensors.build(
            [("a", "CCO"), ("b", "c1ccccc1O")],
            [("t", "MKTAYIAKQR")],
            [("a", "t", 1.0), ("b", "t", 2.0)],
            max_len=probe.config.max_len,
        )
        batch = pairs.collate([0, 1], unique=False, dense=True)
        with quiet_hooks():
            gsm(*batch.args()).sum().backward()
        missing = [
            n for n, p in probe.named_parameters() if p.requires_grad and getattr(p, "grad_sample", None) is None
        ]
    finally:
        gsm._close()
    if missing:
        raise ConfigError(
            f"{where}: Opacus computes no per-sample gradients for {missing[:4]} of drug encoder "
            f"{probe.config.drug_encoder!r}; use model.drug_encoder 'gin' or 'gcn' under privacy.mode 'local'"
        )


class DPSite:
    """``inner`` trained with DP-SGD under ``privacy`` and the site's ``plan`` (fixed, and the
    model checked with :func:`check_dp_model`, when the run was prepared), drawing sampling
    and noise from ``random``.

    ``ledger`` (the site home's :class:`~pharmafl.sites.home.PrivacyLedger`) carries the
    budget across runs: what runs other than ``run_id`` spent on this store's data is
    composed with this run's rounds, and the history is recorded there after every trained
    round. Without a ledger the accounting covers this object's rounds only.
    """

    def __init__(
        self,
        inner: Site,
        privacy: PrivacyConfig,
        plan: PrivacyPlan,
        random: SecureRandom,
        *,
        ledger=None,
        run_id: str | None = None,
    ):
        self.inner, self.id = inner, inner.id
        self.cfg = privacy.for_site(inner.id)
        units = count_units(inner.train, self.cfg.unit)
        if units != plan.units or plan.unit != self.cfg.unit:
            raise ConfigError(
                f"site {inner.id}: the run planned DP for {plan.units} {plan.unit}s, the store holds "
                f"{units} {self.cfg.unit}s; the store changed after the run was prepared"
            )
        if ledger is not None and not run_id:
            raise ConfigError(f"site {inner.id}: a DP site with a privacy ledger needs the run id")
        self.plan, self.random, self.ledger, self.run_id = plan, random, ledger, run_id
        site_budget = getattr(ledger, "budget", None)
        self.budget = site_budget if site_budget is not None else plan.budget
        self.manifest = inner.store.manifest_sha256
        self.prior: History = []
        self.prior_other = 0.0  # ε of earlier runs under another accountant or δ, added
        self.history: History = []
        if ledger is not None:
            self.prior, self.prior_other = ledger.prior(self.manifest, plan.accountant, plan.delta, exclude=run_id)
            self.history = ledger.history_of(self.manifest, run_id, plan.accountant, plan.delta)
        self.epsilon_prior = self._epsilon([])
        self._optimizer_state: dict | None = None
        self._after: int | None = None  # the step whose optimizer state is in memory

    def _epsilon(self, history: History) -> float:
        """Cumulative ε on this data after earlier runs and ``history`` of this run."""
        return epsilon_spent(self.prior + list(history), self.plan.delta, self.plan.accountant) + self.prior_other

    @property
    def epsilon(self) -> float:
        """ε spent on this site's data so far, this run and the earlier ones together."""
        return self._epsilon(self.history)

    def evaluate(self, state: State) -> dict[str, float]:
        return self.inner.evaluate(state)

    def fit(self, round: int, state: State, instructions: Instructions) -> FitResult | Declined:
        if instructions.scaffold_control is not None:
            raise ConfigError("SCAFFOLD's control variates are exact local gradients: not private under DP-SGD")
        plan = self.plan
        before, after = self.epsilon, self._epsilon(compose(self.history, plan.round_step))
        if self.budget is not None and after > self.budget:
            return Declined(
                self.id,
                round,
                "privacy budget exhausted",
                {
                    "epsilon_total": before,
                    "epsilon_if_trained": after,
                    "budget": self.budget,
                    "epsilon_prior": self.epsilon_prior,
                    "delta": plan.delta,
                    "accountant": plan.accountant,
                },
            )
        metrics = {f"global_{k}": v for k, v in self.inner.evaluate(state).items()}
        step = instructions.step or round
        carried = self.inner.carried  # the optimizer state, in the site's home (sites/carried.py)
        if self._after is None or self._after >= step:
            self._optimizer_state = (carried.before(step) or {}).get("optimizer")
        with torch_threads(self.inner.threads):
            delta, stats = self._train(step, state, instructions)
        carried.save(step, {"optimizer": self._optimizer_state})
        self._after = step
        self.history = compose(self.history, plan.round_step)
        if self.ledger is not None:
            self.ledger.record(
                self.run_id,
                self.manifest,
                plan.accountant,
                plan.delta,
                self.history,
                epsilon_spent(self.history, plan.delta, plan.accountant),
            )
        total = self.epsilon
        n = len(self.inner.train)
        payload = wire.encode(wire.Update(self.id, round, n, {"delta": delta}))
        privacy = {
            **stats.as_dict(),
            "epsilon_round": total - before,
            "epsilon_total": total,
            "epsilon_prior": self.epsilon_prior,
            "delta": plan.delta,
            "budget": self.budget,
            "accountant": plan.accountant,
            "noise_multiplier": plan.noise_multiplier,
            "sample_rate": plan.sample_rate,
            "steps": plan.steps_per_round,
            "privacy_unit": plan.unit,
            "noise_source": self.random.source,
        }
        metrics["train_pairs"] = n
        return FitResult(self.id, round, payload, wire.sha256(payload), n, metrics, privacy)

    def _train(self, step: int, state: State, instructions: Instructions) -> tuple[State, ClipStats]:
        inner, plan = self.inner, self.plan
        torch.manual_seed(int(round_seed(inner.seed, self.id, step).generate_state(1)[0]))  # dropout
        model = inner.model_from(state)
        gsm = wrap(model, plan.unit, plan.clip_norm)
        base = make_optimizer(model, inner.train_cfg)
        if inner.keep_optimizer_state and self._optimizer_state is not None:
            base.load_state_dict(self._optimizer_state)
        stats = ClipStats(plan.clip_norm)
        optimizer = dp_optimizer(
            base,
            plan.unit,
            noise_multiplier=plan.noise_multiplier,
            max_grad_norm=plan.clip_norm,
            expected_batch_size=max(1, int(plan.sample_rate * plan.units + 0.5)),
            random=self.random,
            stats=stats,
            after_noise=_proximal_grad(instructions.proximal_mu, model, state),
        )
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
        privacy = {
            "clip_norm": self.clip_norm,
            "clipped": int(norm > self.clip_norm),
            "total": 1,
            "max_norm": norm,
            "mean_norm": norm,
            "privacy_unit": "site",
        }
        return FitResult(self.id, round, payload, wire.sha256(payload), res.num_examples, metrics, privacy)
