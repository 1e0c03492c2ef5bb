"""The explorer's copy of one ledger: entries, checkpoints and cosignatures in a private SQLite file.

A run's ledger may hold a million entries and live in PostgreSQL or in an exported bundle. The
explorer reads it once, in the same pass that verifies it (:meth:`LedgerIndex.recording` passes
the rows through unchanged), into a SQLite file of its own, indexed by type, round, site and
actor, and keeps the RFC 9162 Merkle tree of the entries in memory. Every page is then a few
indexed queries (:meth:`LedgerIndex.page` pages by sequence number, never by OFFSET) and an
inclusion proof is O(log n) lookups, whatever the ledger's size and wherever it came from.

The copy is the snapshot that was verified: what a page shows is what the banner vouches for.
It is a cache, never a source of truth: it lives in a temporary folder removed at exit, and no
write ever goes back to the ledger. Rows that fail verification (a tampered entry) are copied
too, so the pages can show them; their payload may not even parse, and then indexes as an entry
with no round or site.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pharmafl.audit.merkle import MerkleTree
from pharmafl.audit.records import Entry, asserted
from pharmafl.compliance.trail import locate

PAGE_MAX = 500
_SCHEMA = """
CREATE TABLE entries (seq INTEGER PRIMARY KEY, ts TEXT, actor TEXT, type TEXT, round INTEGER, site TEXT,
                      signed_by TEXT, payload TEXT, prev_hash TEXT, entry_hash TEXT, signature TEXT);
