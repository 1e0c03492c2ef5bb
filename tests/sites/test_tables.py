"""Tables: reading, validation (one error per bad input), quarantine, the Parquet store."""

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st
from pandas.testing import assert_frame_equal

from pharmafl.errors import DataError, FetchError
from pharmafl.sites.tables import (
    DTIDataset,
    affinity_to_label,
    find_tables,
    from_frames,
    label_outliers,
    load_dataset,
    read_store,
    read_tables,
    save_dataset,
    sequence_error,
    smiles_error,
)

ASSETS = Path(__file__).parent / "assets"


def _assets(drugs="drugs.csv", targets="targets.csv", measurements="measurements.csv"):
    return ASSETS / drugs, ASSETS / targets, ASSETS / measurements


def _frames():
    return [pd.read_csv(p, dtype=str, keep_default_na=False) for p in _assets()]


def _tables_equal(a: DTIDataset, b: DTIDataset) -> None:
    for table in ("drugs", "targets", "measurements"):
        assert_frame_equal(getattr(a, table), getattr(b, table))


# --- a valid site -----------------------------------------------------------------------------


def test_valid_tables_are_read_with_kd_labels_and_folds():
    ds = read_tables(*_assets(), name="excerpt")

    m = ds.measurements.set_index(["drug_id", "target_id"])
    assert (len(ds.drugs), len(ds.targets), len(ds.measurements), ds.quarantined) == (4, 3, 12, 0)
    assert list(ds.measurements.columns) == ["drug_id", "target_id", "affinity", "unit", "label", "fold"]
    assert m.loc[("176870", "EGFR"), "affinity"] == 0.67
    assert m.loc[("176870", "EGFR"), "label"] == pytest.approx(9 - np.log10(0.67), abs=1e-12)
    assert m.loc[("176870", "EGFR"), "fold"] == "train3"
    assert set(ds.measurements["unit"]) == {"nM_Kd"}  # inferred from the pKd column beside 'affinity'
    assert "X" in ds.targets.set_index("target_id").at["TESK1", "sequence"]
    assert "/C=C\\2/" in ds.drugs.set_index("drug_id").at["5329102", "smiles_iso"]


def test_summary_counts_units_folds_and_labels():
    summary = read_tables(*_assets(), name="excerpt").summary()

    assert summary["measurements"] == 12 and summary["quarantined"] == 0
    assert summary["units"] == {"nM_Kd": 12}
    assert summary["folds"] == {"test": 2, "train0": 1, "train2": 2, "train3": 5, "train4": 2}
    assert summary["label"]["min"] == 5.0 and summary["label"]["max"] == pytest.approx(9.173925197)
    assert summary["label_outliers"]["count"] == 0
    json.dumps(summary)  # JSON-serializable


# --- one clear error per attack ---------------------------------------------------------------

ATTACKS = [
    # files, row, column, id, words in the message
    (_assets(drugs="drugs_unclosed_ring.csv"), 3, "smiles", "5291", ["unclosed ring", "RDKit"]),
    (_assets(drugs="drugs_duplicate_id.csv"), 2, None, "123631", ["appears 2 times", "rows 2, 4"]),
    (_assets(targets="targets_stop_codon.csv"), 2, "sequence", "EGFR", ["'*' at position 1211", "stop codons"]),
    (_assets(measurements="measurements_zero_kd.csv"), 5, "affinity", "123631 / EGFR", ["0.0 nM_Kd is not positive"]),
    (
        _assets(measurements="measurements_unknown_drug.csv"),
        7,
        "drug_id",
        "2244 / CDK2",
        ["unknown drug_id '2244'", "drugs.csv"],
    ),
    (
        _assets(measurements="measurements_duplicate_pair.csv"),
        2,
        None,
        "176870 / EGFR",
        ["appears 2 times", "rows 2, 13"],
    ),
    (_assets(measurements="measurements_pkd_disagrees.csv"), 2, "pKd", "176870 / EGFR", ["8.173925197 differs"]),
]


