"""``pharmafl data``: fetch, validate, import through the Typer sub-app."""

import json
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from pharmafl.errors import EXIT_USAGE
from pharmafl.sites.data_cli import app
from pharmafl.sites.tables import load_dataset

ASSETS = Path(__file__).parent / "assets"
runner = CliRunner()


def _files(measurements="measurements.csv", drugs="drugs.csv"):
    return [
        "--drugs",
        str(ASSETS / drugs),
        "--targets",
        str(ASSETS / "targets.csv"),
        "--measurements",
        str(ASSETS / measurements),
    ]


def test_validate_prints_a_json_summary():
    result = runner.invoke(app, ["validate", *_files()])

    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["drugs"], summary["targets"], summary["measurements"]) == (4, 3, 12)


def test_validate_bad_tables_prints_one_error_and_exits_2():
    result = runner.invoke(app, ["validate", *_files(measurements="measurements_unknown_drug.csv")])

    assert result.exit_code == EXIT_USAGE and result.stdout == "" and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"error: {ASSETS / 'measurements_unknown_drug.csv'}, row 7, column 'drug_id'")
    assert "unknown drug_id '2244'" in result.stderr


def test_validate_with_quarantine_writes_the_report(tmp_path):
    report = tmp_path / "bad.csv"

    result = runner.invoke(app, ["validate", *_files(drugs="drugs_unclosed_ring.csv"), "--quarantine", str(report)])

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["quarantined"] == 4
    assert f"quarantined 4 row(s); report: {report}" in result.stderr
    assert len(pd.read_csv(report)) == 4


def test_import_writes_a_store_that_loads_back(tmp_path):
    result = runner.invoke(app, ["import", "--out", str(tmp_path / "site-03"), "--name", "site-03", *_files()])

    assert result.exit_code == 0, result.output
    ds = load_dataset(tmp_path / "site-03")
    assert ds.name == "site-03" and len(ds.measurements) == 12
    assert runner.invoke(app, ["validate", str(tmp_path / "site-03")]).exit_code == 0


def test_source_and_files_together_are_a_usage_error():
    result = runner.invoke(app, ["validate", "davis", *_files()])

    assert result.exit_code == 2 and "not both" in result.output


def test_fetch_without_network_says_where_to_place_files(tmp_path):
    result = runner.invoke(
        app, ["fetch", "davis", "--data-dir", str(tmp_path), "--mirror", "file:///nonexistent-pharmafl-mirror/"]
    )

    assert result.exit_code == EXIT_USAGE and result.stdout == ""
    assert "could not download 6 davis file(s)" in result.stderr
    source = "file:///nonexistent-pharmafl-mirror/data/davis/proteins.txt"
    placement = f"{tmp_path / 'raw/davis/proteins.txt'}  <-  {source}"
    assert placement in result.stderr
    assert f"re-run `pharmafl data fetch davis --data-dir {tmp_path}`" in result.stderr


def test_validate_davis_by_name(shared_data_dir):
    result = runner.invoke(app, ["validate", "davis", "--data-dir", str(shared_data_dir)])

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["measurements"] == 30056


# --- target sequences longer than the model window --------------------------------------------


