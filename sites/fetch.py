"""Public DTI datasets: download the DeepDTA raw files, verify pinned checksums, convert, store.

DAVIS (Davis et al. 2011, Nat. Biotechnol. 29:1046) and KIBA (Tang et al. 2014, J. Chem. Inf.
Model. 54:735, filtered as in SimBoost) as distributed with DeepDTA (Öztürk et al. 2018) in
``hkmztrk/DeepDTA`` at commit :data:`COMMIT`. Each raw file is checked against its pinned byte
size and SHA-256 before it is read; the pickled ``Y`` files are never downloaded nor unpickled
(the whitespace-separated affinity ``.txt`` matrices hold the same values).

Downloads go through ``pooch`` (Uieda et al. 2020, JOSS 5:1943): each file is streamed to a
temporary file beside its destination, checked against its pinned SHA-256 and only then renamed
into place; a connection error, an HTTP error or a checksum mismatch is tried again ``retries``
times (pooch waits 1 s, 2 s, ... between tries). ``http(s)://`` URLs use pooch's HTTP downloader,
``file://`` URLs (a local mirror) are read from disk; either way the bytes are counted (a file
larger than its pin is cut off at once) and shown on the caller's progress bar.

Layout of the data folder (``data_dir``, else ``$PHARMAFL_DATA``, else ``~/.cache/pharmafl``)::

    <data>/raw/<name>/ligands_can.txt, ligands_iso.txt, proteins.txt, <affinity matrix>.txt,
                      folds/train_fold_setting1.txt, folds/test_fold_setting1.txt
    <data>/<name>/    drugs.parquet, targets.parquet, measurements.parquet, manifest.json

Conversion: ``ligands_*.txt`` and ``proteins.txt`` are JSON objects id -> SMILES / sequence in
matrix order; the matrix is drugs x targets with ``nan`` where unmeasured; the fold files are
JSON lists (train: one list per fold) of indices into the measured cells in row-major order
(``np.where(~np.isnan(Y))``). Measured cells become measurements with ``fold`` = ``train<k>`` or
``test``; DAVIS Kd (nM) gives ``label`` = pKd = 9 - log10(Kd), KIBA scores are used as given.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np
import pandas as pd
import pooch

from pharmafl.errors import DataError, FetchError, Location
from pharmafl.sites.tables import MANIFEST, DTIDataset, default_data_dir, file_sha256, from_frames, save_dataset

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

COMMIT = "a546a8433a6822e958f36171c4356ad6f414d623"
BASE_URL = f"https://raw.githubusercontent.com/hkmztrk/DeepDTA/{COMMIT}/"
TIMEOUT_S = 60
RETRIES = 3  # further tries of a failed download
SCHEMES = ("https", "http", "file")
_BLOCK = 1 << 16


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


def _mismatch(path: Path, pin: Pin, got: str, name: str, url: str, *, downloaded: bool) -> FetchError:
    action = (
        "the download was discarded and not used"
        if downloaded
        else f"the file was not used; delete it and re-run `pharmafl data fetch {name}`, or replace it with {url}"
    )
    return FetchError(
        f"{path}: does not match the pin for {pin.path} at DeepDTA commit {COMMIT}: expected "
        f"{pin.size} bytes, sha256 {pin.sha256}; got {got}; {action}"
    )


def matches(path: Path, pin: Pin) -> bool:
    """Whether ``path`` has the pinned size and SHA-256."""
    return path.stat().st_size == pin.size and file_sha256(path) == pin.sha256


def verify(path: Path, pin: Pin, *, name: str, url: str) -> None:
    """Raise :class:`FetchError` unless ``path`` has the pinned size and SHA-256."""
    if not matches(path, pin):
        got = f"{path.stat().st_size} bytes, sha256 {file_sha256(path)}"
        raise _mismatch(path, pin, got, name, url, downloaded=False)


class _TooLarge(Exception):
    """The source sent more bytes than the pin allows (not retried: it is another file)."""


class _Sink:
    """What a download writes into: the temporary file, hashed and counted, cut off past the pinned size."""

    def __init__(self, out, limit: int, advance):
        self.out, self.limit, self.advance = out, limit, advance
        self.size, self.digest = 0, hashlib.sha256()

    def write(self, block: bytes) -> int:
        self.size += len(block)
        if self.size > self.limit:
            raise _TooLarge
        self.digest.update(block)
        self.advance(len(block))
        return self.out.write(block)

    def flush(self) -> None:
        self.out.flush()


class PinnedDownloader:
    """A pooch downloader for one pinned file; ``got`` is what the last try received (size, sha256)."""

    def __init__(self, pin: Pin, *, progress: Progress | None = None, label: str = "", timeout: float = TIMEOUT_S):
        self.pin, self.progress, self.label, self.timeout = pin, progress, label or pin.path, timeout
        self.tries, self.got = 0, None
        self._task: TaskID | None = None

    def _advance(self, n: int) -> None:
        if self.progress is not None and self._task is not None:
            self.progress.advance(self._task, n)

    def __call__(self, url: str, output_file: str, pooch_: object) -> None:
        self.tries += 1
        if self.progress is not None:
            label = self.label if self.tries == 1 else f"{self.label} (try {self.tries})"
            if self._task is None:
                self._task = self.progress.add_task(label, total=self.pin.size)
            else:
                self.progress.reset(self._task, description=label, total=self.pin.size)
        with open(output_file, "wb") as out:
            sink = _Sink(out, self.pin.size, self._advance)
            try:
                if urlparse(url).scheme == "file":
                    with open(url2pathname(urlparse(url).path), "rb") as source:
                        while block := source.read(_BLOCK):
                            sink.write(block)
                else:
                    pooch.HTTPDownloader(chunk_size=_BLOCK, timeout=self.timeout)(url, sink, pooch_)
            finally:
                self.got = (sink.size, sink.digest.hexdigest())


@contextmanager
def _pooch_quiet() -> Iterator[None]:
    """pooch logs every download at INFO on stderr; the progress bar says it already."""
    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def download(
    url: str, dest: Path, pin: Pin, *, name: str, retries: int = RETRIES, progress: Progress | None = None
) -> None:
    """Download ``url`` to ``dest`` through pooch, verified against ``pin`` before it is renamed into place.

    A connection or HTTP error is tried ``retries`` more times, then propagates as an
    :class:`OSError` (requests' errors are ``OSError``); a checksum mismatch (after as many tries)
    or a source larger than the pin raises :class:`FetchError`. No partial file is left behind.
    """
    if urlparse(url).scheme not in SCHEMES:
        raise FetchError(f"cannot download {url}: the mirror URL must start with one of {', '.join(SCHEMES)}://")
    if not isinstance(retries, int) or retries < 0:
        raise FetchError(f"retries must be an integer >= 0, got {retries!r}")
    downloader = PinnedDownloader(pin, progress=progress, label=f"{name} {dest.name}")
    fetcher = pooch.create(
        path=dest.parent,
        base_url=url.rsplit("/", 1)[0] + "/",
        registry={dest.name: f"sha256:{pin.sha256}"},
        urls={dest.name: url},
        retry_if_failed=retries,
    )
    try:
        with _pooch_quiet():
            fetcher.fetch(dest.name, downloader=downloader)
    except _TooLarge:
        raise _mismatch(dest, pin, f"more than {pin.size} bytes", name, url, downloaded=True) from None
    except ValueError as exc:  # pooch: the hash of what arrived does not match
        if downloader.got is None:
            raise FetchError(f"{dest}: pooch refused {url}: {exc}") from exc
        size, sha256 = downloader.got
        tries = f" in the last of {downloader.tries} tries" if downloader.tries > 1 else ""
        raise _mismatch(dest, pin, f"{size} bytes, sha256 {sha256}{tries}", name, url, downloaded=True) from None


def ensure_raw(
    name: str,
    cache: Path,
    *,
    pins: Mapping[str, tuple[Pin, ...]] = PINS,
    base_url: str = BASE_URL,
    force: bool = False,
    retries: int = RETRIES,
    progress: Progress | None = None,
) -> Path:
    """Make ``<cache>/raw/<name>`` hold every pinned raw file, verified; return that folder.

    Files already there are verified and used; one that does not match its pin is an error, or,
    with ``force``, downloaded again (a file that matches needs no download: it has the bytes a
    download would give). After the first failed download no further downloads are tried; the
    error lists every file still missing.
    """
    layout, raw = LAYOUTS[name], cache / "raw" / name
    base_url = base_url if base_url.endswith("/") else base_url + "/"
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
        if dest.is_file() and matches(dest, pin):
            continue
        if failure is None:
            try:
                download(url, dest, pin, name=name, retries=retries, progress=progress)
                continue
            except OSError as exc:
                failure = exc
        missing.append((dest, url))
    if missing:
        listing = "\n".join(f"  {dest}  <-  {url}" for dest, url in missing)
        raise FetchError(
            f"could not download {len(missing)} {name} file(s) ({failure}). Place each file at its path "
            f"(source URL at DeepDTA commit {COMMIT}):\n{listing}\nthen re-run `pharmafl data fetch "
            f"{name} --data-dir {cache}`: it verifies each file's size and SHA-256 against the pinned values "
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
    data_dir: Path | None = None,
    force: bool = False,
    pins: Mapping[str, tuple[Pin, ...]] = PINS,
    base_url: str = BASE_URL,
    retries: int = RETRIES,
    progress: Progress | None = None,
) -> Path:
    """Fetch, verify and convert public dataset ``name``; return its store ``<data_dir>/<name>``.

    An existing store is returned as is unless ``force``; so is the data folder itself when
    it already holds the tidy DeepDTA tables of ``name`` (their pins are checked on loading),
    so that fetching never writes beside read-only reference tables. ``base_url`` may name a
    mirror (``https://``, ``http://`` or ``file:///srv/mirror/``) holding the same paths;
    ``pins`` defaults to the real upstream pins. ``retries``: further tries of a failed
    download. ``progress`` (a Rich :class:`~rich.progress.Progress`, e.g.
    :func:`pharmafl.console.progress`) gets one task per download and one for the conversion.
    """
    if name not in LAYOUTS:
        raise FetchError(f"unknown dataset {name!r}; choices: {', '.join(LAYOUTS)}")
    cache = Path(data_dir) if data_dir else default_data_dir()
    store = cache / name
    if (store / MANIFEST).is_file() and not force:
        return store
    if not force and all((cache / f"{name}_deepdta_{t}.csv.gz").is_file() for t in ("drugs", "targets", "pairs")):
        return cache
    try:
        raw = ensure_raw(name, cache, pins=pins, base_url=base_url, force=force, retries=retries, progress=progress)
        task = progress.add_task(f"{name}: converting to a store", total=None) if progress is not None else None
        out = save_dataset(convert_deepdta(raw, name), store)
        if progress is not None and task is not None:
            progress.update(task, total=1, completed=1)
        return out
    except PermissionError as exc:
        raise FetchError(
            f"cannot write to the data folder {cache}: {exc}; pass --data-dir (data_dir=) naming a writable folder"
        ) from exc