ATTACK_IDS = [next(f.stem for f in a[0] if "_" in f.stem) for a in ATTACKS]


@pytest.mark.parametrize("files,row,column,ident,words", ATTACKS, ids=ATTACK_IDS)
def test_attack_raises_one_error_naming_file_row_id_and_fix(files, row, column, ident, words):
    with pytest.raises(DataError) as caught:
        read_tables(*files, name="attacked")

    err = caught.value
    bad_file = next(f for f in files if f.name not in ("drugs.csv", "targets.csv", "measurements.csv"))
    assert err.location.file == str(bad_file) and err.location.row == row
    assert err.location.column == column and err.location.ident == ident
    assert err.fix
    for word in words:
        assert word in str(err)


@pytest.mark.parametrize("files,row,column,ident,words", ATTACKS, ids=ATTACK_IDS)
def test_quarantine_reports_every_bad_row_and_drops_it(tmp_path, files, row, column, ident, words):
    report = tmp_path / "report.csv"

    ds = read_tables(*files, name="attacked", quarantine=report)

    rows = pd.read_csv(report, dtype=str, keep_default_na=False)
    assert list(rows.columns) == ["table", "file", "row", "id", "column", "reason", "fix"]
    assert (rows["row"] == str(row)).any() and (rows["id"] == ident).any()
    dropped = rows[["table", "row"]].drop_duplicates()
    assert ds.quarantined == len(dropped) and ds.summary()["quarantined"] == len(dropped)
    clean = read_tables(*_assets(), name="clean")
    kept = sum(len(getattr(ds, t)) for t in ("drugs", "targets", "measurements"))
    assert kept + ds.quarantined == 4 + 3 + 12 + (1 if "duplicate_pair" in files[2].name else 0)
    assert kept < sum(len(getattr(clean, t)) for t in ("drugs", "targets", "measurements"))


def test_quarantined_drug_takes_its_measurements_along(tmp_path):
    ds = read_tables(*_assets(drugs="drugs_unclosed_ring.csv"), name="x", quarantine=tmp_path / "r.csv")

    rows = pd.read_csv(tmp_path / "r.csv", dtype=str)
    assert "5291" not in set(ds.drugs["drug_id"]) and "5291" not in set(ds.measurements["drug_id"])
    assert ds.quarantined == 1 + 3
    assert rows["reason"].str.contains("'5291' was rejected").sum() == 3


def test_first_error_says_how_many_more_problems_follow(tmp_path):
    drugs, targets, m = _frames()
    m.loc[[0, 3, 5], "affinity"] = ["-1", "abc", ""]

    with pytest.raises(DataError, match=r"2 more problem\(s\) follow: pass quarantine=PATH") as caught:
        from_frames(drugs, targets, m, name="x", files=["d.csv", "t.csv", "m.csv"])
    assert caught.value.location.row == 1 and "-1.0 nM_Kd is not positive" in caught.value.problem


@pytest.mark.parametrize(
    "value,words",
    [
        ("abc", "'abc' is not a finite number"),
        ("", "'' is not a finite number"),
        ("nan", "'nan' is not a finite number"),
        ("inf", "'inf' is not a finite"),
    ],
)
def test_non_numeric_affinity_is_rejected(value, words):
    drugs, targets, m = _frames()
    m.loc[4, ["affinity", "pKd"]] = [value, ""]

    with pytest.raises(DataError, match=words) as caught:
        from_frames(drugs, targets, m, name="x")
    assert caught.value.location.row == 5


def test_missing_column_lists_expected_and_found():
    drugs, targets, m = _frames()

    with pytest.raises(DataError) as caught:
        from_frames(drugs.drop(columns=["smiles"]), targets, m, name="x", files=["d.csv", "t.csv", "m.csv"])
    assert "lacks column(s) ['smiles']" in str(caught.value)
    assert "expected ['drug_id', 'smiles'], found ['drug_id', 'smiles_iso']" in str(caught.value)
    assert caught.value.location.file == "d.csv"


