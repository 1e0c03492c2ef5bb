"""``pharmafl ledger ...``: the Typer sub-app, as the main CLI will mount it."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from pharmafl.audit.cli import app

from .conftest import ASSETS

runner = CliRunner()


def test_verify_ok_and_fail_exit_codes(run_dir: Path) -> None:
    ok = runner.invoke(app, ["verify", str(run_dir)])
    assert ok.exit_code == 0 and ok.output.startswith("OK: 24 entries, 3 checkpoints, head ")
    bad = runner.invoke(app, ["verify", str(ASSETS / "ledger_epsilon_edited")])
    assert bad.exit_code == 1 and bad.output.startswith("FAIL: seq 26: signature does not verify")
    missing = runner.invoke(app, ["verify", str(run_dir / "nope")])
    assert missing.exit_code == 2 and missing.output.startswith("ERROR: ")


def test_head_then_verify_with_trusted_head_and_keys(run_dir: Path, tmp_path: Path) -> None:
    head = tmp_path / "head.json"
    assert runner.invoke(app, ["head", str(run_dir), "--out", str(head)]).exit_code == 0
    assert json.loads(head.read_text())["tree_size"] == 24
    bundle = tmp_path / "bundle"
    exported = runner.invoke(app, ["export", str(run_dir), "--out", str(bundle)])
    assert exported.exit_code == 0 and "exported 24 entries, 3 checkpoints" in exported.output
    result = runner.invoke(app, ["verify", str(bundle), "--trusted-head", str(head), "--trusted-keys", str(bundle)])
    assert result.exit_code == 0, result.output
    again = runner.invoke(app, ["export", str(run_dir / "ledger.db"), "--out", str(bundle)])
    assert again.exit_code == 2 and "choose a new --out path" in again.output


def test_prove_prints_verified_json(run_dir: Path) -> None:
    inc = runner.invoke(app, ["prove", str(run_dir), "--inclusion", "7"])
    assert inc.exit_code == 0, inc.output
    assert json.loads(inc.output)["verified"] is True
    cons = runner.invoke(app, ["prove", str(run_dir), "--consistency", "14", "24"])
    proof = json.loads(cons.output)
    assert cons.exit_code == 0 and proof["verified"] and proof["old_checkpoint"]["tree_size"] == 14


def test_prove_needs_exactly_one_question(run_dir: Path) -> None:
    result = runner.invoke(app, ["prove", str(run_dir)])
    assert result.exit_code == 2 and "exactly one of --inclusion SEQ or --consistency OLD NEW" in result.output


def test_keys_lists_fingerprints_and_registration(run_dir: Path) -> None:
    result = runner.invoke(app, ["keys", str(run_dir / "keys"), "--ledger", str(run_dir)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["server", "site-01", "site-02", "site-03"]
    assert "registered at seq 0" in lines[0] and all("registered at seq" in line for line in lines)
    empty = runner.invoke(app, ["keys", str(run_dir)])
    assert empty.exit_code == 2 and "no *.key.json key files there" in empty.output


def test_mounts_as_a_sub_command(run_dir: Path) -> None:
    import typer

    main = typer.Typer()
    main.command("run")(lambda: None)  # the main CLI has commands of its own
    main.add_typer(app, name="ledger")
    result = runner.invoke(main, ["ledger", "verify", str(run_dir)])
    assert result.exit_code == 0 and result.output.startswith("OK: 24 entries")
