"""What runs at a site each round: receive global weights, train locally, return the update.

The local optimizer's state (Adam's moment estimates) is kept from one round to the next by
default: restarting Adam every round repeats its bias-corrected first steps, which move every
weight by the full learning rate whatever its gradient, and cost DAVIS test CI 0.65 vs 0.77
after 10 epochs even with a single site (``bench/federated.py``).

A :class:`Site` reads only its own store. What leaves it is a :class:`FitResult`: the
update's bytes (weight delta, and SCAFFOLD's control delta), their SHA-256, the number of
training examples and scalar metrics. Never rows, labels or predictions.

The strategy's local part arrives as :class:`Instructions`: FedProx's proximal term
(Li et al. 2020, https://arxiv.org/abs/1812.06127) adds
:math:`\\tfrac{\\mu}{2}\\lVert w - w^t \\rVert^2` to the loss; SCAFFOLD (Karimireddy et al.
2020, https://arxiv.org/abs/1910.06378) corrects each gradient by :math:`c - c_i` and
refreshes :math:`c_i` with option I (the local gradient at the global model), which holds
for any local optimizer.
"""

from __future__ import annotations

import copy
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pharmafl.models.dti import DTIModel, ModelConfig
from pharmafl.models.pairs import PairTensors
from pharmafl.sites import update as wire
from pharmafl.sites.carried import CarriedState, arrays, tensors
from pharmafl.sites.store import SiteStore
from pharmafl.sites.tables import DTIDataset
from pharmafl.sites.training import TrainConfig, evaluate, make_optimizer, train_epoch

State = dict[str, np.ndarray]


@dataclass(frozen=True)
class Instructions:
    """The strategy's requests for one round's local training."""

    proximal_mu: float = 0.0
    scaffold_control: State | None = None  # server control variate c
    accepted: tuple[str, ...] | None = None  # sites whose last update the server aggregated
    step: int = 0  # the run's logical round (seeds, carried state); 0: the round number itself


@dataclass(frozen=True)
class FitResult:
    """What a site sends back: update bytes exactly as sent, their hash, counts, metrics."""

    site: str
    round: int
    payload: bytes
    update_hash: str
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    privacy: dict | None = None  # DP accounting and clip statistics (sites/dp_site.py)
    statements: tuple[dict, ...] = ()  # what the site asserts, signed at the site (sites/signed_site.py)


@dataclass(frozen=True)
class Declined:
    """A site's refusal to train a round (e.g. its privacy budget cannot pay for it)."""

    site: str
    round: int
    reason: str
    details: dict = field(default_factory=dict)
    statements: tuple[dict, ...] = ()  # the signed ``site_declined`` statement


def state_of(model: torch.nn.Module) -> State:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def round_seed(seed: int, site: str, round: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, zlib.crc32(site.encode()), round])


def featurize_dataset(ds: DTIDataset, model_cfg: ModelConfig, cache_dir: Path | None) -> PairTensors:
    """Every entity and pair of ``ds`` as tensors; pair ``i`` is measurement row ``i``."""
    m = ds.measurements
    return PairTensors.build(
        list(zip(ds.drugs["drug_id"], ds.drugs["smiles"])),
        list(zip(ds.targets["target_id"], ds.targets["sequence"])),
        list(zip(m["drug_id"], m["target_id"], m["label"])),
        max_len=model_cfg.max_len,
        cache_dir=cache_dir,
    )


