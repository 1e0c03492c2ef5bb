"""The consortium protocol end to end: sites set themselves up, the coordinator runs from cards.

Each site runs ``pharmafl site init`` on its own tables, the coordinator builds the consortium
from the cards alone (``pharmafl consortium init``), each site accepts it, and two runs go over
the same homes: the second starts from the ε the first spent, and the site's own budget (not
the run's) makes it decline.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from pharmafl.pipeline.config import LedgerConfig
from pharmafl.pipeline.engines import run_federated
from pharmafl.sites.privacy import PrivacyConfig

from .conftest import events

SITES = ("site-01", "site-02", "site-03")


def cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).parent / "pharmafl"), *args], capture_output=True, text=True, timeout=300, env=env
    )


@pytest.fixture
def consortium(small_davis: Path, tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    import os

    env = {**os.environ, "PHARMAFL_SITE_PASSPHRASE": "each-site-keeps-its-own"}
    monkeypatch.setenv("PHARMAFL_SITE_PASSPHRASE", env["PHARMAFL_SITE_PASSPHRASE"])
    monkeypatch.setenv("PHARMAFL_KEY_PASSPHRASE", "the-coordinator's-own")
    drugs = pd.read_csv(small_davis / "drugs.csv")
    targets = pd.read_csv(small_davis / "targets.csv")
    pairs = pd.read_csv(small_davis / "measurements.csv")
    homes = tmp_path / "homes"
    cards = []
    for k, site in enumerate(SITES):  # each site holds 8 of the 24 compounds and their measurements
        mine = drugs.iloc[k * 8 : (k + 1) * 8]
        tables = tmp_path / f"tables-{site}"
        tables.mkdir()
        mine.to_csv(tables / "drugs.csv", index=False)
        targets.to_csv(tables / "targets.csv", index=False)
        pairs[pairs.drug_id.isin(mine.drug_id)].to_csv(tables / "measurements.csv", index=False)
        done = cli(
            "site",
            "init",
            str(tables),
            "--id",
            site,
            "--home",
            str(homes / site),
            "--epsilon-budget",
            "5",
            env=env,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        cards.append(homes / site / "site-card.json")
    done = cli(
        "consortium",
        "init",
        *map(str, cards),
        "--out",
        str(tmp_path / "coordinator"),
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    agreed = tmp_path / "coordinator" / "consortium.json"
    for site in SITES:
        done = cli("site", "accept", str(homes / site), str(agreed), env=env)
        assert done.returncode == 0, done.stdout + done.stderr
    return agreed, homes


def test_two_runs_on_the_sites_own_homes_share_one_privacy_budget(consortium, small_cfg, tmp_path) -> None:
    agreed, homes = consortium
    cfg = replace(
        small_cfg,
        ledger=LedgerConfig(enabled=True),
        federation=replace(small_cfg.federation, rounds=1, min_sites=1),
        privacy=PrivacyConfig(mode="local", epsilon=4.0, batch_size=32, noise_source="seeded"),
    )
    first = run_federated(cfg, tmp_path / "run-1", consortium=agreed, site_homes=homes)
    assert first["status"] == "completed"
    spent = {e["actor"]: e["payload"]["epsilon_total"] for e in events(tmp_path / "run-1", "privacy_spent")}
    assert sorted(spent) == list(SITES) and all(3.0 < e <= 4.0 for e in spent.values())
    second = run_federated(cfg, tmp_path / "run-2", consortium=agreed, site_homes=homes)
    declined = {e["actor"]: e["payload"] for e in events(tmp_path / "run-2", "site_declined")}
    assert sorted(declined) == list(SITES), second  # two runs compose to ~5.3 > the site's own budget of 5
    for site, d in declined.items():
        assert d["epsilon_prior"] == pytest.approx(spent[site]) and d["budget"] == 5.0
    plan = json.loads((tmp_path / "run-2" / "plan.json").read_text())
    assert all(Path(h).parent == homes for h in plan["site_homes"].values())
    assert not list((tmp_path / "run-2").rglob("*.key.json"))[1:]  # the coordinator's own key only
    for site in SITES:  # each site checks on its own that both ledgers hold its statements unmodified
        for run in ("run-1", "run-2"):
            done = cli("site", "audit", str(homes / site), str(tmp_path / run), env={})
            assert done.returncode == 0, done.stdout + done.stderr


def test_a_site_that_did_not_accept_the_consortium_is_refused(consortium, small_cfg, tmp_path) -> None:
    agreed, homes = consortium
    (homes / "site-02" / "consortia.json").write_text(json.dumps({"accepted": []}))
    from pharmafl.errors import ConfigError

    with pytest.raises(ConfigError, match="site-02 has not accepted"):
        run_federated(
            replace(small_cfg, ledger=LedgerConfig(enabled=True)), tmp_path / "run", consortium=agreed, site_homes=homes
        )
    assert not (tmp_path / "run").exists()
