"""Export a ledger as an evidence bundle a regulator can verify without our database.

``export(ledger_or_path, out_dir)`` writes, from one consistent snapshot, *everything* the
database holds (a bundle never hides what the database shows)::

    entries.jsonl       one canonical JSON entry per line (payload embedded as an object)
    entries.parquet     the same rows (payload as canonical JSON text), for analysis tools
    checkpoints.jsonl   every signed tree head, one per line (each usable as --trusted-head)
    cosignatures.jsonl  every witness cosignature {signature, timestamp, tree_size, witness}
    keys.json           {"format": "pharmafl-ledger-keys-v1", "keys": {actor: {algorithm,
                        fingerprint, public_key, registered_seq}}} (usable as --trusted-keys)
    manifest.json       {"format": "pharmafl-ledger-bundle-v2", "entries": N, "checkpoints": M,
                        "cosignatures": C, "root_hash": Merkle root of all N entries,
                        "files": {name: sha256}}

Every JSON file is RFC 8785 canonical with a final newline (formats: :mod:`.messages`), so
the verifier can demand byte equality and a single changed byte anywhere is caught. The
bundle is written to a hidden sibling directory, verified there with the standalone
verifier, and only then renamed into place: an interrupted export leaves nothing at
``out_dir``, and a ledger that does not verify is refused with the verifier's first failure
(``force=True`` exports it anyway, every row included, for investigation).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pharmafl.audit import messages
from pharmafl.audit.errors import LedgerError
from pharmafl.audit.ledger import Ledger
from pharmafl.audit.merkle import CompactRange
from pharmafl.audit.records import ACTOR_KEY
from pharmafl.audit.storage import ENTRY_COLUMNS, Storage

BUNDLE_FORMAT = messages.BUNDLE_FORMAT
KEYS_FORMAT = messages.KEYS_FORMAT
_BATCH = 20_000


class ExportRefused(LedgerError):
    """The ledger does not verify, so no bundle was written; the message is the first failure."""


def export(
    source: Ledger | str | os.PathLike, out_dir: str | os.PathLike, *, force: bool = False, jobs: int | None = None
) -> Path:
    """Write the evidence bundle of ``source`` (a :class:`Ledger`, path, run dir or URL) to
    ``out_dir``, which must not exist or be empty; returns its path.

    Raises:
        ExportRefused: (unless ``force``) the exported bundle does not verify; the verifier's first failure.
        LedgerError: the target is not empty, or the ledger cannot be read.
    """
    from pharmafl.audit.verify import VerificationError, verify_path

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LedgerError(f"export target {out} exists and is not an empty directory; choose a new --out path")
    ledger = source if isinstance(source, Ledger) else Ledger.open(source)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        _write_bundle(ledger, tmp)
        try:
            verify_path(str(tmp), jobs=jobs)
        except VerificationError as err:
            if not force:
                raise ExportRefused(
                    f"refusing to export a ledger that does not verify: {err}; investigate it with "
                    "`pharmafl ledger verify`, or export everything as it is with --force"
                ) from None
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if ledger is not source:
            ledger.close()
    return out


def _write_bundle(ledger: Ledger, tmp: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("seq", pa.int64())] + [(c, pa.string()) for c in ENTRY_COLUMNS[1:]])
    tree, keys, n = CompactRange(), {}, 0
    with (
        ledger.storage.read() as conn,
        open(tmp / "entries.jsonl", "w", encoding="utf-8", newline="\n") as jsonl,
        pq.ParquetWriter(tmp / "entries.parquet", schema) as parquet,
    ):
        batch: list[dict] = []
        for entry in Storage.entries(conn):
            jsonl.write(entry.to_json_line() + "\n")
            batch.append(entry.__dict__)
            tree.append(entry.leaf_hash())
            if entry.type == ACTOR_KEY:
                _registration(keys, entry)
            if len(batch) == _BATCH:
                parquet.write_table(pa.Table.from_pylist(batch, schema))
                batch = []
            n += 1
        if batch:
            parquet.write_table(pa.Table.from_pylist(batch, schema))
        checkpoints = Storage.checkpoints(conn)  # all of them: one beyond the entries shows a truncation
        cosignatures = getattr(Storage, "cosignatures", lambda _: [])(conn)
    _write(tmp / "checkpoints.jsonl", "".join(c.to_json_line() + "\n" for c in checkpoints))
    _write(tmp / "cosignatures.jsonl", "".join(c.to_json_line() + "\n" for c in cosignatures))
    _write(tmp / "keys.json", messages.canonical(messages.keys_document(keys)) + "\n")
    files = {p.name: messages.file_sha256(p) for p in sorted(tmp.iterdir())}
    manifest = messages.bundle_manifest(n, len(checkpoints), len(cosignatures), tree.root().hex(), files)
    _write(tmp / "manifest.json", messages.canonical(manifest) + "\n")
    for p in tmp.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8", newline="\n")


def _registration(keys: dict, entry) -> None:
    """The first key registered for an actor, as keys.json lists it (a malformed one is left to the verifier)."""
    try:
        data = entry.data
    except ValueError:
        return
    if isinstance(data, dict) and isinstance(data.get("actor"), str) and messages.is_hex(data.get("public_key"), 64):
        keys.setdefault(data["actor"], (data["public_key"], entry.seq))
