"""Shared test fixtures."""

import os
from pathlib import Path

import pandas as pd
import pytest

from pharmafl.models.dti import ModelConfig
from pharmafl.pipeline.config import DataConfig, FederationConfig, LedgerConfig, RunConfig
from pharmafl.sites.training import TrainConfig


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The DAVIS/KIBA tidy tables from ``$PHARMAFL_DATA``; skipped when absent unless
    ``PHARMAFL_REQUIRE_DATA=1`` (then the test fails)."""
    env = os.environ.get("PHARMAFL_DATA")
    path = Path(env) if env else None
    if path is not None and (path / "davis_deepdta_pairs.csv.gz").is_file():
        return path
    reason = f"PHARMAFL_DATA={env!r} holds no davis_deepdta_pairs.csv.gz" if env else "PHARMAFL_DATA is not set"
    reason += " (set it to the folder of the DAVIS/KIBA tidy tables, e.g. ../shared/data beside the checkout)"
    if os.environ.get("PHARMAFL_REQUIRE_DATA") == "1":
        pytest.fail(f"PHARMAFL_REQUIRE_DATA=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def small_davis(shared_data_dir: Path, tmp_path_factory) -> Path:
    """24 DAVIS drugs x 30 targets (720 real pairs, DeepDTA folds kept) as CSV tables."""
    out = tmp_path_factory.mktemp("small_davis")
    drugs = pd.read_csv(shared_data_dir / "davis_deepdta_drugs.csv.gz").iloc[:24]
    targets = pd.read_csv(shared_data_dir / "davis_deepdta_targets.csv.gz").iloc[::15].iloc[:30]
    pairs = pd.read_csv(shared_data_dir / "davis_deepdta_pairs.csv.gz")
    pairs = pairs[pairs.drug_id.isin(drugs.drug_id) & pairs.target_id.isin(targets.target_id)]
    drugs[["drug_id", "smiles"]].to_csv(out / "drugs.csv", index=False)
    targets[["target_id", "sequence"]].to_csv(out / "targets.csv", index=False)
    pairs = pairs.rename(columns={"deepdta_fold": "fold"})[["drug_id", "target_id", "affinity", "fold"]]
    pairs.assign(unit="nM_Kd").to_csv(out / "measurements.csv", index=False)
    return out


@pytest.fixture
def small_cfg(small_davis: Path) -> RunConfig:
    """3 sites x 2 rounds on the small subset, a narrow model: seconds per run."""
    return RunConfig(
        name="small",
        seed=7,
        data=DataConfig(dataset=str(small_davis), sites=3, partition="iid"),
        model=ModelConfig(max_len=64, embed_dim=16, kernel_size=4, latent_dim=32),
        train=TrainConfig(batch_size=64),
        federation=FederationConfig(rounds=2, engine="local"),
        ledger=LedgerConfig(enabled=False),
    )
