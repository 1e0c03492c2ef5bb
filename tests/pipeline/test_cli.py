"""The command line as a user meets it: help everywhere, one clear error line, outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pharmafl.pipeline.cli import app, main


def commands(group, prefix=()):
    import typer.main

    cmd = typer.main.get_command(group)
    yield prefix
    for name, sub in getattr(cmd, "commands", {}).items():
        yield (*prefix, name)
        for subname in getattr(sub, "commands", {}):
            yield (*prefix, name, subname)


def test_help_on_every_command(capsys):
    assert main(["--help"]) == 0
    listed = list(commands(app))
    assert ("run",) in listed and ("train-central",) in listed and ("data", "fetch") in listed
    for path in listed:
        assert main([*path, "--help"]) == 0, path
        assert "Usage" in capsys.readouterr().out


def test_train_central_one_epoch(small_davis, tmp_path, capsys):
    out = tmp_path / "central"
    code = main(
        ["train-central", "--dataset", str(small_davis), "--epochs", "2", "--batch-size", "64", "--out", str(out)]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"test_mse", "test_ci", "test_pearson", "epochs", "seconds"} <= set(metrics)
    assert metrics["epochs"] == 2 and 0.0 <= metrics["test_ci"] <= 1.0
    assert (out / "learning_curve.png").stat().st_size > 1000
    assert "test MSE" in capsys.readouterr().out


def write_config(path, **sections):
    path.write_text(yaml.safe_dump(sections))
    return path


@pytest.mark.parametrize(
    "sections, message",
    [
        ({"federation": {"rouns": 3}}, "federation.rouns: unknown key (did you mean 'rounds'?)"),
        ({"data": {"partition": "scaffold"}}, "Could not resolve 'scaffold' among choices"),
        ({"federation": {"strategy": "fedsgd"}}, "Could not resolve 'fedsgd' among choices"),
        ({"federation": {"strategy": "fedprox", "strategy_options": {"mu": -1}}}, "mu must be >= 0"),
        ({"federation": {"rounds": "ten"}}, "federation.rounds must be an integer"),
        ({"model": {"drug_encoder": "gine"}}, "model.drug_encoder: Could not resolve 'gine'"),
        ({"federation": {"min_sites": 11}}, "exceeds data.sites"),
        ({"privacy": {"mode": "local", "epsilon": 0}}, "privacy.epsilon must be a finite number > 0, got 0"),
        ({"privacy": {"mode": "local", "epsilon": 1, "delta": 1.5}}, "privacy.delta must be in the open interval"),
        ({"privacy": {"mode": "local", "epsilon": 1, "clip_norm": -1}}, "privacy.clip_norm must be a finite"),
        ({"privacy": {"mode": "locall"}}, "Could not resolve 'locall' among choices"),
        ({"privacy": {"mode": "local", "epsilon": 1, "unit": "molecule"}}, "Could not resolve 'molecule'"),
    ],
)
def test_bad_config_is_one_clear_error_and_writes_nothing(tmp_path, capsys, sections, message):
    cfg = write_config(tmp_path / "bad.yaml", **sections)
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out)]) == 2  # unreadable input
    err = capsys.readouterr().err
    assert message in " ".join(err.split()), err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert not out.exists()


def small_run_config(path, small_davis, **sections):
    """2 sites x 1 round on the small DAVIS subset with a narrow model, plus ``sections``."""
    base = {
        "data": {"dataset": str(small_davis), "sites": 2, "partition": "iid"},
        "model": {"max_len": 64, "embed_dim": 16, "kernel_size": 4, "latent_dim": 32},
        "ledger": {"enabled": False},
    }
    return write_config(path, **{**base, **sections})


def test_run_local_from_cli(small_davis, tmp_path, capsys):
    cfg = small_run_config(
        tmp_path / "cfg.yaml",
        small_davis,
        name="cli",
        train={"batch_size": 64},
        federation={"rounds": 1, "engine": "nvflare"},
    )
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--engine", "local", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "global (benchmark)" in text and "site-02" in text
    assert json.loads((out / "metrics.json").read_text())["engine"] == "local"


def test_dp_run_from_cli_shows_epsilon_spent(small_davis, tmp_path, capsys):
    cfg = small_run_config(
        tmp_path / "cfg.yaml",
        small_davis,
        name="cli-dp",
        federation={"rounds": 1, "engine": "local"},
        privacy={"mode": "local", "epsilon": 6, "batch_size": 32},
    )
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "ε spent" in text
    spent = json.loads((out / "metrics.json").read_text())["epsilon_spent"]
    assert set(spent) == {"site-01", "site-02"} and all(0 < e <= 6 for e in spent.values())


def test_secure_run_from_cli_and_a_site_proves_what_it_sent(small_davis, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PHARMAFL_KEY_PASSPHRASE", "a test passphrase")
    cfg = small_run_config(
        tmp_path / "cfg.yaml",
        small_davis,
        name="cli-secure",
        federation={"rounds": 1, "engine": "local"},
        ledger={"enabled": True},
        secure_aggregation={"enabled": True, "max_update_norm": 5.0},
    )
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out)]) == 0
    assert "the server saw only the sums; 0 update(s) excluded" in " ".join(capsys.readouterr().out.split())
    assert main(["ledger", "prove-update", str(out), "--site", "site-02", "--round", "1"]) == 0
    assert capsys.readouterr().out.startswith("OK: site-02 round 1")
    run_id = json.loads((out / "plan.json").read_text())["run_id"]
    kept = out / "sites" / "site-02" / "runs" / run_id / "kept"  # in the site's own home
    doc = json.loads((kept / "round-0001.json").read_text())
    seeds = {p: "11" * 32 for p in doc["seeds"]}  # the update is real, but not what was shared
    (kept / "round-0001.json").write_text(json.dumps({**doc, "seeds": seeds}))  # a forged opening
    assert main(["ledger", "prove-update", str(out), "--site", "site-02", "--round", "1"]) == 1
    assert "FAIL: site-02 round 1" in capsys.readouterr().out
    assert main(["ledger", "prove-update", str(out), "--site", "site-02", "--round", "7"]) == 2  # no such input
    assert "holds no kept update for round 7" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["davis-10sites.yaml", "davis-10sites-dp.yaml", "davis-10sites-secure.yaml"])
def test_shipped_configs_load_and_plan(name, tmp_path, shared_data_dir):
    """The demo configs parse, and (for DP) every site's budget pays for at least one round."""
    from pharmafl.pipeline.config import load_run_config
    from pharmafl.pipeline.run import prepare

    cfg = load_run_config(Path(__file__).resolve().parents[2] / "configs" / name)
    assert cfg.data.sites == 10 and cfg.ledger.enabled
    plan = prepare(cfg, tmp_path / "run", data_dir=shared_data_dir)
    if cfg.privacy.enabled:
        assert set(plan.privacy_plans) == set(plan.sites)
        for p in plan.privacy_plans.values():
            assert p["budget"] == 8.0 and 0 < p["noise_multiplier"] < 10 and p["delta"] < 1 / p["units"]
    if cfg.secure_aggregation.enabled:
        assert set(plan.party_homes) == set(plan.consortium["parties"]) == {"server-party", "helper-1"}
        assert not (tmp_path / "run" / "secagg").exists()  # the coordinator holds no party key


def test_a_failing_command_exits_non_zero_through_main(tmp_path, capsys):
    """Scripts (and regulators) rely on the exit code: typer.Exit(n) inside a command must be n."""
    assert main(["ledger", "verify", str(tmp_path / "nothing-here")]) == 2
    assert "not a SQLite file" in capsys.readouterr().err  # an error: on stderr