def test_empty_table_is_rejected_even_with_quarantine(tmp_path):
    drugs, targets, m = _frames()

    with pytest.raises(DataError, match="targets table has no rows"):
        from_frames(drugs, targets.iloc[:0], m, name="x", quarantine=tmp_path / "r.csv")


def test_quarantining_every_measurement_is_an_error(tmp_path):
    drugs, targets, m = _frames()
    m["affinity"] = "-5"

    with pytest.raises(DataError, match="every measurements row was quarantined"):
        from_frames(drugs, targets, m.drop(columns=["pKd"]), name="x", unit="nM_Kd", quarantine=tmp_path / "r.csv")
    assert len(pd.read_csv(tmp_path / "r.csv")) == 12


def test_clean_quarantine_report_has_the_header_only(tmp_path):
    ds = read_tables(*_assets(), name="x", quarantine=tmp_path / "r.csv")

    assert ds.quarantined == 0
    assert (tmp_path / "r.csv").read_text().strip() == "table,file,row,id,column,reason,fix"


# --- units ------------------------------------------------------------------------------------


def test_affinity_without_a_unit_is_refused():
    drugs, targets, m = _frames()

    with pytest.raises(DataError, match="cannot tell the unit of column 'affinity'") as caught:
        from_frames(drugs, targets, m.drop(columns=["pKd"]), name="x")
    assert "nM_Kd, nM_Ki, nM_IC50, pKd, pKi, pIC50, kiba" in caught.value.fix


def test_unit_argument_and_unit_column_give_labels():
    drugs, targets, m = _frames()
    m = m.drop(columns=["pKd"])
    m["unit"] = ["nM_Ki"] * 6 + ["pKi"] * 6
    m.loc[6:, "affinity"] = "6.5"

    ds = from_frames(drugs, targets, m, name="x")
    by_ic50 = from_frames(drugs, targets, m.drop(columns=["unit"]), name="x", unit="nM_IC50")

    assert ds.measurements["label"].iloc[6:].eq(6.5).all()
    assert ds.measurements["label"].iloc[0] == pytest.approx(5.0)
    assert ds.summary()["units"] == {"nM_Ki": 6, "pKi": 6}
    assert set(by_ic50.measurements["unit"]) == {"nM_IC50"}


def test_unknown_unit_in_a_row_is_rejected():
    drugs, targets, m = _frames()
    m["unit"] = "nM_Kd"
    m.loc[2, "unit"] = "uM_Kd"

    with pytest.raises(DataError, match="unknown unit 'uM_Kd'") as caught:
        from_frames(drugs, targets, m, name="x")
    assert caught.value.location.row == 3 and caught.value.location.column == "unit"


def test_unit_named_value_column_and_aliases():
    drugs, targets, m = _frames()
    drugs = drugs.rename(columns={"drug_id": "compound_id"})
    targets = targets.rename(columns={"target_id": "protein_id", "sequence": "protein_sequence"})
    m = m.rename(columns={"drug_id": "compound_id", "deepdta_fold": "split"}).drop(columns=["affinity"])

    ds = from_frames(drugs, targets, m, name="x")

    assert set(ds.measurements["unit"]) == {"pKd"}
    assert ds.measurements["label"].tolist() == pytest.approx(pd.to_numeric(m["pKd"]).tolist())
    assert ds.measurements["fold"].iloc[0] == "train3"


def test_kiba_scores_are_labels_as_given_and_nan_is_rejected():
    drugs, targets, m = _frames()
    m = m.drop(columns=["pKd"]).assign(affinity=["11.1"] * 11 + ["0.0"])

    ds = from_frames(drugs, targets, m, name="x", unit="kiba")
    assert ds.measurements["label"].tolist() == [11.1] * 11 + [0.0]

    with pytest.raises(DataError, match="'nan' is not a finite number"):
        from_frames(drugs, targets, m.assign(affinity=["nan"] + ["11.1"] * 11), name="x", unit="kiba")


