"""Fetch: pinned checksums, download/placement, DeepDTA raw -> tables, all without the network.

Raw DeepDTA files are rebuilt from tidy tables (the 12-pair asset excerpt, or DAVIS/KIBA from
``$PHARMAFL_DATA``); mirrors are ``file://`` folders, an unreachable source a missing one, or a
local HTTP server (:func:`http_mirror`) that can be told to fail requests, for pooch's HTTP path.
"""

import json
import re
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, strategies as st

from pharmafl.errors import DataError, FetchError
from pharmafl.sites.fetch import BASE_URL, COMMIT, LAYOUTS, PINS, Pin, download, fetch, fold_labels, verify
from pharmafl.sites.tables import file_sha256, load_dataset, read_store

ASSETS = Path(__file__).parent / "assets"
NOWHERE = "file:///nonexistent-pharmafl-mirror/"


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _tidy(data_dir: Path, name: str) -> list[pd.DataFrame]:
    return [_read(data_dir / f"{name}_deepdta_{t}.csv.gz") for t in ("drugs", "targets", "pairs")]


def write_raw(folder: Path, name: str, drugs: pd.DataFrame, targets: pd.DataFrame, pairs: pd.DataFrame) -> None:
    """DeepDTA's raw files for tidy tables: JSON id maps, the affinity matrix, fold index lists."""
    (folder / "folds").mkdir(parents=True, exist_ok=True)
    newline = "\n" if name == "davis" else ""  # upstream davis/ligands_can.txt ends with a newline
    (folder / "ligands_can.txt").write_text(json.dumps(dict(zip(drugs["drug_id"], drugs["smiles"]))) + newline)
    (folder / "ligands_iso.txt").write_text(json.dumps(dict(zip(drugs["drug_id"], drugs["smiles_iso"]))))
    (folder / "proteins.txt").write_text(json.dumps(dict(zip(targets["target_id"], targets["sequence"]))))
    r = pairs["drug_id"].map({d: i for i, d in enumerate(drugs["drug_id"])}).to_numpy()
    c = pairs["target_id"].map({t: j for j, t in enumerate(targets["target_id"])}).to_numpy()
    cells = np.full((len(drugs), len(targets)), "nan", dtype=object)
    cells[r, c] = pairs["affinity"].to_numpy()
    (folder / LAYOUTS[name].affinity).write_text("\n".join(" ".join(row) for row in cells) + "\n")
    index = np.empty(len(pairs), dtype=int)
    index[np.lexsort((c, r))] = np.arange(len(pairs))
    fold = pairs["deepdta_fold"].to_numpy()
    train = [sorted(index[fold == f"train{k}"].tolist()) for k in range(5)]
    (folder / "folds/train_fold_setting1.txt").write_text(json.dumps(train))
    (folder / "folds/test_fold_setting1.txt").write_text(json.dumps(sorted(index[fold == "test"].tolist())))


def pins_for(folder: Path, name: str) -> dict[str, tuple[Pin, ...]]:
    layout = LAYOUTS[name]
    return {
        name: tuple(
            Pin(f"{layout.folder}/{f}", (folder / f).stat().st_size, file_sha256(folder / f)) for f in layout.files
        )
    }


@pytest.fixture
def excerpt_raw(tmp_path) -> Path:
    """The 12-pair DAVIS excerpt as raw DeepDTA files under a fresh cache's raw/davis."""
    raw = tmp_path / "cache" / "raw" / "davis"
    write_raw(raw, "davis", *[_read(ASSETS / f"{t}.csv") for t in ("drugs", "targets", "measurements")])
    return raw


def _mirror(tmp_path: Path, raw: Path) -> Path:
    mirror = tmp_path / "mirror"
    for f in LAYOUTS["davis"].files:
        (mirror / "data/davis" / f).parent.mkdir(parents=True, exist_ok=True)
        (mirror / "data/davis" / f).write_bytes((raw / f).read_bytes())
    return mirror


def _debris(folder: Path) -> list[str]:
    """Temporary files left behind: ours start with '.', pooch's with 'tmp'."""
    return [p.name for p in folder.rglob("*") if p.name.startswith((".", "tmp"))] if folder.exists() else []


# --- conversion -------------------------------------------------------------------------------


