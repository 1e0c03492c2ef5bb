"""The command line as a user meets it: help everywhere, one clear error line, outputs."""

from __future__ import annotations

import json

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
    code = main(["train-central", "--dataset", str(small_davis), "--epochs", "2", "--batch-size", "64", "--out", str(out)])
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
        ({"model": {"drug_encoder": "gine"}}, "Could not resolve drug encoder 'gine'"),
        ({"federation": {"min_sites": 11}}, "exceeds data.sites"),
    ],
)
def test_bad_config_is_one_clear_error_and_writes_nothing(tmp_path, capsys, sections, message):
    cfg = write_config(tmp_path / "bad.yaml", **sections)
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert message in " ".join(err.split()), err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert not out.exists()


def test_run_local_from_cli(small_davis, tmp_path, capsys):
    cfg = write_config(
        tmp_path / "cfg.yaml",
        name="cli",
        data={"dataset": str(small_davis), "sites": 2, "partition": "iid"},
        model={"max_len": 64, "embed_dim": 16, "kernel_size": 4, "latent_dim": 32},
        train={"batch_size": 64},
        federation={"rounds": 1, "engine": "nvflare"},
        ledger={"enabled": False},
    )
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--engine", "local", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "global (benchmark)" in text and "site-02" in text
    assert json.loads((out / "metrics.json").read_text())["engine"] == "local"
