"""The compliance commands as a new user meets them after `make demo` (README, Compliance)."""

from __future__ import annotations

import json

import pytest

from pharmafl.pipeline.cli import main

from ..audit.conftest import PASSPHRASE
from .conftest import password

NEW = [
    ("users",),
    ("users", "init"),
    ("users", "create"),
    ("users", "passwd"),
    ("users", "role"),
    ("users", "unlock"),
    ("users", "disable"),
    ("users", "login"),
    ("users", "list"),
    ("report",),
    ("sign",),
    ("evidence",),
    ("evidence", "export"),
    ("evidence", "verify"),
]


@pytest.fixture
def as_user(monkeypatch):
    """Run ``pharmafl ARGS`` with the given passwords in the environment, as scripts do."""
    monkeypatch.setenv("PHARMAFL_KEY_PASSPHRASE", PASSPHRASE)

    def run(*args: str, password: str | None = None, new: str | None = None) -> int:
        for var, value in (("PHARMAFL_PASSWORD", password), ("PHARMAFL_NEW_PASSWORD", new)):
            if value is None:
                monkeypatch.delenv(var, raising=False)
            else:
                monkeypatch.setenv(var, value)
        return main([str(a) for a in args])

    return run


@pytest.mark.parametrize("path", NEW)
def test_help_on_every_compliance_command(path, capsys) -> None:
    assert main([*path, "--help"]) == 0
    assert "Usage" in capsys.readouterr().out


