"""The command-line contract, on every command of the tree (``pipeline/cli.py``'s docstring).

The cases are generated from the commands' own parameters, so a new command is covered by
itself: for every leaf command, a missing required argument or option, an unknown option,
a bad value for each typed parameter (an int or float given ``x``, a choice given ``bogus``,
a path that must exist given one that does not) and, where the command reads a positional
path, a path that does not exist. Each must exit 2 with one short ``error: ...`` on stderr and
no traceback. Plus what the issue named, in real processes, and fast ``--help`` (no heavy
module imported: measured with ``python -X importtime``, not in seconds).
"""

from __future__ import annotations

import os
import subprocess
import sys
from enum import Enum
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
import typer.main

from pharmafl.pipeline.cli import DEPENDENCIES, main, mount_subcommands

ROOT = typer.main.get_command(mount_subcommands())
HEAVY = {"torch", "torch_geometric", "rdkit", "opacus", "nvflare", "crypten", "pandas", "pyarrow"}
CHECKOUT = Path(__file__).resolve().parents[2]
SECRETS = (
    "PHARMAFL_SITE_PASSPHRASE",
    "PHARMAFL_PARTY_PASSPHRASE",
    "PHARMAFL_KEY_PASSPHRASE",
    "PHARMAFL_PASSWORD",
    "PHARMAFL_NEW_PASSWORD",
)


def leaves(cmd=ROOT, path: tuple[str, ...] = ()):
    """``(path, command)`` for every command that runs something (groups walked into)."""
    subs = getattr(cmd, "commands", None)
    if subs is None:
        yield path, cmd
        return
    for name, sub in subs.items():
        yield from leaves(sub, (*path, name))


def groups(cmd=ROOT, path: tuple[str, ...] = ()):
    subs = getattr(cmd, "commands", None)
    if subs is not None:
        yield path, cmd
        for name, sub in subs.items():
            yield from groups(sub, (*path, name))


def _params(cmd) -> list:
    return [p for p in cmd.params if p.expose_value and p.name != "help" and not getattr(p, "hidden", False)]


def _item_type(param) -> Any:
    ann = param.type_descriptor.annotation
    return get_args(ann)[0] if get_origin(ann) in (list, tuple) else ann


def _choices(param) -> tuple | None:
    choices = param.type_descriptor.choices
    return tuple(c.value if isinstance(c, Enum) else c for c in choices) if choices else None


def _is_path(param) -> bool:
    return _item_type(param) is Path


def _must_exist(param) -> bool:
    return _is_path(param) and bool(getattr(param.type_descriptor.parameter_info, "exists", False))


def _is_flag(param) -> bool:
    return bool(getattr(param, "is_flag", False))


def _good(param, where: Path) -> list[str]:
    """A value the parser accepts for ``param`` (nargs values)."""
    item = _item_type(param)
    if _choices(param):
        value = str(_choices(param)[0])
    elif item is int:
        value = "1"
    elif item is float:
        value = "0.5"
    elif _must_exist(param):
        info = param.type_descriptor.parameter_info
        value = str(where)
        if not getattr(info, "dir_okay", True):
            (where / "a-file").write_text("")
            value = str(where / "a-file")
    elif _is_path(param):
        value = str(where / f"fill-{param.name}")
    else:
        value = "x"
    return [value] * max(param.nargs, 1)


def _argv(path, cmd, where: Path, override: dict[str, list[str]] | None = None) -> list[str]:
    """Every required parameter filled with a good value (``override``: these values instead)."""
    override = override or {}
    args, opts = [], []
    for p in _params(cmd):
        if p.name not in override and (not p.required or _is_flag(p)):
            continue
        values = override.get(p.name) or _good(p, where)
        if p.param_type_name == "argument":
            args += values
        else:
            opts += [p.opts[0], *values]
    return [*path, *args, *opts]


def _cases():
    """``(id, argv builder, what the error line must name)`` for every leaf command."""
    for path, cmd in leaves():
        name = " ".join(path)
        required = [p for p in _params(cmd) if p.required]
        if required:
            yield f"{name}: missing", lambda where, path=path: list(path), "Missing"
        yield (
            f"{name}: unknown option",
            lambda where, path=path, cmd=cmd: [*_argv(path, cmd, where), "--no-such-option"],
            "--no-such-option",
        )
        for p in _params(cmd):
            if _is_flag(p):
                continue
            label = p.opts[0] if p.param_type_name == "option" else p.name
            bad = None
            if _choices(p):
                bad = "bogus"
            elif _item_type(p) in (int, float):
                bad = "x"
            elif _must_exist(p):
                bad = "no-such-path"
            if bad is not None:
                yield (
                    f"{name}: {label} {bad}",
                    lambda where, path=path, cmd=cmd, p=p, bad=bad: _argv(
                        path,
                        cmd,
                        where,
                        {p.name: [str(where / bad) if bad == "no-such-path" else bad] * max(p.nargs, 1)},
                    ),
                    label,
                )


CASES = list(_cases())


def _one_short_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert 1 <= len(lines) <= 3, err
    assert lines[0].lower().startswith("error: "), err
    return " ".join(lines)