class Site:
    """One site's local training over its store."""

    def __init__(
        self,
        store: SiteStore,
        model: ModelConfig,
        train: TrainConfig,
        *,
        local_epochs: int = 1,
        seed: int = 0,
        cache_dir: Path | None = None,
        threads: int = 1,
        keep_optimizer_state: bool = True,
        carried_dir: Path | None = None,
    ):
        self.id = store.site
        self.carried = CarriedState(carried_dir)  # persisted after every round (sites/carried.py)
        self._after: int | None = None  # the step whose carried state is in memory
        self.threads = threads
        self.keep_optimizer_state = keep_optimizer_state
        self._optimizer_state: dict | None = None  # Adam's moments, carried from round to round
        self.store = store
        self.model_cfg, self.train_cfg = model, train
        self.local_epochs, self.seed = local_epochs, seed
        pairs = featurize_dataset(store.dataset, model, cache_dir)
        self.train, self.val, self.test = (pairs.subset(store.rows(s)) for s in ("train", "val", "test"))
        self._control: State | None = None  # SCAFFOLD's c_i, kept across rounds
        self._pending: State | None = None  # the c_i sent last round, until the server accepts it

    def model_from(self, state: State) -> DTIModel:
        """A fresh model holding ``state``."""
        model = DTIModel.from_config(self.model_cfg)
        model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
        return model

    def evaluate(self, state: State) -> dict[str, float]:
        """Metrics of ``state`` on the local validation split and test share."""
        with torch_threads(self.threads):
            return self._evaluate(state)

    def _evaluate(self, state: State) -> dict[str, float]:
        model = self.model_from(state)
        out = {}
        for split, pairs in (("val", self.val), ("test", self.test)):
            if len(pairs):
                out.update({f"{split}_{k}": v for k, v in evaluate(model, pairs).items()})
                out[f"{split}_pairs"] = len(pairs)
        return out

    def fit(self, round: int, state: State, instructions: Instructions) -> FitResult:
        """Train ``local_epochs`` from ``state``; return the encoded update and metrics.

        Runs on ``threads`` intra-op threads: float sums depend on the thread count, so every
        engine trains a site with the same count for the same result.
        """
        step = instructions.step or round
        if self._after is None or self._after >= step:  # a fresh object, or a step redone
            self._take_up(self.carried.before(step))
        with torch_threads(self.threads):
            out = self._fit(round, step, state, instructions)
        self.carried.save(step, self._carried())
        self._after = step
        return out

    def _carried(self) -> dict:
        return {
            "optimizer": self._optimizer_state,
            "control": tensors(self._control),
            "pending": tensors(self._pending),
        }

    def _take_up(self, values: dict | None) -> None:
        values = values or {}
        self._optimizer_state = values.get("optimizer")
        self._control, self._pending = arrays(values.get("control")), arrays(values.get("pending"))

    def _fit(self, round: int, step: int, state: State, instructions: Instructions) -> FitResult:
        model = self.model_from(state)
        metrics = {f"global_{k}": v for k, v in self._evaluate(state).items()}
        seq = round_seed(self.seed, self.id, step)
        torch.manual_seed(int(seq.generate_state(1)[0]))
        rng = np.random.default_rng(seq)
        optimizer = make_optimizer(model, self.train_cfg)
        if self.keep_optimizer_state and self._optimizer_state is not None:
            optimizer.load_state_dict(self._optimizer_state)
        extra_loss = after_backward = None
        start = {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}
        if instructions.proximal_mu > 0:
            extra_loss = _proximal(instructions.proximal_mu, start)
        new_control = None
        if instructions.scaffold_control is not None:
            self._settle_control(instructions.accepted)
            c = {k: torch.from_numpy(np.asarray(v)) for k, v in instructions.scaffold_control.items()}
            c_i = self._control or {k: np.zeros_like(v) for k, v in state.items()}
            new_control = self._local_gradient(model)  # option I: grad of local loss at x
            correction = {k: c[k] - torch.from_numpy(c_i[k]) for k in c}
            after_backward = _corrected(correction)
        losses = []
        for _ in range(self.local_epochs):
            losses.append(
                train_epoch(
                    model,
                    optimizer,
                    self.train,
                    self.train_cfg,
                    rng,
                    extra_loss=extra_loss,
                    after_backward=after_backward,
                )["loss"]
            )
        if self.keep_optimizer_state:
            self._optimizer_state = copy.deepcopy(optimizer.state_dict())
        local = state_of(model)
        parts = {"delta": {k: local[k] - np.asarray(state[k]) for k in state}}
        if new_control is not None:
            c_i = self._control or {k: np.zeros_like(v) for k, v in state.items()}
            parts["control"] = {k: new_control[k] - c_i[k] for k in state}
            self._pending = new_control  # becomes c_i once the server has aggregated this update
        payload = wire.encode(wire.Update(self.id, round, len(self.train), parts))
        metrics.update({"train_loss": losses[-1], "train_pairs": len(self.train)})
        return FitResult(self.id, round, payload, wire.sha256(payload), len(self.train), metrics)

    def _settle_control(self, accepted: tuple[str, ...] | None) -> None:
        """Adopt last round's c_i if the server aggregated that update, else drop it: the
        server's c must stay the mean of the c_i it has counted."""
        if self._pending is not None and accepted is not None and self.id in accepted:
            self._control = self._pending
        self._pending = None

    def _local_gradient(self, model: DTIModel) -> State:
        """Mean gradient of the local training loss at the current weights (eval mode)."""
        model.eval()
        model.zero_grad(set_to_none=True)
        n = len(self.train)
        for i in range(0, n, 4096):
            batch = self.train.collate(np.arange(i, min(i + 4096, n)))
            (F.mse_loss(model(*batch.args()), batch.labels, reduction="sum") / n).backward()
        grads = {k: p.grad.detach().numpy().copy() for k, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
        model.train()
        return grads


@contextmanager
def torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _proximal(mu: float, start: dict[str, torch.Tensor]):
    def term(model: DTIModel) -> torch.Tensor:
        return 0.5 * mu * sum(((p - start[k]) ** 2).sum() for k, p in model.named_parameters())

    return term


def _corrected(correction: dict[str, torch.Tensor]):
    def hook(model: DTIModel) -> None:
        for k, p in model.named_parameters():
            if p.grad is not None:
                p.grad.add_(correction[k])

    return hook