def test_the_readme_walkthrough(real_run, tmp_path, as_user, capsys) -> None:
    run, ada, quinn, rita = real_run, "river-Stone-0001", "qa-Secret-00042", "reg-Secret-00042"
    assert as_user("users", "init", run, "--admin", "ada", "--name", "Ada Lovelace", new=ada) == 0
    assert (
        as_user(
            "users",
            "create",
            run,
            "--user",
            "ada",
            "--id",
            "quinn",
            "--name",
            "Quinn Quality",
            "--role",
            "qa",
            password=ada,
            new="Temporary-Pass-1",
        )
        == 0
    )
    assert (
        as_user(
            "users",
            "create",
            run,
            "--user",
            "ada",
            "--id",
            "rita",
            "--name",
            "Rita Regulator",
            "--role",
            "regulator",
            password=ada,
            new="Temporary-Pass-2",
        )
        == 0
    )
    assert as_user("users", "passwd", run, "--user", "quinn", password="Temporary-Pass-1", new=quinn) == 0
    assert as_user("users", "passwd", run, "--user", "rita", password="Temporary-Pass-2", new=rita) == 0
    report = run / "reports" / "r1"
    assert as_user("report", run, "--user", "quinn", "--out", report, password=quinn) == 0
    assert as_user("sign", report, "--user", "quinn", "--meaning", "approved", password=quinn) == 0
    assert "signed: Approved by Quinn Quality (user:quinn, qa) on " in capsys.readouterr().out
    head = tmp_path / "head.json"
    assert as_user("ledger", "head", run, "--out", head) == 0
    package = tmp_path / "evidence"
    assert (
        as_user("evidence", "export", run, "--user", "rita", "--report", report, "--out", package, password=rita) == 0
    )
    capsys.readouterr()
    assert as_user("evidence", "verify", package, "--trusted-head", head) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK: evidence package") and "1 e-signature(s)" in out
    assert as_user("users", "list", run) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[:3] for line in listed] == [
        ["ada", "admin", "active"],
        ["quinn", "qa", "active"],
        ["rita", "regulator", "active"],
    ]
    assert as_user("users", "list", run, "--json") == 0
    users = json.loads(capsys.readouterr().out)["users"]
    assert [[u["user_id"], u["role"], u["status"]] for u in users] == [line.split("\t")[:3] for line in listed]
    assert [u["full_name"] for u in users] == ["Ada Lovelace", "Quinn Quality", "Rita Regulator"]
    assert all(u["enrolled"] for u in users) and not any(
        "password" in k and "set_at" not in k for u in users for k in u
    )
    assert as_user("evidence", "verify", package, "--trusted-head", head, "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    manifest = json.loads((package / "MANIFEST.json").read_text())
    bundle = json.loads((package / "ledger" / "manifest.json").read_text())
    assert doc["ok"] is True and doc["run_id"] == manifest["run_id"] and doc["files"] == len(manifest["files"])
    assert (doc["reports"], doc["signatures"]) == (1, 1)
    assert doc["ledger"]["entries"] == bundle["entries"] and doc["ledger"]["root_hash"] == bundle["root_hash"]
    assert out.rstrip("\n") == (
        f"OK: evidence package of run {doc['run_id']}: {doc['files']} files, 1 report(s), 1 e-signature(s); "
        f"ledger {doc['ledger']['entries']} entries"
    ) + out.split(" entries", 1)[1].rstrip("\n")


def test_refusals_are_one_error_line(real_run, as_user, capsys) -> None:
    ada = "river-Stone-0001"
    assert as_user("users", "init", real_run, "--admin", "ada", "--name", "Ada Lovelace", new=ada) == 0
    assert (
        as_user(
            "users",
            "create",
            real_run,
            "--user",
            "ada",
            "--id",
            "rita",
            "--name",
            "Rita Regulator",
            "--role",
            "regulator",
            password=ada,
            new="Temporary-Pass-2",
        )
        == 0
    )
    assert (
        as_user("users", "passwd", real_run, "--user", "rita", password="Temporary-Pass-2", new="reg-Secret-00042") == 0
    )
    capsys.readouterr()
    code = as_user(
        "report", real_run, "--user", "rita", "--out", real_run / "reports" / "x", password="reg-Secret-00042"
    )
    err = capsys.readouterr().err
    assert code == 1 and err.count("error:") == 1 and "Traceback" not in err
    assert "'rita' (role regulator) may not generate a report" in " ".join(err.split())
    assert (
        as_user(
            "users", "role", real_run, "--user", "rita", "--id", "rita", "--role", "admin", password="reg-Secret-00042"
        )
        == 1
    )
    assert "only admin may" in " ".join(capsys.readouterr().err.split())
    assert as_user("users", "login", real_run, "--user", "rita", password="wrong-Secret-1") == 1
    assert "unknown user id or wrong password" in capsys.readouterr().err


def test_a_missing_run_is_named_before_any_passphrase_is_asked_for(tmp_path, monkeypatch, capsys) -> None:
    for var in ("PHARMAFL_KEY_PASSPHRASE", "PHARMAFL_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    for args in (
        ["report", str(tmp_path / "nowhere"), "--user", "quinn", "--out", str(tmp_path / "r1")],
        ["users", "passwd", str(tmp_path / "nowhere"), "--user", "quinn"],
    ):
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert "does not exist" in err and "passphrase" not in err, (args, err)
    assert not (tmp_path / "r1").exists()


def test_a_missing_ledger_exits_2(tmp_path, as_user, capsys) -> None:
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    for args in (
        ("report", empty, "--user", "quinn", "--out", tmp_path / "r1"),
        ("report", tmp_path / "nowhere", "--user", "quinn", "--out", tmp_path / "r1"),
        ("users", "list", empty),
        ("users", "list", empty, "--json"),
        ("users", "list", tmp_path / "nowhere"),
    ):
        assert as_user(*args, password="x") == 2, args
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.startswith("error: "), args
        assert "no ledger at" in captured.err or "does not exist" in captured.err, args
    assert as_user("evidence", "verify", empty, "--json") == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc == {
        "ok": False,
        "seq": None,
        "reason": f"{empty}: no MANIFEST.json; not a pharmafl evidence package",
        "unreadable": True,
    }
    assert as_user("evidence", "verify", empty) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("ERROR: ") and "no MANIFEST.json" in captured.err


def test_report_on_a_ledger_that_does_not_verify_exits_1(team, as_user, cli_admits_test_kdf, capsys) -> None:
    import sqlite3

    team.ac.close()
    db = sqlite3.connect(team.run / "ledger.db")
    db.execute("DROP TRIGGER ledger_entries_no_update")
    db.execute("UPDATE ledger_entries SET payload = replace(payload, '\"round\":1', '\"round\":7') WHERE seq = 5")
    db.commit()
    db.close()
    out = team.run / "reports" / "r1"
    assert as_user("report", team.run, "--user", "quinn", "--out", out, password=password("quinn")) == 1
    assert "its ledger does not verify (first bad entry: seq 5)" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize(
    ("path", "shown"),
    [
        (("users", "create"), "data_scientist|qa|regulator|admin"),
        (("users", "role"), "data_scientist|qa|regulator|admin"),
        (("sign",), "authored|reviewed|approved"),
        (("report",), "pdf|html|parquet|all"),
        (("users", "init"), "failed logins in a row that lock an account"),
        (("users", "list"), "--json"),
        (("evidence", "verify"), "--quiet"),
    ],
)
def test_help_lists_the_choices_and_options(path, shown, capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # one line per option: no wrapped choices
    assert main([*path, "--help"]) == 0
    assert shown in " ".join(capsys.readouterr().out.split())


def test_a_role_outside_the_choices_is_a_usage_error(ledger_run, as_user, capsys) -> None:
    args = ("users", "create", ledger_run, "--user", "ada", "--id", "x1", "--name", "X", "--role", "root")
    assert as_user(*args, password="x", new="y") == 2
    assert "'root' is not one of 'data_scientist', 'qa', 'regulator', 'admin'" in capsys.readouterr().err


def test_the_compliance_commands_import_nothing_heavy_for_help() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from typer.testing import CliRunner; import typer; "
        "from pharmafl.compliance.cli import register; app = typer.Typer(); register(app); "
        "[CliRunner().invoke(app, [*c, '--help']) for c in (['report'], ['sign'], ['users', 'list'], "
        "['evidence', 'verify'])]; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'torch_geometric', 'rdkit', 'opacus', "
        "'nvflare', 'crypten', 'pandas', 'pyarrow', 'matplotlib', 'fpdf', 'sqlalchemy'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_missing_password_without_a_terminal_says_what_to_set(real_run, as_user, capsys) -> None:
    assert as_user("users", "login", real_run, "--user", "ada") == 2  # missing input: a usage error
    assert "PHARMAFL_PASSWORD" in capsys.readouterr().err


def test_sign_finds_the_run_above_the_report_or_asks_for_it(tmp_path, as_user, capsys) -> None:
    stray = tmp_path / "elsewhere" / "r1"
    stray.mkdir(parents=True)
    (stray / "report.json").write_text(json.dumps({"format": "pharmafl-report-v1"}))
    assert as_user("sign", stray, "--user", "quinn", "--meaning", "approved", password="x") == 2
    assert "pass --run RUN" in capsys.readouterr().err


def test_lockout_unlock_and_disable_from_the_command_line(ledger_run, as_user, capsys) -> None:
    ada, quinn = "river-Stone-0001", "qa-Secret-00042"
    assert (
        as_user(
            "users", "init", ledger_run, "--admin", "ada", "--name", "Ada Lovelace", "--max-failed-logins", "2", new=ada
        )
        == 0
    )
    assert (
        as_user(
            "users",
            "create",
            ledger_run,
            "--user",
            "ada",
            "--id",
            "quinn",
            "--name",
            "Quinn Quality",
            "--role",
            "qa",
            password=ada,
            new="Temporary-Pass-1",
        )
        == 0
    )
    assert as_user("users", "passwd", ledger_run, "--user", "quinn", password="Temporary-Pass-1", new=quinn) == 0
    for _ in range(2):
        assert as_user("users", "login", ledger_run, "--user", "quinn", password="wrong-Secret-1") == 1
    assert "account now locked" in capsys.readouterr().err
    assert as_user("users", "login", ledger_run, "--user", "quinn", password=quinn) == 1
    assert "an admin must unlock it" in " ".join(capsys.readouterr().err.split())
    assert as_user("users", "unlock", ledger_run, "--user", "ada", "--id", "quinn", password=ada) == 0
    assert as_user("users", "login", ledger_run, "--user", "quinn", password=quinn) == 0
    assert (
        as_user("users", "role", ledger_run, "--user", "ada", "--id", "quinn", "--role", "data_scientist", password=ada)
        == 0
    )
    assert as_user("users", "disable", ledger_run, "--user", "ada", "--id", "quinn", password=ada) == 0
    capsys.readouterr()
    assert as_user("users", "list", ledger_run) == 0
    assert capsys.readouterr().out.splitlines()[1].split("\t")[:3] == ["quinn", "data_scientist", "disabled"]
    assert as_user("users", "login", ledger_run, "--user", "quinn", password=quinn) == 1
    assert as_user("ledger", "verify", ledger_run) == 0
