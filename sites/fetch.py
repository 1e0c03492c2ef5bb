"""Public DTI datasets: download the DeepDTA raw files, verify pinned checksums, convert, store.

DAVIS (Davis et al. 2011, Nat. Biotechnol. 29:1046) and KIBA (Tang et al. 2014, J. Chem. Inf.
Model. 54:735, filtered as in SimBoost) as distributed with DeepDTA (Öztürk et al. 2018) in
``hkmztrk/DeepDTA`` at commit :data:`COMMIT`. Each raw file is checked against its pinned byte
size and SHA-256 before it is read; the pickled ``Y`` files are never downloaded nor unpickled
(the whitespace-separated affinity ``.txt`` matrices hold the same values).

Layout of the cache (``cache_dir``, else ``$PHARMAFL_DATA``, else ``~/.cache/pharmafl``)::

    <cache>/raw/<name>/ligands_can.txt, ligands_iso.txt, proteins.txt, <affinity matrix>.txt,
                       folds/train_fold_setting1.txt, folds/test_fold_setting1.txt
    <cache>/<name>/    drugs.parquet, targets.parquet, measurements.parquet, manifest.json

Conversion: ``ligands_*.txt`` and ``proteins.txt`` are JSON objects id -> SMILES / sequence in
matrix order; the matrix is drugs x targets with ``nan`` where unmeasured; the fold files are
JSON lists (train: one list per fold) of indices into the measured cells in row-major order
(``np.where(~np.isnan(Y))``). Measured cells become measurements with ``fold`` = ``train<k>`` or
``test``; DAVIS Kd (nM) gives ``label`` = pKd = 9 - log10(Kd), KIBA scores are used as given.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pharmafl.errors import DataError, FetchError, Location
from pharmafl.sites.tables import MANIFEST, DTIDataset, default_data_dir, file_sha256, from_frames, save_dataset

COMMIT = "a546a8433a6822e958f36171c4356ad6f414d623"
BASE_URL = f"https://raw.githubusercontent.com/hkmztrk/DeepDTA/{COMMIT}/"
TIMEOUT_S = 60


@dataclass(frozen=True)
class Pin:
    """An upstream file (path in the repository) and its expected byte size and SHA-256."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Layout:
    """Where a dataset's files sit upstream, and the unit of its affinity matrix."""

    folder: str
    affinity: str
    unit: str

    @property
    def files(self) -> tuple[str, ...]:
        return (
            "ligands_can.txt",
            "ligands_iso.txt",
            "proteins.txt",
            self.affinity,
            "folds/train_fold_setting1.txt",
            "folds/test_fold_setting1.txt",
        )


LAYOUTS = {
    "davis": Layout("data/davis", "drug-target_interaction_affinities_Kd__Davis_et_al.2011v1.txt", "nM_Kd"),
    "kiba": Layout("data/kiba", "kiba_binding_affinity_v2.txt", "kiba"),
}

PINS: Mapping[str, tuple[Pin, ...]] = {
    "davis": (
        Pin("data/davis/ligands_can.txt", 5306, "141094d99510a52091d2ea1b05be7c1f66b2c5fcaeeeb261eaf4cbf2128bde6d"),
        Pin("data/davis/ligands_iso.txt", 5452, "58b3cd168ed12962eb856e4e4e5dab1abbd42d6c0912eed2b9987bf578c7fafd"),
        Pin("data/davis/proteins.txt", 355211, "187cedeee10cd3b58af915a2861a5ed0c4ff42a2d728f4dea5e0b47e3d75b291"),
        Pin(
            "data/davis/drug-target_interaction_affinities_Kd__Davis_et_al.2011v1.txt",
            164306,
            "e2c3d003d49aff61f70be24feafd8d084b0df9404d919338088855828e252d88",
        ),
        Pin(
            "data/davis/folds/train_fold_setting1.txt",
            166040,
            "bb7a63b2178c40a4e2417bc701b95511407787fa5eabb6a43a695fe6bd722f56",
        ),
        Pin(
            "data/davis/folds/test_fold_setting1.txt",
            33252,
            "c97589fa2fae318b01870854af0ab6fdd155dd38524cc6ac1d0319418ac6d568",
        ),
    ),
    "kiba": (
        Pin("data/kiba/ligands_can.txt", 165908, "a95797abaf31b17bd2471dbf3e3476f588d5a79797903cc156528f66e55c963b"),
        Pin("data/kiba/ligands_iso.txt", 169771, "b141f83ca38af4bf53c6bb70cd466e8bdf4fd175d52102ebc41f15a986df9012"),
        Pin("data/kiba/proteins.txt", 170137, "2ba9dbc2959d88b0740aaf28828c4c611c2dbd1c2019547eb2ec1c3daa192604"),
        Pin(
            "data/kiba/kiba_binding_affinity_v2.txt",
            2864308,
            "0b062d3f51e80b63acda95bcc6364cacafa744d1dcd2d97293ccc878540b5732",
        ),
        Pin(
            "data/kiba/folds/train_fold_setting1.txt",
            695885,
            "da74eeeb2c3e7d52a2fd6daac0dc105bba097c222337230eec69d9fd7e1c301e",
        ),
        Pin(
            "data/kiba/folds/test_fold_setting1.txt",
            139047,
            "92801eec2caddf950235c6c6a46d999d2eeeaa6d35cbeffd68c72a5cf54b208d",
        ),
    ),
}