def test_unit_argument_contradicting_the_unit_column_is_rejected():
    drugs, targets, m = _frames()
    m["unit"] = ["nM_Kd"] * 11 + [""]

    ds = from_frames(drugs, targets, m, name="x", unit="nM_Kd")  # the empty cell takes the argument
    with pytest.raises(DataError, match="unit 'nM_Kd' in the file, but unit='nM_Ki' was given") as caught:
        from_frames(drugs, targets, m, name="x", unit="nM_Ki")
    assert set(ds.measurements["unit"]) == {"nM_Kd"} and caught.value.location.row == 1


def test_unknown_unit_argument_lists_choices():
    with pytest.raises(DataError, match="use one of nM_Kd"):
        read_tables(*_assets(), name="x", unit="molar")


# --- molecules and sequences ------------------------------------------------------------------


@pytest.mark.parametrize(
    "smiles,words",
    [
        ("C1CC", "unclosed ring"),
        ("N(C)(C)(C)(C)C", "Explicit valence for atom # 0 N"),
        ("CC(", "syntax error"),
        ("CCO foo", "whitespace"),
        ("", "empty SMILES"),
    ],
)
def test_smiles_error_gives_rdkits_message(smiles, words):
    assert words in smiles_error(smiles)


def test_valid_smiles_has_no_error():
    assert smiles_error("CC1=C(C=C(C=C1)NC(=O)C2=CC=C(C=C2)CN3CCN(CC3)C)NC4=NC=CC(=N4)C5=CN=CC=C5") is None


@given(st.text(alphabet="ACDEFGHIKLMNPQRSTVWYXBZUOacdefg", min_size=1, max_size=50))
def test_any_letters_are_a_sequence(sequence):
    assert sequence_error(sequence) is None


@given(
    st.text(alphabet="ACDEFGHIKLMNPQRSTVWY", max_size=20),
    st.sampled_from(list("0123456789 *-.\t_")),
    st.text(alphabet="ACDEFGHIKLMNPQRSTVWY", max_size=20),
)
def test_a_non_letter_anywhere_is_rejected_with_its_position(before, bad, after):
    error = sequence_error(before + bad + after)

    assert error is not None and f"{bad!r} at position {len(before) + 1}" in error


def test_lowercase_sequences_are_uppercased():
    drugs, targets, m = _frames()
    targets["sequence"] = targets["sequence"].str.lower()

    ds = from_frames(drugs, targets, m, name="x")

    assert ds.targets["sequence"].str.fullmatch("[A-Z]+").all()


# --- label math -------------------------------------------------------------------------------


@given(st.floats(min_value=-3, max_value=15))
def test_concentration_label_inverts_pX(p):
    assert affinity_to_label(np.array([10 ** (9 - p)]), "nM_Kd")[0] == pytest.approx(p, abs=1e-9)


@given(st.lists(st.floats(min_value=1e-3, max_value=1e7), min_size=2, max_size=20, unique=True))
def test_concentration_label_decreases_as_affinity_rises(values):
    x = np.sort(np.array(values))

    assert np.all(np.diff(affinity_to_label(x, "nM_Ki")) <= 0)
    assert np.array_equal(affinity_to_label(x, "pKi"), x) and np.array_equal(affinity_to_label(x, "kiba"), x)


@given(
    st.lists(st.floats(min_value=-100, max_value=100), min_size=2, max_size=200),
    st.floats(min_value=-50, max_value=50),
    st.floats(min_value=0.1, max_value=10),
)
def test_outlier_flags_do_not_change_under_shift_and_scale(values, shift, scale):
    x = np.array(values)
    assume(x.std() > 1e-6 and not np.isclose(np.abs(x - x.mean()) / x.std(), 2.0, atol=1e-6).any())

    assert np.array_equal(label_outliers(x, k=2.0), label_outliers(x * scale + shift, k=2.0))


