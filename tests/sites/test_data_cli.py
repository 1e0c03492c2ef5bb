"""``pharmafl data``: fetch, validate, import through the Typer sub-app."""

import json
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

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


def test_validate_bad_tables_prints_one_error_and_exits_1():
    result = runner.invoke(app, ["validate", *_files(measurements="measurements_unknown_drug.csv")])

    assert result.exit_code == 1 and result.stdout == ""
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
        app, ["fetch", "davis", "--cache-dir", str(tmp_path), "--mirror", "file:///nonexistent-pharmafl-mirror/"]
    )

    assert result.exit_code == 1
    assert "could not download 6 davis file(s)" in result.stderr
    source = "file:///nonexistent-pharmafl-mirror/data/davis/proteins.txt"
    placement = f"{tmp_path / 'raw/davis/proteins.txt'}  <-  {source}"
    assert placement in result.stderr


def test_validate_davis_by_name(shared_data_dir):
    result = runner.invoke(app, ["validate", "davis", "--data-dir", str(shared_data_dir)])

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["measurements"] == 30056