def test_placed_raw_files_convert_to_the_excerpt(excerpt_raw):
    cache = excerpt_raw.parents[1]

    store = fetch("davis", data_dir=cache, pins=pins_for(excerpt_raw, "davis"), base_url=NOWHERE)

    ds, ref = read_store(store), load_dataset(ASSETS / ".")
    key = ["drug_id", "target_id"]
    got = ds.measurements.sort_values(key).reset_index(drop=True)
    want = ref.measurements.sort_values(key).reset_index(drop=True)
    assert store == cache / "davis" and ds.name == "davis"
    assert got[key + ["affinity", "unit", "fold"]].equals(want[key + ["affinity", "unit", "fold"]])
    assert np.abs(got["label"] - want["label"]).max() < 1e-6
    assert (
        ds.targets.sort_values("target_id")
        .reset_index(drop=True)
        .equals(ref.targets.sort_values("target_id").reset_index(drop=True))
    )


@pytest.mark.parametrize("name", ["davis", "kiba"])
def test_raw_conversion_reproduces_the_tidy_tables(shared_data_dir, tmp_path, name):
    tidy = _tidy(shared_data_dir, name)
    write_raw(tmp_path / "raw" / name, name, *tidy)

    store = fetch(name, data_dir=tmp_path, pins=pins_for(tmp_path / "raw" / name, name), base_url=NOWHERE)

    got, want = read_store(store), load_dataset(name, data_dir=shared_data_dir)
    assert got.drugs.equals(want.drugs) and got.targets.equals(want.targets)
    for column in ("drug_id", "target_id", "affinity", "unit", "fold"):
        assert got.measurements[column].tolist() == want.measurements[column].tolist()
    reference = pd.to_numeric(tidy[2]["pKd" if name == "davis" else "affinity"]).to_numpy()
    assert np.abs(got.measurements["label"].to_numpy() - reference).max() < 1e-6


@given(st.lists(st.sampled_from(["train0", "train1", "train2", "train3", "train4", "test", None]), max_size=60))
def test_fold_labels_invert_the_fold_lists(assignment):
    train = [[i for i, f in enumerate(assignment) if f == f"train{k}"] for k in range(5)]
    test = [i for i, f in enumerate(assignment) if f == "test"]

    assert fold_labels(train, test, len(assignment), Path("folds.txt")).tolist() == assignment


@pytest.mark.parametrize(
    "train,test,words",
    [
        ([[0, 1], [1]], [2], "cell 1 is in both train0 and train1"),
        ([[0, 1]], [3], "fold index 3 is not a measured cell (0..2)"),
        ([[0, "1"]], [2], "fold index '1' is not a measured cell"),
    ],
)
def test_bad_fold_lists_are_rejected(train, test, words):
    with pytest.raises(DataError, match=re.escape(words)):
        fold_labels(train, test, 3, Path("folds.txt"))


def test_matrix_of_the_wrong_shape_is_rejected(excerpt_raw):
    matrix = excerpt_raw / LAYOUTS["davis"].affinity
    matrix.write_text("\n".join(" ".join(line.split()[:2]) for line in matrix.read_text().splitlines()) + "\n")

    with pytest.raises(DataError, match="matrix is 4 x 2, expected 4 drugs x 3 targets"):
        fetch("davis", data_dir=excerpt_raw.parents[1], pins=pins_for(excerpt_raw, "davis"), base_url=NOWHERE)


# --- pins -------------------------------------------------------------------------------------


def test_every_file_read_is_pinned():
    for name, layout in LAYOUTS.items():
        pinned = {p.path: p for p in PINS[name]}
        assert sorted(pinned) == sorted(f"{layout.folder}/{f}" for f in layout.files)
        assert all(re.fullmatch("[0-9a-f]{64}", p.sha256) and p.size > 0 for p in pinned.values())
    assert COMMIT in BASE_URL


# Rebuilt from the tidy tables, these upstream files come out byte for byte (fold lists do not:
# upstream lists are shuffled; the KIBA matrix prints floats differently).
GENUINE = {
    "davis": ("ligands_can.txt", "ligands_iso.txt", "proteins.txt", LAYOUTS["davis"].affinity),
    "kiba": ("ligands_can.txt", "ligands_iso.txt", "proteins.txt"),
}


@pytest.mark.parametrize("name", ["davis", "kiba"])
def test_real_pins_accept_genuine_files_and_reject_the_first_other(shared_data_dir, tmp_path, name):
    raw = tmp_path / "raw" / name
    write_raw(raw, name, *_tidy(shared_data_dir, name))
    pins = {p.path.split("/", 2)[-1]: p for p in PINS[name]}
    for f in GENUINE[name]:
        verify(raw / f, pins[f], name=name, url="")

    with pytest.raises(FetchError) as caught:
        fetch(name, data_dir=tmp_path, base_url=NOWHERE)

    first = next(f for f in LAYOUTS[name].files if f not in GENUINE[name])
    message = str(caught.value)
    assert message.startswith(f"{raw / first}: does not match the pin for data/{name}/{first}")
    assert pins[first].sha256 in message and file_sha256(raw / first) in message
    assert "the file was not used" in message and not (tmp_path / name).exists()


