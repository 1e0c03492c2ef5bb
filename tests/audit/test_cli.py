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
    with Ledger.open(tmp_path / "ledger.db", keystore) as ledger:  # keys in tmp_path/keys, beside it
        ledger.register("auditor")
    keystore.get_or_create("unregistered")
    for source in (tmp_path, tmp_path / "ledger.db"):  # the run directory or its ledger, like the siblings
        result = runner.invoke(app, ["keys", str(source)])
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert [line.split("\t")[0] for line in lines] == ["auditor", "server", "unregistered"]
        assert lines[0].endswith("registered at seq 1") and lines[1].endswith("registered at seq 0")
        assert lines[2].endswith("not registered")
    empty = runner.invoke(app, ["keys", str(tmp_path), "--keystore", str(tmp_path / "ledger.db")])
    assert empty.exit_code == 2 and "no *.key.json key files there" in empty.stderr


def test_keys_json_matches_the_ledger_and_flags_a_mismatch(tmp_path: Path, keystore) -> None:
    with Ledger.open(tmp_path / "ledger.db", keystore) as ledger:
        ledger.register("auditor")
        registered = ledger.registered_keys()
    other = tmp_path / "other-keys"
    other.mkdir()
    (other / "auditor.key.json").write_text(
        (keystore.path / "auditor.key.json").read_text().replace(registered["auditor"]["fingerprint"], "ab" * 32)
    )
    result = runner.invoke(app, ["keys", str(tmp_path), "--keystore", str(other), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    rows = {row["actor"]: row for row in doc["keys"]}
    assert doc["keystore"] == str(other) and set(rows) == set(registered) == {"auditor", "server"}
    assert rows["auditor"]["status"] == "mismatch" and rows["auditor"]["fingerprint"] == "ab" * 32
    assert rows["auditor"]["ledger_fingerprint"] == registered["auditor"]["fingerprint"]
    assert rows["server"] == {
        "actor": "server",
        "fingerprint": registered["server"]["fingerprint"],
        "ledger_fingerprint": registered["server"]["fingerprint"],
        "seq": registered["server"]["seq"],
        "status": "not in key store",
    }
    text = runner.invoke(app, ["keys", str(tmp_path), "--keystore", str(other)])
    assert text.exit_code == 0 and f"MISMATCH: ledger has {registered['auditor']['fingerprint']}" in text.stdout


def test_keys_given_the_key_store_instead_of_the_ledger_says_what_to_pass(tmp_path: Path, keystore) -> None:
    keystore.get_or_create("server")
    result = runner.invoke(app, ["keys", str(keystore.path)])
    assert result.exit_code == 2 and result.stdout == ""
    assert "no ledger at" in result.stderr and "is a key store: pass the run (or its ledger) and --keystore" in (
        " ".join(result.stderr.split())
    )


@pytest.mark.parametrize(
    "command",
    [["verify"], ["verify", "--json"], ["head"], ["head", "--json"], ["keys"], ["keys", "--json"], ["export"]],
)
def test_a_missing_ledger_exits_2_everywhere(tmp_path: Path, command: list[str]) -> None:
    extra = ["--out", str(tmp_path / "b")] if command == ["export"] else []
    result = runner.invoke(app, [command[0], str(tmp_path / "nowhere"), *command[1:], *extra])
    assert result.exit_code == 2, result.output
    if "--json" in command and command[0] == "verify":
        assert json.loads(result.stdout) == {
            "ok": False,
            "seq": None,
            "reason": f"{tmp_path / 'nowhere'}: not a SQLite file, a run directory with ledger.db, a bundle with "
            "manifest.json, or a postgresql:// URL",
            "unreadable": True,
        }
    else:
        assert result.stdout == "" and ("no ledger at" in result.stderr or "not a SQLite file" in result.stderr)


def test_verify_json_is_the_result_the_ledger_establishes(ledger_run: Path) -> None:
    result = runner.invoke(app, ["verify", str(ledger_run), "--json", "--roster", str(ASSETS / "consortium.json")])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)  # parses without --quiet: progress never touches stdout
    with Ledger.open(ledger_run) as ledger:
        entries, checkpoints = len(ledger), ledger.checkpoints()
        run_id = json.loads(next(iter(e for e in ledger.entries() if e.type == "run_started")).payload)["run_id"]
    assert doc == {
        "ok": True,
        "entries": entries,
        "checkpoints": len(checkpoints),
        "witnessed": 3,
        "quorum": 2,
        "sites": 3,
        "root_hash": checkpoints[-1].root_hash,  # the last checkpoint covers every entry here
        "run_id": run_id,
    }
    assert checkpoints[-1].tree_size == entries
    text = runner.invoke(app, ["verify", str(ledger_run)])
    assert text.stdout == OK_LINE + doc["root_hash"] + "\n"


def test_verify_json_failure_names_the_first_bad_seq(ledger_run: Path) -> None:
    result = runner.invoke(app, ["verify", str(ASSETS / "ledger_statement_forged_by_coordinator"), "--json"])
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["ok"] is False and doc["seq"] == 24 and doc["unreadable"] is False
    assert doc["reason"].startswith("site-03's statement signature does not verify")


def test_verify_draws_progress_on_stderr_only_and_not_with_quiet(ledger_run: Path, monkeypatch) -> None:
    import io

    from rich.console import Console

    import pharmafl.console

    drawn = io.StringIO()
    monkeypatch.setattr(pharmafl.console, "stderr", Console(file=drawn, force_terminal=True, width=100))
    result = runner.invoke(app, ["verify", str(ledger_run), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["entries"] == 31
    assert "verifying entries" in drawn.getvalue() and "31/31" in drawn.getvalue()
    drawn.seek(0), drawn.truncate()
    quiet = runner.invoke(app, ["verify", str(ledger_run), "--json", "--quiet"])
    assert quiet.exit_code == 0 and json.loads(quiet.stdout)["entries"] == 31 and drawn.getvalue() == ""


def test_head_json_is_the_checkpoint_also_with_out(ledger_run: Path, tmp_path: Path) -> None:
    with Ledger.open(ledger_run) as ledger:
        last = json.loads(ledger.checkpoints()[-1].to_json_line())
    printed = runner.invoke(app, ["head", str(ledger_run), "--json"])
    assert printed.exit_code == 0 and json.loads(printed.stdout) == last
    written = runner.invoke(app, ["head", str(ledger_run), "--json", "--out", str(tmp_path / "head.json")])
    assert written.exit_code == 0 and json.loads(written.stdout) == last
    assert json.loads((tmp_path / "head.json").read_text()) == last


def test_mounts_as_a_sub_command(ledger_run: Path) -> None:
    import typer

    main = typer.Typer()
    main.command("run")(lambda: None)  # the main CLI has commands of its own
    main.add_typer(app, name="ledger")
    result = runner.invoke(main, ["ledger", "verify", str(ledger_run)])
    assert result.exit_code == 0 and result.output.startswith(OK_LINE)


def test_ledger_help_imports_nothing_heavy() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from typer.testing import CliRunner; from pharmafl.audit.cli import app; "
        "[CliRunner().invoke(app, [*c, '--help']) for c in ([], ['verify'], ['keys'], ['head'], ['export'])]; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'torch_geometric', 'rdkit', 'opacus', "
        "'nvflare', 'crypten', 'pandas', 'pyarrow', 'sqlalchemy', 'sqlmodel'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
