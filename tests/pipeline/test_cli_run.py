"""``pharmafl run``: --set overrides, choices in --help, --json summary, one-line config errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pharmafl.pipeline.cli import main

DEMO = Path(__file__).resolve().parents[2] / "configs" / "davis-10sites.yaml"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "federation.rouns=3"], "federation.rouns: unknown key (did you mean 'rounds'?)"),
        (["--set", "train.lr=fast"], "train.lr must be a number, got 'fast'"),
        (["--set", "federation.rounds"], "is not section.key=value"),
        (["--set", "federation.min_sites=12"], "federation.min_sites (12) exceeds data.sites (10)"),
    ],
)
def test_a_bad_set_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert main(["run", str(DEMO), *args, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    err = " ".join(captured.err.split())
    assert message in err and captured.err.count("error:") == 1 and "Traceback" not in err
    assert captured.out == "" and not out.exists()


def test_engine_choices_are_in_help_and_enforced(capsys):
    assert main(["run", "--help"]) == 0
    assert "nvflare|local" in capsys.readouterr().out
    assert main(["run", str(DEMO), "--engine", "spark"]) == 2
    assert "spark" in capsys.readouterr().err


def test_sites_shortcut_scales_a_fractional_min_sites_and_json_is_all_of_stdout(tmp_path, capsys, monkeypatch):
    seen = {}

    def fake_run(cfg, out, **kw):
        seen["cfg"] = cfg
        return {"status": "completed", "rounds": 2, "engine": "local", "strategy": "fedavg", "test_mse": 0.5}

    monkeypatch.setattr("pharmafl.pipeline.engines.run_federated", fake_run)
    out = tmp_path / "run"
    args = ["run", str(DEMO), "--sites", "3", "--rounds", "2", "--engine", "local", "--set", "ledger.enabled=false"]
    assert main([*args, "--out", str(out), "--json"]) == 0
    cfg = seen["cfg"]
    assert (cfg.data.sites, cfg.min_sites, cfg.federation.rounds, cfg.federation.engine) == (3, 3, 2, "local")
    summary = json.loads(capsys.readouterr().out)  # the whole of stdout is one document
    assert summary["run_dir"] == str(out) and summary["rounds"] == 2 and summary["metrics"] == {"test_mse": 0.5}
    assert summary["ledger_head"] is None and "privacy" not in summary


def test_a_real_run_records_the_overridden_config_and_prints_its_summary(small_davis, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PHARMAFL_KEY_PASSPHRASE", "a test passphrase")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "name": "cli-json",
                "data": {"dataset": str(small_davis), "sites": 2, "partition": "iid"},
                "model": {"max_len": 64, "embed_dim": 16, "kernel_size": 4, "latent_dim": 32},
                "federation": {"rounds": 3, "engine": "nvflare"},
            }
        )
    )
    out = tmp_path / "run"
    sets = ["--set", "federation.rounds=1", "--set", "train.batch_size=64", "--set", "federation.min_sites=1.0"]
    assert main(["run", str(cfg), *sets, "--engine", "local", "--out", str(out), "--json", "--quiet"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["rounds"] == 1 and summary["engine"] == "local" and 0 <= summary["metrics"]["test_ci"] <= 1
    assert set(summary["sites"]) == {"site-01", "site-02"}
    head = summary["ledger_head"]
    assert head["tree_size"] > 0 and len(head["root_hash"]) == 64
    recorded = yaml.safe_load((out / "config.yaml").read_text())
    assert recorded["federation"]["rounds"] == 1 and recorded["train"]["batch_size"] == 64
    assert recorded["federation"]["engine"] == "local" and recorded["federation"]["min_sites"] == 1.0