def test_tampered_raw_file_is_rejected_and_nothing_is_written(excerpt_raw):
    pins = pins_for(excerpt_raw, "davis")
    proteins = excerpt_raw / "proteins.txt"
    text = proteins.read_text()
    at = text.index(': "') + 3
    proteins.write_text(text[:at] + ("A" if text[at] != "A" else "G") + text[at + 1 :])  # one residue, same size

    with pytest.raises(FetchError) as caught:
        fetch("davis", data_dir=excerpt_raw.parents[1], pins=pins, base_url=NOWHERE)

    message, pin = str(caught.value), next(p for p in pins["davis"] if p.path.endswith("proteins.txt"))
    assert str(proteins) in message and f"expected {pin.size} bytes, sha256 {pin.sha256}" in message
    assert f"got {pin.size} bytes, sha256 {file_sha256(proteins)}" in message
    assert "the file was not used" in message
    assert not (excerpt_raw.parents[1] / "davis").exists()


# --- downloads --------------------------------------------------------------------------------


def test_download_from_a_mirror_is_verified_and_converted(tmp_path, excerpt_raw):
    mirror, cache = _mirror(tmp_path, excerpt_raw), tmp_path / "fresh"

    store = fetch("davis", data_dir=cache, pins=pins_for(excerpt_raw, "davis"), base_url=mirror.as_uri() + "/")

    assert len(read_store(store).measurements) == 12
    for f in LAYOUTS["davis"].files:
        assert (cache / "raw/davis" / f).read_bytes() == (mirror / "data/davis" / f).read_bytes()
    assert _debris(cache) == []


def test_tampered_download_is_discarded(tmp_path, excerpt_raw):
    mirror, cache = _mirror(tmp_path, excerpt_raw), tmp_path / "fresh"
    matrix = mirror / "data/davis" / LAYOUTS["davis"].affinity
    matrix.write_text(matrix.read_text().replace("0.67", "0.68"))

    with pytest.raises(FetchError, match="the download was discarded and not used") as caught:
        fetch("davis", data_dir=cache, pins=pins_for(excerpt_raw, "davis"), base_url=mirror.as_uri() + "/", retries=0)

    assert LAYOUTS["davis"].affinity in str(caught.value)
    assert not (cache / "raw/davis" / LAYOUTS["davis"].affinity).exists()
    assert _debris(cache) == [] and not (cache / "davis").exists()


def test_unreachable_source_lists_every_file_to_place(tmp_path):
    with pytest.raises(FetchError) as caught:
        fetch("kiba", data_dir=tmp_path, base_url=NOWHERE)

    message = str(caught.value)
    for f in LAYOUTS["kiba"].files:
        assert f"{tmp_path / 'raw/kiba' / f}  <-  {NOWHERE}data/kiba/{f}" in message
    assert (
        "could not download 6 kiba file(s)" in message
        and f"re-run `pharmafl data fetch kiba --data-dir {tmp_path}`" in message
    )
    assert not (tmp_path / "kiba").exists()


def test_only_the_missing_files_are_listed(excerpt_raw):
    pins = pins_for(excerpt_raw, "davis")
    (excerpt_raw / "proteins.txt").unlink()
    (excerpt_raw / "folds/test_fold_setting1.txt").unlink()

    with pytest.raises(FetchError, match="could not download 2 davis file") as caught:
        fetch("davis", data_dir=excerpt_raw.parents[1], pins=pins, base_url=NOWHERE)
    assert caught.value.args[0].count("  <-  ") == 2


def test_existing_store_is_reused_and_a_failed_force_keeps_it(excerpt_raw):
    cache, pins = excerpt_raw.parents[1], pins_for(excerpt_raw, "davis")
    store = fetch("davis", data_dir=cache, pins=pins, base_url=NOWHERE)
    for f in LAYOUTS["davis"].files:
        (excerpt_raw / f).unlink()

    assert fetch("davis", data_dir=cache, pins=pins, base_url=NOWHERE) == store
    with pytest.raises(FetchError, match="could not download 6 davis file"):
        fetch("davis", data_dir=cache, pins=pins, base_url=NOWHERE, force=True)
    assert len(load_dataset("davis", data_dir=cache).measurements) == 12


def test_unknown_dataset_lists_the_choices(tmp_path):
    with pytest.raises(FetchError, match="unknown dataset 'bindingdb'; choices: davis, kiba"):
        fetch("bindingdb", data_dir=tmp_path)


# --- downloads over HTTP (pooch) ------------------------------------------------------------------