def _mismatch(path: Path, pin: Pin, size: int, sha256: str, name: str, url: str, *, downloaded: bool) -> FetchError:
    action = (
        "the download was discarded and not used"
        if downloaded
        else f"the file was not used; delete it and re-run `pharmafl data fetch {name}`, or replace it with {url}"
    )
    return FetchError(
        f"{path}: does not match the pin for {pin.path} at DeepDTA commit {COMMIT}: expected "
        f"{pin.size} bytes, sha256 {pin.sha256}; got {size} bytes, sha256 {sha256}; {action}"
    )


def verify(path: Path, pin: Pin, *, name: str, url: str) -> None:
    """Raise :class:`FetchError` unless ``path`` has the pinned size and SHA-256."""
    size = path.stat().st_size
    actual = file_sha256(path)
    if size != pin.size or actual != pin.sha256:
        raise _mismatch(path, pin, size, actual, name, url, downloaded=False)


def download(url: str, dest: Path, pin: Pin, *, name: str) -> None:
    """Download ``url`` to a temporary file, verify it against ``pin``, then rename it to ``dest``.

    Network failures propagate as :class:`OSError`; a mismatch raises :class:`FetchError`.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        digest, size = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            while block := response.read(1 << 20):
                size += len(block)
                digest.update(block)
                out.write(block)
                if size > pin.size:
                    break
        if size != pin.size or digest.hexdigest() != pin.sha256:
            raise _mismatch(dest, pin, size, digest.hexdigest(), name, url, downloaded=True)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def ensure_raw(
    name: str, cache: Path, *, pins: Mapping[str, tuple[Pin, ...]] = PINS, base_url: str = BASE_URL, force: bool = False
) -> Path:
    """Make ``<cache>/raw/<name>`` hold every pinned raw file, verified; return that folder.

    Files already there are verified and used (re-downloaded with ``force``). After the first
    failed download no further downloads are tried; the error lists every file still missing.
    """
    layout, raw = LAYOUTS[name], cache / "raw" / name
    by_path = {p.path: p for p in pins.get(name, ())}
    unpinned = [f"{layout.folder}/{f}" for f in layout.files if f"{layout.folder}/{f}" not in by_path]
    if unpinned:
        raise FetchError(f"no pin for {unpinned}; every file read must be pinned (size and sha256)")
    (raw / "folds").mkdir(parents=True, exist_ok=True)  # an unwritable cache fails here, not as a download
    missing: list[tuple[Path, str]] = []
    failure: OSError | None = None
    for rel in layout.files:
        pin, dest, url = by_path[f"{layout.folder}/{rel}"], raw / rel, base_url + f"{layout.folder}/{rel}"
        if dest.is_file() and not force:
            verify(dest, pin, name=name, url=url)
            continue
        if failure is None:
            try:
                download(url, dest, pin, name=name)
                continue
            except OSError as exc:
                failure = exc
        if not dest.is_file() or force:
            missing.append((dest, url))
    if missing:
        listing = "\n".join(f"  {dest}  <-  {url}" for dest, url in missing)
        raise FetchError(
            f"could not download {len(missing)} {name} file(s) ({failure}). Place each file at its path "
            f"(source URL at DeepDTA commit {COMMIT}):\n{listing}\nthen re-run `pharmafl data fetch "
            f"{name} --cache-dir {cache}`: it verifies each file's size and SHA-256 against the pinned values "
            "and uses them."
        )
    return raw


def _json(path: Path, kind: type) -> object:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"not readable as JSON: {exc}", Location(path), "restore the pinned upstream file") from exc
    if not isinstance(value, kind):
        raise DataError(
            f"expected a JSON {kind.__name__}, found {type(value).__name__}",
            Location(path),
            "restore the pinned upstream file",
        )
    return value


def fold_labels(train: list, test: list, n_measured: int, file: Path) -> np.ndarray:
    """Fold name per measured cell (None where no fold lists it) from DeepDTA fold index lists."""
    folds = np.full(n_measured, None, dtype=object)
    for label, indices in [(f"train{k}", fold) for k, fold in enumerate(train)] + [("test", test)]:
        for index in indices:
            if not isinstance(index, int) or not 0 <= index < n_measured:
                raise DataError(
                    f"fold index {index!r} is not a measured cell (0..{n_measured - 1})",
                    Location(file, ident=label),
                    "restore the pinned upstream fold file",
                )
            if folds[index] is not None:
                raise DataError(
                    f"cell {index} is in both {folds[index]} and {label}",
                    Location(file, ident=label),
                    "restore the pinned upstream fold file",
                )
            folds[index] = label
    return folds


def convert_deepdta(raw: Path, name: str, *, layout: Layout | None = None) -> DTIDataset:
    """Read verified DeepDTA raw files from ``raw`` into a validated :class:`DTIDataset`."""
    layout = layout or LAYOUTS[name]
    can, iso = _json(raw / "ligands_can.txt", dict), _json(raw / "ligands_iso.txt", dict)
    proteins = _json(raw / "proteins.txt", dict)
    if list(can) != list(iso):
        raise DataError(
            "ligands_iso.txt lists other ids or another order than ligands_can.txt",
            Location(raw / "ligands_iso.txt"),
            "restore the pinned upstream files",
        )
    matrix_file = raw / layout.affinity
    try:
        y = np.loadtxt(matrix_file, dtype=float, ndmin=2)
    except (OSError, ValueError) as exc:
        raise DataError(f"unreadable affinity matrix: {exc}", Location(matrix_file), "restore the pinned file") from exc
    if y.shape != (len(can), len(proteins)):
        raise DataError(
            f"matrix is {y.shape[0]} x {y.shape[1]}, expected {len(can)} drugs x {len(proteins)} targets",
            Location(matrix_file),
            "restore the pinned upstream files",
        )
    rows, cols = np.where(~np.isnan(y))
    train_file, test_file = raw / "folds/train_fold_setting1.txt", raw / "folds/test_fold_setting1.txt"
    train, test = _json(train_file, list), _json(test_file, list)
    if not all(isinstance(fold, list) for fold in train):
        raise DataError("train folds must be a list of index lists", Location(train_file), "restore the pinned file")
    folds = fold_labels(train, test, len(rows), test_file)
    drug_ids, target_ids = np.array(list(can), dtype=object), np.array(list(proteins), dtype=object)
    drugs = pd.DataFrame({"drug_id": list(can), "smiles": list(can.values()), "smiles_iso": list(iso.values())})
    targets = pd.DataFrame({"target_id": list(proteins), "sequence": list(proteins.values())})
    measurements = pd.DataFrame(
        {"drug_id": drug_ids[rows], "target_id": target_ids[cols], "affinity": y[rows, cols], "fold": folds}
    )
    files = (raw / "ligands_can.txt", raw / "proteins.txt", matrix_file)
    return from_frames(drugs, targets, measurements, name=name, unit=layout.unit, files=[str(f) for f in files])


def fetch(
    name: str,
    *,
    cache_dir: Path | None = None,
    force: bool = False,
    pins: Mapping[str, tuple[Pin, ...]] = PINS,
    base_url: str = BASE_URL,
) -> Path:
    """Fetch, verify and convert public dataset ``name``; return its store ``<cache>/<name>``.

    An existing store is returned as is unless ``force``; so is the cache directory itself when
    it already holds the tidy DeepDTA tables of ``name`` (their pins are checked on loading),
    so that fetching never writes beside read-only reference tables. ``base_url`` may name a mirror (any
    URL urllib opens, e.g. ``file:///srv/mirror/``) holding the same paths; ``pins`` defaults
    to the real upstream pins.
    """
    if name not in LAYOUTS:
        raise FetchError(f"unknown dataset {name!r}; choices: {', '.join(LAYOUTS)}")
    cache = Path(cache_dir) if cache_dir else default_data_dir()
    store = cache / name
    if (store / MANIFEST).is_file() and not force:
        return store
    if not force and all((cache / f"{name}_deepdta_{t}.csv.gz").is_file() for t in ("drugs", "targets", "pairs")):
        return cache
    try:
        raw = ensure_raw(name, cache, pins=pins, base_url=base_url, force=force)
        return save_dataset(convert_deepdta(raw, name), store)
    except PermissionError as exc:
        raise FetchError(
            f"cannot write to the cache {cache}: {exc}; pass --cache-dir (cache_dir=) naming a writable folder"
        ) from exc