def test_one_far_value_among_many_is_flagged():
    x = np.r_[np.full(199, 11.5), [11.4, 11.6], 0.0]

    assert np.flatnonzero(label_outliers(x)).tolist() == [201]
    assert not label_outliers(np.full(5, 3.0)).any()


# --- the Parquet store ------------------------------------------------------------------------

PAIRS = [(d, t) for d in ("176870", "123631", "5291", "5329102") for t in ("CDK2", "EGFR", "TESK1")]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.sampled_from(PAIRS), min_size=1, unique=True),
    st.lists(st.floats(min_value=1e-3, max_value=1e5), min_size=12, max_size=12),
    st.lists(st.sampled_from(["train0", "train1", "test", ""]), min_size=12, max_size=12),
)
def test_store_round_trip_is_exact(tmp_path, pairs, kd, folds):
    drugs, targets, _ = _frames()
    m = pd.DataFrame(
        {
            "drug_id": [p[0] for p in pairs],
            "target_id": [p[1] for p in pairs],
            "affinity": [repr(v) for v in kd[: len(pairs)]],
            "fold": folds[: len(pairs)],
        }
    )
    ds = from_frames(drugs, targets, m, name="site-07", unit="nM_Kd")
    out = tmp_path / f"store-{len(pairs)}-{abs(hash(tuple(kd)))}"

    loaded = load_dataset(save_dataset(ds, out))

    _tables_equal(ds, loaded)
    assert loaded.name == "site-07"
    assert loaded.measurements["fold"].isna().sum() == sum(f == "" for f in folds[: len(pairs)])


def test_manifest_pins_rows_and_hashes_and_is_deterministic(tmp_path):
    ds = read_tables(*_assets(), name="excerpt")

    save_dataset(ds, tmp_path / "a")
    save_dataset(ds, tmp_path / "b")

    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["files"]["measurements.parquet"]["rows"] == 12
    assert manifest["name"] == "excerpt" and manifest["quarantined"] == 0
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()


def test_tampered_store_is_refused(tmp_path):
    store = save_dataset(read_tables(*_assets(), name="excerpt"), tmp_path / "store")
    m = pd.read_parquet(store / "measurements.parquet")
    m.loc[0, "label"] = 9.9
    m.to_parquet(store / "measurements.parquet", index=False)

    with pytest.raises(DataError, match="does not match the manifest's") as caught:
        load_dataset(store)
    assert caught.value.location.file == store / "measurements.parquet"