@pytest.fixture
def http_mirror(tmp_path, excerpt_raw, monkeypatch):
    """The excerpt's raw files served on 127.0.0.1; ``fail[path] = n`` answers the next n GETs of
    ``path`` with 503. pooch's waits between tries are recorded in ``waits``, not slept."""
    root = _mirror(tmp_path, excerpt_raw)
    fail: dict[str, int] = {}
    seen: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            seen.append(self.path)
            if fail.get(self.path, 0) > 0:
                fail[self.path] -= 1
                self.send_error(503, "busy, try again")
                return
            super().do_GET()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    waits: list[float] = []
    import pooch.core

    monkeypatch.setattr(pooch.core, "time", SimpleNamespace(sleep=waits.append))
    try:
        yield SimpleNamespace(
            url=f"http://127.0.0.1:{server.server_port}/", root=root, fail=fail, seen=seen, waits=waits
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_http_download_is_verified_and_converted(http_mirror, excerpt_raw, tmp_path):
    cache = tmp_path / "fresh"

    store = fetch("davis", data_dir=cache, pins=pins_for(excerpt_raw, "davis"), base_url=http_mirror.url)

    assert len(read_store(store).measurements) == 12
    assert sorted(http_mirror.seen) == sorted(f"/data/davis/{f}" for f in LAYOUTS["davis"].files)
    assert _debris(cache) == [] and http_mirror.waits == []


def test_a_transient_failure_is_retried(http_mirror, excerpt_raw, tmp_path):
    http_mirror.fail["/data/davis/proteins.txt"] = 2

    store = fetch("davis", data_dir=tmp_path / "fresh", pins=pins_for(excerpt_raw, "davis"), base_url=http_mirror.url)

    assert len(read_store(store).measurements) == 12
    assert http_mirror.seen.count("/data/davis/proteins.txt") == 3 and http_mirror.waits == [1, 2]


def test_retries_are_configurable_and_then_the_files_to_place_are_listed(http_mirror, excerpt_raw, tmp_path):
    http_mirror.fail["/data/davis/ligands_can.txt"] = 10
    cache = tmp_path / "fresh"

    with pytest.raises(FetchError, match="could not download 6 davis file") as caught:
        fetch("davis", data_dir=cache, pins=pins_for(excerpt_raw, "davis"), base_url=http_mirror.url, retries=1)

    assert http_mirror.seen == ["/data/davis/ligands_can.txt"] * 2  # one retry, then no further file is tried
    assert "503" in str(caught.value) and f"--data-dir {cache}" in str(caught.value)
    assert _debris(cache) == [] and not (cache / "davis").exists()


def test_a_checksum_mismatch_over_http_is_one_clear_error_and_leaves_no_file(http_mirror, excerpt_raw, tmp_path):
    served = http_mirror.root / "data/davis/proteins.txt"
    served.write_text(served.read_text().replace("A", "G", 1))  # same size, other bytes
    pins, cache = pins_for(excerpt_raw, "davis"), tmp_path / "fresh"
    pin = next(p for p in pins["davis"] if p.path.endswith("proteins.txt"))

    with pytest.raises(FetchError) as caught:
        fetch("davis", data_dir=cache, pins=pins, base_url=http_mirror.url, retries=2)

    message = str(caught.value)
    assert message.startswith(f"{cache / 'raw/davis/proteins.txt'}: does not match the pin for data/davis/proteins.txt")
    assert f"got {pin.size} bytes, sha256 {file_sha256(served)} in the last of 3 tries" in message
    assert "the download was discarded and not used" in message and "\n" not in message
    assert not (cache / "raw/davis/proteins.txt").exists() and _debris(cache) == []
    assert not (cache / "davis").exists()


def test_a_source_larger_than_its_pin_is_cut_off_at_once(http_mirror, excerpt_raw, tmp_path):
    served = http_mirror.root / "data/davis/proteins.txt"
    served.write_bytes(served.read_bytes() + b" " * 200_000)
    pins, cache = pins_for(excerpt_raw, "davis"), tmp_path / "fresh"
    pin = next(p for p in pins["davis"] if p.path.endswith("proteins.txt"))

    with pytest.raises(FetchError, match=f"got more than {pin.size} bytes; the download was discarded"):
        fetch("davis", data_dir=cache, pins=pins, base_url=http_mirror.url, retries=3)

    assert http_mirror.seen.count("/data/davis/proteins.txt") == 1 and _debris(cache) == []


def test_download_refuses_a_scheme_it_cannot_fetch(tmp_path):
    pin = Pin("data/davis/proteins.txt", 1, "0" * 64)

    with pytest.raises(FetchError, match="must start with one of https, http, file://"):
        download("ftp://example.org/proteins.txt", tmp_path / "proteins.txt", pin, name="davis")
    assert not any(tmp_path.iterdir())
