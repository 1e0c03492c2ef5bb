"""Reading a pharmafl ledger bundle for the standalone verifier, and its packaging checks.

Part of :mod:`pharmafl.audit.verify` (stdlib, ``cryptography`` through it, ``pyarrow`` only for
``entries.parquet``): each JSONL line must be exactly its record's canonical form; the manifest,
``keys.json`` and the Parquet copy must be what the verified entries make them; the anchors
received out of band (a trusted head, a key bundle, the consortium's roster) are read with the
same strictness (NaN, Infinity, wrong shapes refused).
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

from pharmafl.audit import messages as m
from pharmafl.audit.verify import Result, Run, VerificationError, _need, canonical, verify

ENTRY_FIELDS = ("actor", "entry_hash", "payload", "prev_hash", "seq", "signature", "ts", "type")
ENTRY_ORDER = ("seq", "ts", "actor", "type", "payload", "prev_hash", "entry_hash", "signature")  # row tuples
BUNDLE_FILES = {"checkpoints.jsonl", "cosignatures.jsonl", "entries.jsonl", "keys.json"}  # + entries.parquet


def _jsonl(path: Path, fields, entries: bool = False):
    """Records of a bundle's JSONL file, each line exactly its record's canonical form."""
    with open(path, "rb") as lines:
        for i, line in enumerate(lines):
            try:
                rec = json.loads(line)
                _need(type(rec) is dict and sorted(rec) == sorted(fields), f"expected the fields {', '.join(fields)}")
                rec = (
                    (*(canonical(rec[k]) if k == "payload" else rec[k] for k in ENTRY_ORDER), rec["payload"])
                    if entries
                    else rec
                )
                _need((m.entry_line(*rec[:8]) if entries else canonical(rec)) + "\n" == line.decode(), "not canonical")
            except (ValueError, TypeError, RecursionError, VerificationError) as err:
                raise VerificationError(
                    f"{path.name} line {i + 1}: {getattr(err, 'reason', err)}", i if entries else None
                ) from None
            yield rec


def read_bundle(path: Path) -> tuple:
    """``(entry rows, checkpoint dicts)`` of a bundle; the rows are a generator (close it when done)."""
    return _jsonl(path / "entries.jsonl", ENTRY_FIELDS, True), list(
        _jsonl(path / "checkpoints.jsonl", m.CHECKPOINT_SHAPE)
    )


def check_bundle(path: Path, run: Run, cosignatures: int) -> None:
    """The packaging: the manifest (counts, root, each file's SHA-256), keys.json, the Parquet copy."""
    files = {p.name: m.file_sha256(p) for p in sorted(path.iterdir()) if p.name != "manifest.json"}
    _need(
        set(files) in (BUNDLE_FILES, BUNDLE_FILES | {"entries.parquet"}),
        f"the bundle holds {sorted(files)}: "
        f"expected {', '.join(sorted(BUNDLE_FILES))} and manifest.json (entries.parquet optional)",
    )
    manifest = canonical(m.bundle_manifest(run.entries, run.checkpoints, cosignatures, run.root, files))
    _need(
        (path / "manifest.json").read_bytes() == manifest.encode() + b"\n",
        "manifest.json is not the manifest "
        f"of these files (counts, root_hash, each file's SHA-256), which is {manifest}",
    )
    keys = m.keys_document({actor: (key.hex(), seq) for actor, (key, seq) in run.keys.items()})
    _need(
        (path / "keys.json").read_bytes() == canonical(keys).encode() + b"\n",
        "keys.json differs from the keys registered in the entries",
    )
    if "entries.parquet" in files:
        try:
            import pyarrow.parquet as pq  # only to cross-check the Parquet copy
        except ImportError:
            return print("note: pyarrow is not installed; entries.parquet checked by its SHA-256 only", file=sys.stderr)
        table = pq.ParquetFile(path / "entries.parquet")
        _need(tuple(table.schema_arrow.names) == ENTRY_ORDER, f"entries.parquet: columns must be {ENTRY_ORDER}")
        rows = (tuple(r.values()) for b in table.iter_batches() for r in b.to_pylist())
        with open(path / "entries.jsonl", "rb") as jsonl:  # already verified: compare the canonical lines
            for i, (row, line) in enumerate(itertools.zip_longest(rows, jsonl)):
                _need(row and line and m.entry_line(*row).encode() + b"\n" == line, "entries.parquet differs", i)


def counted(rows, on_progress, total: int | None = None):
    """``rows`` unchanged, calling ``on_progress(rows so far, total)`` every 4096 rows and after the last."""
    done = 0
    for done, row in enumerate(rows, 1):
        if not done % 4096:
            on_progress(done, total)
        yield row
    on_progress(done, total)


def _declared_size(path: Path) -> int | None:
    """The entry count the manifest declares, for progress only (check_bundle checks the manifest)."""
    try:
        size = json.loads((path / "manifest.json").read_bytes())["entries"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return size if type(size) is int else None


def load_anchors(trusted_head=None, trusted_keys=None, roster=None) -> dict:
    """The out-of-band anchors as :func:`verify` takes them; an unreadable one raises (unreadable)."""

    def load(path, what: str, ok=lambda doc: True):
        try:  # NaN and Infinity refused; then the document's own shape
            doc = json.loads(Path(path).read_bytes(), parse_constant=lambda c: canonical(float(c)))
            _need(ok(doc), f"not a {what} file")
            return doc
        except (OSError, ValueError, RecursionError, VerificationError) as err:
            raise VerificationError(f"cannot read the {what} {path}: {err}", unreadable=True) from None

    out = {
        "has_head": trusted_head is not None,
        "trusted_head": None if trusted_head is None else load(trusted_head, "trusted head"),
    }
    if trusted_keys is not None:
        out["trusted_keys"] = load(
            Path(trusted_keys) / "keys.json" if Path(trusted_keys).is_dir() else trusted_keys,
            m.KEYS_FORMAT,
            lambda d: (
                type(d) is dict
                and d.get("format") == m.KEYS_FORMAT
                and type(d.get("keys")) is dict
                and all(type(v) is dict for v in d["keys"].values())
            ),
        )
        out["trusted_keys"] = out["trusted_keys"]["keys"]
    if roster is not None:
        out["roster"] = load(
            roster,
            m.CONSORTIUM_FORMAT,
            lambda d: (
                type(d) is dict
                and type(d.get("cards")) is dict
                and d.get("format") == m.CONSORTIUM_FORMAT
                and d.get("roster_sha256") == m.roster_sha256(d["cards"], d.get("parties"))
            ),
        )["roster_sha256"]
    return out


def verify_bundle(
    path, *, trusted_head=None, trusted_keys=None, roster=None, witnesses=None, jobs=None, on_progress=None
) -> Result:
    """Verify the bundle at ``path`` (a database: through :mod:`pharmafl.audit.dbsource`); its :class:`Result`.

    :func:`pharmafl.audit.verify.verify_path` is the entry point; this is its body. ``on_progress(done,
    total)``, if given, is called as entries are read (every 4096 and after the last)."""
    _need(witnesses is None or witnesses >= 0, f"--witnesses {witnesses}: give a count >= 0", unreadable=True)
    p, opts = Path(path), {"witnesses": witnesses, "jobs": jobs, **load_anchors(trusted_head, trusted_keys, roster)}
    if not (p / "manifest.json").exists():
        from pharmafl.audit import dbsource  # not a bundle: a database, read outside this module

        return dbsource.verify_database(str(path), on_progress=on_progress, **opts)
    missing, entries = sorted(BUNDLE_FILES - {f.name for f in p.iterdir()}), None
    _need(not missing, f"bundle {path} lacks {', '.join(missing)}: it is incomplete; export it again")
    try:
        entries, cps = read_bundle(p)
        cosigs = list(_jsonl(p / "cosignatures.jsonl", m.COSIGNATURE_SHAPE))
        rows = entries if on_progress is None else counted(entries, on_progress, _declared_size(p))
        run = verify(rows, cps, cosigs, **opts)
        check_bundle(p, run, len(cosigs))
        return run.result()
    except OSError as err:
        raise VerificationError(f"cannot read the bundle {path}: {err}", unreadable=True) from None
    finally:
        if entries is not None:
            entries.close()  # stop reading at the first failure
