"""A site store's manifest records the target sequences the model window cuts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pharmafl.sites.home import SiteHome
from pharmafl.sites.store import SiteStore, write_site_store
from pharmafl.sites.tables import file_sha256, load_dataset

ASSETS = Path(__file__).parent / "assets"  # targets: CDK2 298, EGFR 1210, TESK1 244 residues


def _extra(store: Path) -> dict:
    return json.loads((store / "manifest.json").read_text())["extra"]


def test_manifest_records_the_targets_cut_at_the_default_window(tmp_path):
    ds = load_dataset(ASSETS)

    write_site_store(ds, np.arange(12), tmp_path / "s", site="site-01", val_fraction=0.2, seed=0, partition=None)

    assert _extra(tmp_path / "s")["targets_truncated"] == {
        "max_len": 1000,
        "count": 1,
        "longest": 1210,
        "ids": ["EGFR"],
    }


def test_manifest_counts_against_the_window_it_is_given(tmp_path):
    ds = load_dataset(ASSETS)

    for window, ids in ((250, ["EGFR", "CDK2"]), (1210, [])):
        out = tmp_path / str(window)
        write_site_store(ds, np.arange(12), out, site="s", val_fraction=0.2, seed=0, partition=None, max_len=window)
        assert _extra(out)["targets_truncated"] == {"max_len": window, "count": len(ids), "longest": 1210, "ids": ids}


def test_only_the_sites_own_targets_are_counted(tmp_path):
    ds = load_dataset(ASSETS)
    rows = np.flatnonzero(ds.measurements["target_id"].ne("EGFR").to_numpy())

    write_site_store(ds, rows, tmp_path / "s", site="s", val_fraction=0.2, seed=0, partition=None)

    assert _extra(tmp_path / "s")["targets_truncated"] == {"max_len": 1000, "count": 0, "longest": 298, "ids": []}


def test_site_init_records_the_runs_window_in_the_signed_manifest(tmp_path):
    home = SiteHome.init(tmp_path / "h", "site-01", load_dataset(ASSETS), passphrase="pw", scrypt_n=2**14, max_len=64)

    truncated = _extra(tmp_path / "h" / "store")["targets_truncated"]
    assert truncated == {"max_len": 64, "count": 3, "longest": 1210, "ids": ["EGFR", "CDK2", "TESK1"]}
    assert home.card["manifest_sha256"] == file_sha256(tmp_path / "h" / "store" / "manifest.json")
    assert SiteStore.open(tmp_path / "h" / "store").manifest_sha256 == home.card["manifest_sha256"]


def test_a_simulated_run_records_its_model_window_in_every_site_manifest(small_cfg, tmp_path):
    from pharmafl.pipeline.run import prepare

    plan = prepare(small_cfg, tmp_path / "run")

    window = small_cfg.model.max_len
    for site in plan.sites:
        store = tmp_path / "run" / "sites" / site / "store"
        truncated, ds = _extra(store)["targets_truncated"], SiteStore.open(store).dataset
        longer = ds.targets[ds.targets["sequence"].str.len() > window]
        assert truncated["max_len"] == window and truncated["count"] == len(longer) > 0
        assert sorted(truncated["ids"]) == sorted(longer["target_id"])
