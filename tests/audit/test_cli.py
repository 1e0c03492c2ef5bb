"""``pharmafl ledger ...``: the Typer sub-app, as the main CLI will mount it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pharmafl.audit.cli import app
from pharmafl.audit.ledger import Ledger

from .assets.make_fixtures import LedgerBuilder, write_db
from .conftest import ASSETS

runner = CliRunner()
OK_LINE = "OK: 31 entries, 4 checkpoints (3 witnessed, quorum 2 of 3 sites), head "


@pytest.fixture
def ledger_run(tmp_path: Path) -> Path:
    b = LedgerBuilder().run()
    write_db(tmp_path / "run" / "ledger.db", b.entries, b.checkpoints, b.cosignatures)
    return tmp_path / "run"


def test_verify_ok_and_fail_exit_codes(ledger_run: Path) -> None:
    ok = runner.invoke(app, ["verify", str(ledger_run)])
    assert ok.exit_code == 0 and ok.output.startswith(OK_LINE)
    bad = runner.invoke(app, ["verify", str(ASSETS / "ledger_statement_forged_by_coordinator")])
    assert bad.exit_code == 1 and bad.output.startswith("FAIL: seq 24: site-03's statement signature does not verify")
    missing = runner.invoke(app, ["verify", str(ledger_run / "nope")])
    assert missing.exit_code == 2 and missing.output.startswith("ERROR: ")


def test_verify_takes_the_roster_and_the_witness_policy(ledger_run: Path) -> None:
    roster = str(ASSETS / "consortium.json")
    ok = runner.invoke(app, ["verify", str(ledger_run), "--roster", roster, "--witnesses", "3"])
    assert ok.exit_code == 0 and "quorum 3 of 3 sites" in ok.output, ok.output
    other = runner.invoke(app, ["verify", str(ASSETS / "ledger_rewritten_fresh_keys"), "--roster", roster])
    assert other.exit_code == 1 and "pins another roster than the trusted" in other.output


def test_head_then_verify_with_trusted_head_and_keys(ledger_run: Path, tmp_path: Path) -> None:
    head = tmp_path / "head.json"
    assert runner.invoke(app, ["head", str(ledger_run), "--out", str(head)]).exit_code == 0
    assert json.loads(head.read_text())["tree_size"] == 31
    bundle = tmp_path / "bundle"
    exported = runner.invoke(app, ["export", str(ledger_run), "--out", str(bundle)])
    assert exported.exit_code == 0 and "exported 31 entries, 4 checkpoints, 9 cosignatures" in exported.output
    result = runner.invoke(app, ["verify", str(bundle), "--trusted-head", str(head), "--trusted-keys", str(bundle)])
    assert result.exit_code == 0, result.output
    again = runner.invoke(app, ["export", str(ledger_run / "ledger.db"), "--out", str(bundle)])
    assert again.exit_code == 2 and "choose a new --out path" in again.output


def test_export_of_a_ledger_that_does_not_verify_exits_1_unless_forced(tmp_path: Path) -> None:
    b = LedgerBuilder().run()
    b.checkpoints[0]["signature"] = b.checkpoints[1]["signature"]
    write_db(tmp_path / "l.db", b.entries, b.checkpoints, b.cosignatures)
    refused = runner.invoke(app, ["export", str(tmp_path / "l.db"), "--out", str(tmp_path / "b")])
    assert refused.exit_code == 1 and "refusing to export a ledger that does not verify: seq 14" in refused.output
    forced = runner.invoke(app, ["export", str(tmp_path / "l.db"), "--out", str(tmp_path / "b"), "--force"])
    assert forced.exit_code == 0 and "exported 31 entries, 4 checkpoints, 9 cosignatures" in forced.output


def test_prove_prints_verified_json(ledger_run: Path) -> None:
    inc = runner.invoke(app, ["prove", str(ledger_run), "--inclusion", "7"])
    assert inc.exit_code == 0, inc.output
    assert json.loads(inc.output)["verified"] is True
    cons = runner.invoke(app, ["prove", str(ledger_run), "--consistency", "15", "31"])
    proof = json.loads(cons.output)
    assert cons.exit_code == 0 and proof["verified"] and proof["old_checkpoint"]["tree_size"] == 15


def test_prove_needs_exactly_one_question(ledger_run: Path) -> None:
    result = runner.invoke(app, ["prove", str(ledger_run)])
    assert result.exit_code == 2 and "exactly one of --inclusion SEQ or --consistency OLD NEW" in result.output


def test_keys_lists_fingerprints_and_registration(tmp_path: Path, keystore) -> None:
    with Ledger.open(tmp_path / "l.db", keystore) as ledger:
        ledger.register("auditor")
    keystore.get_or_create("unregistered")
    result = runner.invoke(app, ["keys", str(keystore.path), "--ledger", str(tmp_path / "l.db")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["auditor", "server", "unregistered"]
    assert "registered at seq 1" in lines[0] and "registered at seq 0" in lines[1] and "not registered" in lines[2]
    empty = runner.invoke(app, ["keys", str(tmp_path)])
    assert empty.exit_code == 2 and "no *.key.json key files there" in empty.output


def test_mounts_as_a_sub_command(ledger_run: Path) -> None:
    import typer

    main = typer.Typer()
    main.command("run")(lambda: None)  # the main CLI has commands of its own
    main.add_typer(app, name="ledger")
    result = runner.invoke(main, ["ledger", "verify", str(ledger_run)])
    assert result.exit_code == 0 and result.output.startswith(OK_LINE)
