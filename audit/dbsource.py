"""Database rows for the standalone verifier: a SQLite or PostgreSQL ledger read as a bundle is.

:mod:`pharmafl.audit.verify` reads bundles only and imports nothing that touches a database.
This adapter, outside it, reads a ledger's ``ledger_entries``, ``ledger_checkpoints`` and
``ledger_cosignatures`` from one consistent snapshot (:meth:`Storage.read`) and hands them to
the same checks (:func:`pharmafl.audit.verify.verify`), so a database and its export give the
same answer. ``pharmafl ledger verify RUN|DB|URL|BUNDLE`` goes through :func:`verify_target`.

Usage::

    from pharmafl.audit import dbsource
    result = dbsource.verify_target("runs/r1", trusted_head="head.json", witnesses=2)
    print(result.line())  # OK: N entries, ...; result.as_dict() for JSON
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

from pharmafl.audit.verify import Result, VerificationError, verify, verify_path
from pharmafl.audit.verify_bundle import counted, load_anchors

__all__ = ["rows", "snapshot", "verify_database", "verify_target"]


@contextlib.contextmanager
def rows(target: str | os.PathLike) -> Iterator[tuple[Iterator[tuple], list[dict], list[dict]]]:
    """``(entry rows, checkpoint dicts, cosignature dicts)`` of the ledger at ``target`` (a SQLite
    file, a run directory holding ``ledger.db``, or a ``postgresql://`` URL), from one snapshot that
    stays open inside the ``with`` block; rows are ``(seq, ts, actor, type, payload, prev_hash,
    entry_hash, signature)`` as :func:`~pharmafl.audit.verify.verify` takes them.

    Raises:
        VerificationError: (unreadable) naming what could not be read and what is accepted.
    """
    with snapshot(target) as (entries, checkpoints, cosignatures, _size):
        yield entries, checkpoints, cosignatures


@contextlib.contextmanager
def snapshot(target: str | os.PathLike) -> Iterator[tuple[Iterator[tuple], list[dict], list[dict], int]]:
    """:func:`rows` and the number of entries in the same snapshot (for progress, and for readers such
    as the explorer that verify and index the rows in one pass)."""
    text = os.fspath(target)
    try:  # the full install: only this adapter needs a database driver
        from sqlalchemy.exc import SQLAlchemyError

        from pharmafl.audit.storage import Storage, describe, resolve_target
    except ImportError as err:
        raise VerificationError(
            f"{text} is not a bundle (no manifest.json), and reading a database needs the full "
            f"pharmafl install ({err}); export a bundle and verify that",
            unreadable=True,
        ) from None
    url = re.sub(r"^postgres(ql)?://", "postgresql+psycopg://", resolve_target(text))  # psycopg 3, not psycopg2
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise VerificationError(
            f"{text}: not a SQLite file, a run directory with ledger.db, a bundle with "
            "manifest.json, or a postgresql:// URL",
            unreadable=True,
        )
    storage = Storage(url)
    try:
        if not storage.exists():
            raise VerificationError(f"{describe(url)} holds no ledger (no ledger_entries table)", unreadable=True)
        with storage.read() as conn:
            cosignatures = getattr(Storage, "cosignatures", lambda _: [])(conn)
            yield (
                (
                    (e.seq, e.ts, e.actor, e.type, e.payload, e.prev_hash, e.entry_hash, e.signature)
                    for e in Storage.entries(conn)
                ),
                [c.__dict__ for c in Storage.checkpoints(conn)],
                [c.__dict__ for c in cosignatures],
                Storage.head(conn)[0],
            )
    except SQLAlchemyError as err:
        raise VerificationError(
            f"cannot read a ledger from {describe(url)}: {getattr(err, 'orig', err)}", unreadable=True
        ) from None
    finally:
        storage.dispose()


def verify_database(
    target: str | os.PathLike,
    *,
    trusted_head=None,
    has_head: bool = False,
    trusted_keys: dict | None = None,
    roster: str | None = None,
    witnesses: int | None = None,
    jobs: int | None = None,
    on_progress=None,
    open_tail: bool = False,
) -> Result:
    """:func:`~pharmafl.audit.verify.verify` over a database's rows; anchors already loaded
    (:func:`~pharmafl.audit.verify_bundle.load_anchors`). ``on_progress(done, total)`` as entries
    are read; ``open_tail``: an interrupted run about to be resumed (its last entries await the
    witnesses). Returns the verified ledger's :class:`~pharmafl.audit.verify.Result`."""
    with snapshot(target) as (entries, checkpoints, cosignatures, size):
        return verify(
            entries if on_progress is None else counted(entries, on_progress, size),
            checkpoints,
            cosignatures,
            trusted_head=trusted_head,
            has_head=has_head,
            trusted_keys=trusted_keys,
            roster=roster,
            witnesses=witnesses,
            jobs=jobs,
            open_tail=open_tail,
        ).result()


def verify_target(
    target: str | os.PathLike,
    *,
    trusted_head: str | None = None,
    trusted_keys: str | None = None,
    roster: str | None = None,
    witnesses: int | None = None,
    jobs: int | None = None,
    on_progress=None,
) -> Result:
    """Verify a bundle directory or a database; anchors are file paths. ``on_progress(done, total)``
    as entries are read. Returns the :class:`~pharmafl.audit.verify.Result` (``.line()``: ``OK: ...``)."""
    if (Path(target) / "manifest.json").exists():
        return verify_path(
            str(target),
            trusted_head=trusted_head,
            trusted_keys=trusted_keys,
            roster=roster,
            witnesses=witnesses,
            jobs=jobs,
            on_progress=on_progress,
        )
    if witnesses is not None and witnesses < 0:
        raise VerificationError(f"--witnesses {witnesses}: give a count >= 0", unreadable=True)
    return verify_database(
        target,
        **load_anchors(trusted_head, trusted_keys, roster),
        witnesses=witnesses,
        jobs=jobs,
        on_progress=on_progress,
    )
