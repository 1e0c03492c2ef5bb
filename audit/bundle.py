"""Export a ledger as an evidence bundle a regulator can verify without our database.

``export(ledger_or_path, out_dir)`` writes, from one consistent snapshot::

    entries.jsonl      one canonical JSON entry per line (payload embedded as an object)
    entries.parquet    the same rows (payload as canonical JSON text), for analysis tools
    checkpoints.jsonl  every signed tree head, one per line (each usable as --trusted-head)
    keys.json          {"format": "pharmafl-ledger-keys-v1", "keys": {actor: {algorithm,
                       fingerprint, public_key, registered_seq}}} (usable as --trusted-keys)
    manifest.json      {"format": "pharmafl-ledger-bundle-v1", "entries": N, "checkpoints": M,
                       "root_hash": Merkle root of all N entries, "files": {name: sha256}}

Every JSON file is RFC 8785 canonical with a final newline, so the verifier can demand
byte equality and a single changed byte anywhere is caught. The bundle is written to a
hidden sibling directory and renamed into place: an interrupted export leaves nothing
at ``out_dir``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from pharmafl.audit.canonical import canonical_json
from pharmafl.audit.errors import LedgerError
from pharmafl.audit.ledger import Ledger
from pharmafl.audit.merkle import CompactRange
from pharmafl.audit.records import ACTOR_KEY, ALGORITHM, fingerprint
from pharmafl.audit.storage import ENTRY_COLUMNS, Storage

BUNDLE_FORMAT = "pharmafl-ledger-bundle-v1"
KEYS_FORMAT = "pharmafl-ledger-keys-v1"
_BATCH = 20_000


def export(source: Ledger | str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write the evidence bundle of ``source`` (a :class:`Ledger`, path, run dir or URL) to
    ``out_dir``, which must not exist or be empty; returns its path."""
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
    with ledger.storage.read() as conn, open(tmp / "entries.jsonl", "w", encoding="utf-8", newline="\n") as jsonl, \
            pq.ParquetWriter(tmp / "entries.parquet", schema) as parquet:
        batch: list[dict] = []
        for entry in Storage.entries(conn):
            jsonl.write(entry.to_json_line() + "\n")
            batch.append(entry.__dict__)
            tree.append(entry.leaf_hash())
            if entry.type == ACTOR_KEY:
                data = entry.data
                keys.setdefault(data["actor"], {"algorithm": ALGORITHM, "public_key": data["public_key"],
                                                "fingerprint": fingerprint(bytes.fromhex(data["public_key"])),
                                                "registered_seq": entry.seq})
            if len(batch) == _BATCH:
                parquet.write_table(pa.Table.from_pylist(batch, schema))
                batch = []
            n += 1
        if batch:
            parquet.write_table(pa.Table.from_pylist(batch, schema))
        checkpoints = [c for c in Storage.checkpoints(conn) if c.tree_size <= n]
    (tmp / "checkpoints.jsonl").write_text("".join(c.to_json_line() + "\n" for c in checkpoints), encoding="utf-8")
    (tmp / "keys.json").write_text(canonical_json({"format": KEYS_FORMAT, "keys": keys}) + "\n", encoding="utf-8")
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(tmp.iterdir())}
    manifest = {"format": BUNDLE_FORMAT, "entries": n, "checkpoints": len(checkpoints),
                "root_hash": tree.root().hex(), "files": files}
    (tmp / "manifest.json").write_text(canonical_json(manifest) + "\n", encoding="utf-8")
    for p in tmp.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())