def test_failed_save_leaves_the_old_store_and_no_debris(tmp_path):
    good = read_tables(*_assets(), name="excerpt")
    store = save_dataset(good, tmp_path / "store")
    before = {p.name: p.read_bytes() for p in store.iterdir()}
    broken = DTIDataset("broken", good.drugs, good.targets.assign(sequence=[b"\xff", 1, None]), good.measurements)

    with pytest.raises(TypeError):  # pyarrow cannot write a column of mixed bytes and ints
        save_dataset(broken, store)
    with pytest.raises(TypeError):
        save_dataset(broken, tmp_path / "new")

    assert {p.name: p.read_bytes() for p in store.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_save_refuses_a_directory_that_is_not_a_store(tmp_path):
    (tmp_path / "notes.txt").write_text("lab notebook")

    with pytest.raises(DataError, match="not an empty directory nor a pharmafl dataset store"):
        save_dataset(read_tables(*_assets(), name="x"), tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_store_keeps_the_quarantine_count(tmp_path):
    ds = read_tables(*_assets(drugs="drugs_unclosed_ring.csv"), name="x", quarantine=tmp_path / "r.csv")

    assert read_store(save_dataset(ds, tmp_path / "store")).quarantined == 4


# --- directories and names --------------------------------------------------------------------


def test_directory_of_mixed_formats_with_prefixes(tmp_path):
    drugs, targets, m = _frames()
    drugs.to_csv(tmp_path / "acme_drugs.csv.xz", index=False)
    targets.to_parquet(tmp_path / "acme_targets.parquet", index=False)
    m.to_csv(tmp_path / "acme_pairs.csv.gz", index=False)

    ds = load_dataset(tmp_path / ".")

    _tables_equal(ds, read_tables(*_assets(), name="x"))


def test_ambiguous_directory_names_the_candidates(tmp_path):
    for name in ("drugs.csv", "targets.csv", "measurements.csv"):
        shutil.copy(ASSETS / name, tmp_path / name)
    shutil.copy(ASSETS / "drugs.csv", tmp_path / "old_drugs.csv")

    with pytest.raises(DataError, match=r"need exactly one drugs file, found \['drugs.csv', 'old_drugs.csv'\]"):
        find_tables(tmp_path)


def test_unknown_source_says_what_is_accepted(tmp_path):
    with pytest.raises(DataError, match="not a public dataset name"):
        load_dataset(tmp_path / "nowhere")


def test_missing_public_dataset_says_how_to_fetch(tmp_path):
    with pytest.raises(FetchError) as caught:
        load_dataset("davis", data_dir=tmp_path)

    assert "pharmafl data fetch davis" in str(caught.value)
    assert str(tmp_path / "davis_deepdta_pairs.csv.gz") in str(caught.value)
    assert str(tmp_path / "davis" / "manifest.json") in str(caught.value)


def test_public_name_finds_a_fetched_store(tmp_path):
    save_dataset(read_tables(*_assets(), name="davis"), tmp_path / "davis")

    assert len(load_dataset("davis", data_dir=tmp_path).measurements) == 12


# --- the real DAVIS and KIBA ------------------------------------------------------------------


def test_davis_matches_its_tidy_table(shared_data_dir):
    ds = load_dataset("davis", data_dir=shared_data_dir)

    pairs = pd.read_csv(shared_data_dir / "davis_deepdta_pairs.csv.gz", dtype={"drug_id": str})
    assert (len(ds.drugs), len(ds.targets), len(ds.measurements)) == (68, 442, 30056)
    assert np.abs(ds.measurements["label"].to_numpy() - pairs["pKd"].to_numpy()).max() < 1e-6
    assert ds.measurements["fold"].tolist() == pairs["deepdta_fold"].tolist()
    assert ds.measurements["drug_id"].tolist() == pairs["drug_id"].tolist()
    assert ds.summary()["targets_sharing_a_sequence"] == 81


def test_kiba_keeps_and_flags_its_seven_low_scores(shared_data_dir):
    summary = load_dataset("kiba", data_dir=shared_data_dir).summary()

    assert (summary["drugs"], summary["targets"], summary["measurements"]) == (2111, 229, 118254)
    assert summary["folds"]["test"] == 19709 and summary["label"]["min"] == 0.0
    assert summary["label_outliers"]["count"] == 7
    assert {e["drug_id"] for e in summary["label_outliers"]["examples"]} == {"CHEMBL373751"}
    assert summary["drugs_sharing_a_smiles"] == 75


def test_modified_tidy_table_fails_its_pin(shared_data_dir, tmp_path):
    for table in ("drugs", "targets", "pairs"):
        shutil.copy(shared_data_dir / f"davis_deepdta_{table}.csv.gz", tmp_path)
    pairs = tmp_path / "davis_deepdta_pairs.csv.gz"
    text = gzip.decompress(pairs.read_bytes()).replace(b"11314340,AAK1,43,", b"11314340,AAK1,42,", 1)
    pairs.write_bytes(gzip.compress(text))

    with pytest.raises(FetchError, match="does not match the pinned 41e21f65.*the file was not used"):
        load_dataset("davis", data_dir=tmp_path)
