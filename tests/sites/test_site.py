"""A site's local training: updates, the strategies' local parts, determinism, its store."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest

from pharmafl.errors import DataError
from pharmafl.pipeline.aggregate import l2_norm
from pharmafl.pipeline.run import initial_state, make_site, prepare
from pharmafl.sites import update as wire
from pharmafl.sites.site import Instructions
from pharmafl.sites.store import SiteStore


@pytest.fixture
def plan(small_cfg, tmp_path):
    return prepare(small_cfg, tmp_path / "run")


def test_store_has_local_splits_and_whole_test_share(plan):
    store = SiteStore.open(plan.site_home("site-01") / "store")
    folds = set(store.dataset.measurements["fold"])
    assert folds == {"train", "val", "test"}
    assert len(store.rows("train")) > len(store.rows("val")) > 0


def test_fit_returns_a_decodable_update_with_its_hash(plan):
    site = make_site(plan, "site-02").inner
    state = initial_state(plan.cfg)
    res = site.fit(1, state, Instructions())
    upd = wire.decode(res.payload)
    assert res.update_hash == wire.sha256(res.payload) and upd.site == "site-02" and upd.round == 1
    assert upd.delta.keys() == state.keys() and l2_norm(upd.delta) > 0
    assert res.num_examples == len(site.train) and {"train_loss", "global_val_mse"} <= set(res.metrics)
    again = make_site(plan, "site-02").fit(1, state, Instructions())
    assert again.update_hash == res.update_hash  # same seed, site, round -> same bytes


def test_proximal_term_keeps_the_update_closer(plan):
    state = initial_state(plan.cfg)
    free = make_site(plan, "site-01").fit(1, state, Instructions())
    held = make_site(plan, "site-01").fit(1, state, Instructions(proximal_mu=50.0))
    assert l2_norm(wire.decode(held.payload).delta) < l2_norm(wire.decode(free.payload).delta)


def test_scaffold_control_is_adopted_only_once_the_server_accepted_it(plan):
    state = initial_state(plan.cfg)
    zero = {k: np.zeros_like(v) for k, v in state.items()}

    def fresh():
        s = make_site(plan, "site-03").inner
        s.keep_optimizer_state = False  # isolate the control variate from Adam's carried state
        return s

    site = fresh()
    res = site.fit(1, state, Instructions(scaffold_control=zero, accepted=()))
    upd = wire.decode(res.payload)
    assert upd.parts.keys() == {"delta", "control"}
    assert l2_norm(upd.parts["control"]) > 0  # c_i moves from 0 to the local gradient
    assert site._control is None and site._pending is not None  # not yet: the server may reject it
    pending = site._pending
    rejected = site.fit(2, state, Instructions(scaffold_control=zero, accepted=("site-01",)))
    assert site._control is None  # rejected last round: c_i stays 0
    plain = fresh().fit(2, state, Instructions(scaffold_control=zero, accepted=()))
    assert rejected.update_hash == plain.update_hash
    # step 2 again: the site starts it from what it carried after step 1 (its home's snapshot)
    adopted = site.fit(2, state, Instructions(scaffold_control=zero, accepted=("site-03",)))
    assert all(np.array_equal(site._control[k], pending[k]) for k in pending)
    assert adopted.update_hash != plain.update_hash


def test_scaffold_correction_adds_c_minus_c_i_to_every_gradient():
    import torch

    from pharmafl.sites.site import _corrected

    model = torch.nn.Linear(2, 1)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    correction = {k: torch.full_like(p, 0.25) for k, p in model.named_parameters()}
    _corrected(correction)(model)
    assert all(torch.equal(p.grad, torch.full_like(p, 1.25)) for p in model.parameters())


def test_tampered_store_is_refused(plan):
    path = (plan.site_home("site-01") / "store") / "targets.parquet"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="sha256"):
        SiteStore.open(plan.site_home("site-01") / "store")


def test_benchmark_store_is_the_union_of_test_shares(plan):
    from pharmafl.sites.tables import read_store

    bench = read_store(plan.benchmark_dir).measurements
    shares = sum(len(SiteStore.open(plan.site_home(s) / "store").rows("test")) for s in plan.sites)
    assert len(bench) == shares and set(bench["fold"]) == {"test"}


def test_threads_are_restored_after_fit(plan):
    import torch

    before = torch.get_num_threads()
    site = make_site(plan, "site-01").inner
    site.threads = before + 1
    site.fit(1, initial_state(plan.cfg), Instructions())
    assert torch.get_num_threads() == before


def test_replace_keeps_config_frozen(small_cfg):
    from dataclasses import FrozenInstanceError

    with pytest.raises(FrozenInstanceError):
        small_cfg.seed = 3  # type: ignore[misc]
    assert replace(small_cfg, seed=3).seed == 3


def test_optimizer_state_is_carried_between_rounds_unless_reset(plan):
    state = initial_state(plan.cfg)
    keep = make_site(plan, "site-02").inner
    keep.fit(1, state, Instructions())
    assert keep._optimizer_state is not None and keep._optimizer_state["state"]
    carried = keep.fit(2, state, Instructions())
    # a new site object (a restarted process: a resumed run) takes up what its home kept after step 1
    assert make_site(plan, "site-02").fit(2, state, Instructions()).update_hash == carried.update_hash
    shutil.rmtree(plan.site_home("site-02") / "runs" / plan.run_id / "carried")  # nothing kept: a fresh start
    fresh = make_site(plan, "site-02").fit(2, state, Instructions())
    assert carried.update_hash != fresh.update_hash  # Adam's moments from round 1 shape round 2
    reset = make_site(plan, "site-02").inner
    reset.keep_optimizer_state = False
    reset.fit(1, state, Instructions())
    assert reset._optimizer_state is None
    assert reset.fit(2, state, Instructions()).update_hash == fresh.update_hash