@pytest.mark.parametrize("argv_of, names", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_every_usage_error_is_one_line_and_exit_2(argv_of, names, tmp_path, capfd):
    argv = argv_of(tmp_path)
    assert main(argv) == 2, argv
    err = _one_short_error(capfd.readouterr().err)
    assert names.lower() in err.lower(), (argv, err)


INPUTS = [
    (" ".join(path), path, cmd)
    for path, cmd in leaves()
    if any(p.param_type_name == "argument" and _is_path(p) and not _must_exist(p) for p in _params(cmd))
]


@pytest.mark.parametrize("path, cmd", [i[1:] for i in INPUTS], ids=[i[0] for i in INPUTS])
def test_a_missing_input_path_is_one_error_naming_it_and_exit_2(path, cmd, tmp_path, capfd, monkeypatch):
    """The positional paths are what a command reads: each given a path that does not exist
    (secrets set, so that the command gets as far as reading them)."""
    for env in SECRETS:
        monkeypatch.setenv(env, "a test secret")
    missing = {
        p.name: [str(tmp_path / f"missing-{p.name}")] * max(p.nargs, 1)
        for p in _params(cmd)
        if p.param_type_name == "argument" and _is_path(p)
    }
    assert main(_argv(path, cmd, tmp_path, missing)) == 2
    err = _one_short_error(capfd.readouterr().err)
    # it names a path that is not there (the positional one, or a filled-in option's), or the
    # filled-in option it refused before reading anything
    refused = [p.opts[0] for p in _params(cmd) if p.required and p.param_type_name == "option"]
    assert "missing-" in err or "fill-" in err or any(f"{o} " in err for o in refused), err


@pytest.mark.parametrize("path", [g[0] for g in groups()], ids=[" ".join(g[0]) or "pharmafl" for g in groups()])
def test_groups_refuse_unknown_commands_and_options(path, capfd):
    assert main([*path, "no-such-command"]) == 2
    assert "No such command" in _one_short_error(capfd.readouterr().err)
    assert main([*path, "--no-such-option"]) == 2
    assert "--no-such-option" in _one_short_error(capfd.readouterr().err)


def test_the_walk_covers_the_tree():
    """The generated cases reach every kind of parameter (so the walk itself is not vacuous)."""
    names = {c[0] for c in CASES}
    assert {"run: missing", "ledger prove-update: --round x", "train-central: --batching bogus"} <= names
    assert "party init: --role bogus" in names and "site audit" in {i[0] for i in INPUTS}
    assert len({c[0].split(":")[0] for c in CASES}) == len(list(leaves())) >= 30


def test_the_cli_choices_are_the_registries():
    """train-central's choices, typed where --help can list them, are the registries' keys."""
    from pharmafl.models.drug_encoders import DRUG_ENCODERS
    from pharmafl.pipeline import cli_central
    from pharmafl.pipeline.central import LR_SCHEDULES
    from pharmafl.sites import home, site_cli
    from pharmafl.sites.batching import BATCHINGS

    assert get_args(cli_central.Batching) == tuple(BATCHINGS)
    assert get_args(cli_central.LrSchedule) == tuple(LR_SCHEDULES)
    assert get_args(cli_central.DrugEncoder) == tuple(DRUG_ENCODERS)
    assert site_cli.CARD_FILE == home.CARD_FILE


def test_exit_codes_are_in_the_help(capsys):
    assert main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Exit codes: 0 success; 1 verification failed or action refused; 2 usage error" in text


def test_a_refusal_exits_1_and_a_bad_input_2(capsys):
    from pharmafl.errors import ConfigError, RefusedError
    from pharmafl.pipeline.secure_agg.party_home import PartyRefusal
    from pharmafl.sites.site_cli import AuditFailure

    assert PartyRefusal("no").exit_code == AuditFailure("no").exit_code == RefusedError.exit_code == 1
    assert ConfigError("bad").exit_code == 2


# --- in real processes --------------------------------------------------------------------------


def pharmafl(*args: str, importtime: bool = False, cwd: Path | None = None) -> subprocess.CompletedProcess:
    flags = ["-X", "importtime"] if importtime else []
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, *flags, "-m", "pharmafl.pipeline.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=cwd,
    )


def imported(stderr: str) -> set[str]:
    """Top-level package names in ``python -X importtime``'s report."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def test_run_without_its_config_is_one_line_exit_2():
    done = pharmafl("run")
    assert done.returncode == 2, done.stderr
    assert "Missing argument 'config'" in _one_short_error(done.stderr) and "pharmafl run --help" in done.stderr


def test_run_with_a_bad_engine_is_one_line_exit_2(tmp_path):
    (tmp_path / "x.yaml").write_text("name: x\n")
    done = pharmafl("run", "x.yaml", "--engine", "bogus", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    err = _one_short_error(done.stderr)
    assert "--engine" in err and "'bogus'" in err and "local" in err and "nvflare" in err


def test_version_names_the_package_commit_and_dependencies_without_importing_them():
    done = pharmafl("--version", importtime=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    import pharmafl as package

    assert lines[0].startswith(f"pharmafl {package.__version__}")
    if (CHECKOUT / ".git").exists():
        assert " (git " in lines[0] and len(lines[0].split("(git ")[1].rstrip(")").split("+")[0]) == 40
    listed = {line.split()[0] for line in lines[1:]}
    assert set(DEPENDENCIES) <= listed
    assert not HEAVY & imported(done.stderr), sorted(HEAVY & imported(done.stderr))


@pytest.mark.parametrize(
    "command", [(), ("ledger",), ("site",), ("party",), ("consortium",), ("data",), ("report",), ("run",)]
)
def test_help_imports_no_heavy_module(command):
    done = pharmafl(*command, "--help", importtime=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Usage" in done.stdout
    heavy = HEAVY & imported(done.stderr)
    assert not heavy, f"pharmafl {' '.join(command)} --help imports {sorted(heavy)}"