CREATE TABLE checkpoints (tree_size INTEGER PRIMARY KEY, root_hash TEXT, ts TEXT, signer TEXT, signature TEXT);
CREATE TABLE cosignatures (tree_size INTEGER, witness TEXT, timestamp INTEGER, signature TEXT);
"""
_INDEXES = """
CREATE INDEX entries_type ON entries (type, seq);
CREATE INDEX entries_round ON entries (round, seq);
CREATE INDEX entries_site ON entries (site, seq);
CREATE INDEX entries_site_type ON entries (site, type, seq);
CREATE INDEX entries_actor ON entries (actor, seq);
CREATE INDEX cosignatures_size ON cosignatures (tree_size);
"""
_COLUMNS = "seq, ts, actor, type, payload, prev_hash, entry_hash, signature"


@dataclass(frozen=True)
class Query:
    """A trail filter: every set field must match; ``text`` is a case-insensitive substring of the
    entry's type, actor or canonical payload (ASCII case folding, as SQLite's LIKE does)."""

    round: int | None = None
    site: str | None = None
    actor: str | None = None
    type: str | None = None
    text: str | None = None

    def where(self) -> tuple[str, list]:
        clauses, args = [], []
        for column in ("round", "site", "actor", "type"):
            value = getattr(self, column)
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        if self.text:
            like = "%" + self.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            clauses.append("(payload LIKE ? ESCAPE '\\' OR type LIKE ? ESCAPE '\\' OR actor LIKE ? ESCAPE '\\')")
            args += [like, like, like]
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args

    def as_params(self) -> dict[str, str]:
        return {k: str(v) for k, v in vars(self).items() if v not in (None, "")}


@dataclass(frozen=True)
class Page:
    """One page of the trail: ``entries`` in ascending order; ``newer``/``older`` are the keys of
    the next and previous pages (None at either end); ``total`` is None when counting would scan."""

    entries: list[Entry]
    older: int | None
    newer: int | None
    total: int | None


def _located(actor: str, payload: str) -> tuple[str | None, int | None, str | None]:
    """``(signed_by, round, site)`` of a row; a payload that is not a well-formed entry has none of them."""
    try:
        who, data = asserted(Entry(0, "", actor, "", payload, "", "", ""))
        return locate(actor, who, data)
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return None, None, None


class LedgerIndex:
    """Open with :meth:`create`; fill with :meth:`recording` and :meth:`finish`; then query.

    Thread-safe: the web server calls it from its worker threads (one connection, one lock)."""

    def __init__(self, path: Path):
        self.path = path
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self.tree = MerkleTree()
        self.size = 0
        self._facets: dict[str, list] | None = None

    @classmethod
    def create(cls, folder: Path) -> LedgerIndex:
        index = cls(folder / "explorer-index.sqlite")
        index._conn.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + _SCHEMA)
        index._conn.execute("BEGIN")
        return index

    def recording(self, rows: Iterable[tuple]) -> Iterator[tuple]:
        """``rows`` unchanged (``(seq, ts, actor, type, payload, prev_hash, entry_hash, signature)``),
        each copied into the index as it passes; call again on the rest after a verifier stops early."""
        batch: list[tuple] = []
        for row in rows:
            seq, ts, actor, type_, payload, prev_hash, entry_hash, signature = row[:8]
            signed_by, rnd, site = _located(actor, payload) if isinstance(payload, str) else (None, None, None)
            batch.append((seq, ts, actor, type_, rnd, site, signed_by, payload, prev_hash, entry_hash, signature))
            if len(batch) >= 5000:
                self._insert(batch)
            yield row
        self._insert(batch)

    def _insert(self, batch: list[tuple]) -> None:
        self._conn.executemany("INSERT OR IGNORE INTO entries VALUES (?,?,?,?,?,?,?,?,?,?,?)", batch)
        for row in batch:
            try:
                self.tree.append(Entry(*row[:4], row[7], *row[8:]).leaf_hash())
            except ValueError:  # a tampered row whose hashes are not hex: a leaf nobody can prove
                self.tree.append(b"\x00" * 32)
        self.size += len(batch)
        batch.clear()

    def drain(self, rows: Iterator[tuple]) -> None:
        """Copy what a verifier left unread of a :meth:`recording` iterator."""
        for _ in rows:
            pass

    def finish(self, checkpoints: Sequence[dict], cosignatures: Sequence[dict]) -> LedgerIndex:
        self._conn.executemany(
            "INSERT OR IGNORE INTO checkpoints VALUES (:tree_size, :root_hash, :ts, :signer, :signature)",
            [c for c in checkpoints if isinstance(c, dict)],
        )
        self._conn.executemany(
            "INSERT INTO cosignatures VALUES (:tree_size, :witness, :timestamp, :signature)",
            [c for c in cosignatures if isinstance(c, dict)],
        )
        self._conn.execute("COMMIT")
        self._conn.executescript(_INDEXES + "ANALYZE;")
        return self

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- queries -------------------------------------------------------------------------------

    def _rows(self, sql: str, args: Sequence = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    def entry(self, seq: int) -> Entry | None:
        rows = self._rows(f"SELECT {_COLUMNS} FROM entries WHERE seq = ?", (seq,))
        return Entry(*rows[0]) if rows else None

    def entries(self, types: Iterable[str] = (), rounds: tuple[int, int] | None = None) -> list[Entry]:
        """Entries of ``types`` (all types when empty), optionally with ``rounds[0] <= round <= rounds[1]``."""
        clauses, args, hint = [], [], ""
        types = list(types)
        if types:  # by the type index, then in order (else SQLite may walk every row in seq order)
            clauses.append(f"type IN ({','.join('?' * len(types))})")
            args += types
            hint = " INDEXED BY entries_type"
        if rounds is not None:  # a few rounds: by the round index
            clauses.append("round BETWEEN ? AND ?")
            args += list(rounds)
            hint = " INDEXED BY entries_round"
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        rows = sorted(self._rows(f"SELECT {_COLUMNS} FROM entries{hint}{where}", args))
        return [Entry(*r) for r in rows]

    def user_entries(self, types: Iterable[str]) -> list[Entry]:
        """Entries of ``types`` or by a user (``user:*``), in order: what the account replay reads."""
        types = list(types)
        sql = (
            f"SELECT {_COLUMNS} FROM entries WHERE type IN ({','.join('?' * len(types))}) "
            "OR (actor >= 'user:' AND actor < 'user;') ORDER BY seq"
        )
        return [Entry(*r) for r in self._rows(sql, types)]

    def page(self, query: Query, *, after: int | None = None, before: int | None = None, limit: int = 50) -> Page:
        """The entries matching ``query`` with seq > ``after`` (or < ``before``, the page before it;
        neither: the first page), at most ``limit`` (1..500)."""
        limit = max(1, min(limit, PAGE_MAX))
        where, args = query.where()
        glue = " AND " if where else " WHERE "
        if before is not None:
            rows = self._rows(
                f"SELECT {_COLUMNS} FROM entries{where}{glue}seq < ? ORDER BY seq DESC LIMIT ?", [*args, before, limit]
            )[::-1]
        else:
            start = -1 if after is None else after
            rows = self._rows(
                f"SELECT {_COLUMNS} FROM entries{where}{glue}seq > ? ORDER BY seq LIMIT ?", [*args, start, limit]
            )
        entries = [Entry(*r) for r in rows]
        older = newer = None
        if entries:
            first, last = entries[0].seq, entries[-1].seq
            older = first if self._rows(f"SELECT 1 FROM entries{where}{glue}seq < ? LIMIT 1", [*args, first]) else None
            newer = last if self._rows(f"SELECT 1 FROM entries{where}{glue}seq > ? LIMIT 1", [*args, last]) else None
        return Page(entries, older, newer, self.count(query))

    def count(self, query: Query) -> int | None:
        """How many entries match; None for a text search (that would read every payload)."""
        if query.text:
            return None
        if query == Query():
            return self.size
        where, args = query.where()
        return self._rows(f"SELECT COUNT(*) FROM entries{where}", args)[0][0]

    def facets(self) -> dict[str, list]:
        """The values a filter can take: types, actors and sites with their counts, the round range
        (computed once: the copy never changes after :meth:`finish`)."""
        if self._facets is None:
            self._facets = self._count_facets()
        return self._facets

    def _count_facets(self) -> dict[str, list]:
        out = {
            column: self._rows(
                f"SELECT {column}, COUNT(*) FROM entries WHERE {column} IS NOT NULL GROUP BY {column} ORDER BY {column}"
            )
            for column in ("type", "actor", "site")
        }
        out["rounds"] = list(self._rows("SELECT MIN(round), MAX(round) FROM entries")[0])
        return out

    def checkpoints(self) -> list[dict]:
        cols = ("tree_size", "root_hash", "ts", "signer", "signature")
        return [dict(zip(cols, r)) for r in self._rows(f"SELECT {', '.join(cols)} FROM checkpoints ORDER BY tree_size")]

    def cosignatures(self, tree_size: int | None = None) -> list[dict]:
        cols = ("tree_size", "witness", "timestamp", "signature")
        where, args = ("WHERE tree_size = ?", [tree_size]) if tree_size is not None else ("", [])
        sql = f"SELECT {', '.join(cols)} FROM cosignatures {where} ORDER BY tree_size, witness"
        return [dict(zip(cols, r)) for r in self._rows(sql, args)]

    def cosigned_sizes(self) -> dict[int, int]:
        """Tree size -> number of cosignatures stored for that checkpoint."""
        return dict(self._rows("SELECT tree_size, COUNT(*) FROM cosignatures GROUP BY tree_size"))