def _long_table(tmp_path: Path, residues: dict[str, int]) -> list[str]:
    """The asset tables with the named targets' sequences set to that many residues."""
    targets = pd.read_csv(ASSETS / "targets.csv", dtype=str)
    for target, n in residues.items():
        targets.loc[targets["target_id"] == target, "sequence"] = ("ACDEFGHIKLMNPQRSTVWY" * (n // 20 + 1))[:n]
    targets.to_csv(tmp_path / "targets.csv", index=False)
    return [
        "--drugs",
        str(ASSETS / "drugs.csv"),
        "--targets",
        str(tmp_path / "targets.csv"),
        "--measurements",
        str(ASSETS / "measurements.csv"),
    ]


def test_validate_reports_sequences_longer_than_the_window(tmp_path):
    files = _long_table(tmp_path, {"CDK2": 1500, "EGFR": 1001, "TESK1": 1000})  # 1000 fits the window exactly

    result = runner.invoke(app, ["validate", *files])

    assert result.exit_code == 0, result.output
    truncated = json.loads(result.stdout)["targets_truncated"]
    assert truncated == {"max_len": 1000, "count": 2, "longest": 1500, "ids": ["CDK2", "EGFR"]}
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warning) == 1
    assert "2 of 3 target sequence(s) are longer than the model window of 1000 residues (longest 1500)" in warning[0]
    assert "CDK2, EGFR" in warning[0] and "TESK1" not in warning[0]


def test_validate_max_len_checks_another_window():
    result = runner.invoke(app, ["validate", *_files(), "--max-len", "250"])

    assert result.exit_code == 0, result.output
    truncated = json.loads(result.stdout)["targets_truncated"]
    assert (truncated["max_len"], truncated["count"], truncated["ids"]) == (250, 2, ["EGFR", "CDK2"])
    assert "window of 250 residues (longest 1210)" in result.stderr


def test_validate_is_silent_when_every_sequence_fits():
    result = runner.invoke(app, ["validate", *_files(), "--max-len", "1210"])  # EGFR, the longest, has 1210

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["targets_truncated"]["count"] == 0
    assert "warning" not in result.stderr


def test_a_bad_window_is_a_usage_error():
    result = runner.invoke(app, ["validate", *_files(), "--max-len", "0"])

    assert result.exit_code == EXIT_USAGE and result.stdout == ""


def test_import_reports_long_sequences_too(tmp_path):
    result = runner.invoke(app, ["import", "--out", str(tmp_path / "store"), *_files()])

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["targets_truncated"]["ids"] == ["EGFR"]
    assert "1 of 3 target sequence(s) are longer than the model window of 1000" in result.stderr


def test_validate_davis_reports_its_long_kinases(shared_data_dir):
    result = runner.invoke(app, ["validate", "davis", "--data-dir", str(shared_data_dir)])

    truncated = json.loads(result.stdout)["targets_truncated"]
    targets = pd.read_csv(shared_data_dir / "davis_deepdta_targets.csv.gz")
    lengths = targets["sequence"].str.len()
    assert truncated["count"] == int((lengths > 1000).sum()) > 0 and truncated["longest"] == int(lengths.max())
    assert f"davis: {truncated['count']} of {len(targets)} target sequence(s)" in result.stderr


# --- data fetch: --data-dir, progress, --quiet ---------------------------------------------------


def test_fetch_data_dir_finds_the_tidy_tables(shared_data_dir):
    result = runner.invoke(app, ["fetch", "davis", "--data-dir", str(shared_data_dir), "--quiet"])

    assert result.exit_code == 0, result.output
    assert result.stdout == f"{shared_data_dir}\n" and "nothing to fetch" in result.stderr


def test_fetch_data_dir_defaults_to_pharmafl_data(tmp_path):
    result = runner.invoke(
        app, ["fetch", "kiba", "--mirror", "file:///nonexistent-pharmafl-mirror/"], env={"PHARMAFL_DATA": str(tmp_path)}
    )

    assert result.exit_code == EXIT_USAGE
    assert f"{tmp_path / 'raw/kiba/proteins.txt'}  <-  " in result.stderr


def test_cache_dir_is_gone_and_the_refusal_names_data_dir(tmp_path):
    result = runner.invoke(app, ["fetch", "davis", "--cache-dir", str(tmp_path)])

    assert result.exit_code == EXIT_USAGE
    assert "No such option: --cache-dir" in result.output and "--data-dir" in result.output
    assert not any(tmp_path.iterdir())


def _patched_fetch(monkeypatch, tmp_path):
    """``data fetch davis`` against a file:// mirror of the asset excerpt, pinned to it."""
    from functools import partial

    import pharmafl.sites.fetch as fetch_module
    from tests.sites.test_fetch import _mirror, pins_for, write_raw

    raw = tmp_path / "source"
    write_raw(
        raw, "davis", *[pd.read_csv(ASSETS / f"{t}.csv", dtype=str) for t in ("drugs", "targets", "measurements")]
    )
    mirror = _mirror(tmp_path, raw)
    monkeypatch.setattr(fetch_module, "fetch", partial(fetch_module.fetch, pins=pins_for(raw, "davis")))
    return ["fetch", "davis", "--data-dir", str(tmp_path / "data"), "--mirror", mirror.as_uri() + "/"]


def _terminal_stderr(monkeypatch):
    """pharmafl.console.stderr as a terminal writing into a buffer (CliRunner's streams are no terminal)."""
    import io

    from rich.console import Console

    import pharmafl.console

    buffer = io.StringIO()
    monkeypatch.setattr(pharmafl.console, "stderr", Console(file=buffer, force_terminal=True, width=120))
    return buffer


def test_fetch_draws_progress_on_stderr_and_prints_only_the_store_on_stdout(monkeypatch, tmp_path):
    args, bar = _patched_fetch(monkeypatch, tmp_path), _terminal_stderr(monkeypatch)

    result = runner.invoke(app, args)

    assert result.exit_code == 0, result.output
    assert result.stdout == f"{tmp_path / 'data' / 'davis'}\n"
    drawn = bar.getvalue()
    assert "davis proteins.txt" in drawn and "davis: converting to a store" in drawn
    assert "proteins.txt" not in result.stdout


def test_fetch_quiet_draws_nothing(monkeypatch, tmp_path):
    args, bar = _patched_fetch(monkeypatch, tmp_path), _terminal_stderr(monkeypatch)

    result = runner.invoke(app, [*args, "--quiet"])

    assert result.exit_code == 0, result.output
    assert bar.getvalue() == "" and result.stderr == ""
    assert len(load_dataset(tmp_path / "data" / "davis").measurements) == 12
