"""Where entries live: SQLModel tables on SQLite (embedded default) or PostgreSQL.

Three tables, the same on both back ends:

``ledger_entries``       seq (primary key) · ts · actor · type · payload · prev_hash ·
                         entry_hash · signature
``ledger_checkpoints``   tree_size (primary key) · root_hash · ts · signer · signature
``ledger_cosignatures``  tree_size · witness (primary key together) · timestamp ·
                         signature: a witness's C2SP ``cosignature/v1`` of a checkpoint

The database itself refuses what the ledger must never do, so that a bug or a careless
``psql`` session cannot quietly rewrite history:

* ``UPDATE`` and ``DELETE`` on any of the tables abort (triggers; on PostgreSQL also
  ``TRUNCATE``, and ``UPDATE, DELETE, TRUNCATE`` are revoked from ``PUBLIC``);
* an inserted entry must carry the ``entry_hash`` of the row at ``seq - 1`` as its
  ``prev_hash`` (64 zeros at seq 0); with the primary key and no deletions, the sequence
  numbers stay 0..n-1 without gaps (SQLite also checks ``seq = max(seq) + 1``, because its
  ``INSERT OR REPLACE`` deletes the row it replaces without firing delete triggers); a
  checkpoint may not cover entries that do not exist or replace another; a cosignature
  must name a stored checkpoint and may not replace another.

The primary key on ``seq`` is what stops two writers forking the chain: only one row can
ever hold a given sequence number. Writers serialise on a write lock (SQLite
``BEGIN IMMEDIATE``; PostgreSQL ``LOCK TABLE ... SHARE ROW EXCLUSIVE``, which readers do
not wait for) and retry if they still lose a race (:mod:`pharmafl.audit.ledger`). None of
this stops the database owner, who can drop triggers; signatures, checkpoints and a
trusted head (``verify --trusted-head``) are what catch that.

SQLite runs in WAL mode with ``synchronous=FULL``: a commit is on disk when ``append``
returns, and a process killed mid-append leaves the database as it was before that
transaction (tested with SIGKILL). A new ``ledger.db`` is created mode 0600; SQLite gives
its ``-wal`` and ``-shm`` files the database file's mode.

A PostgreSQL URL may select a schema through libpq options, e.g.
``postgresql+psycopg://u:p@host/db?options=-csearch_path%3Dledger_run7``.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from sqlalchemy import BigInteger, Column, String, Text, create_engine, event, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import OperationalError
from sqlmodel import Field, SQLModel

from pharmafl.audit.errors import LedgerError
from pharmafl.audit.records import GENESIS_PREV_HASH, Checkpoint, Cosignature, Entry

ENTRIES = "ledger_entries"
CHECKPOINTS = "ledger_checkpoints"
COSIGNATURES = "ledger_cosignatures"
ENTRY_COLUMNS = ("seq", "ts", "actor", "type", "payload", "prev_hash", "entry_hash", "signature")
CHECKPOINT_COLUMNS = ("tree_size", "root_hash", "ts", "signer", "signature")
COSIGNATURE_COLUMNS = ("tree_size", "witness", "timestamp", "signature")
DB_MODE = 0o600


class LedgerEntryRow(SQLModel, table=True):
    """One row of ``ledger_entries`` (see :class:`pharmafl.audit.records.Entry`)."""

    __tablename__ = ENTRIES
    seq: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    ts: str = Field(sa_column=Column(String(27), nullable=False))
    actor: str = Field(sa_column=Column(String(128), nullable=False))
    type: str = Field(sa_column=Column(String(128), nullable=False))
    payload: str = Field(sa_column=Column(Text, nullable=False))
    prev_hash: str = Field(sa_column=Column(String(64), nullable=False))
    entry_hash: str = Field(sa_column=Column(String(64), nullable=False))
    signature: str = Field(sa_column=Column(String(128), nullable=False))


class LedgerCheckpointRow(SQLModel, table=True):
    """One row of ``ledger_checkpoints`` (see :class:`pharmafl.audit.records.Checkpoint`)."""

    __tablename__ = CHECKPOINTS
    tree_size: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    root_hash: str = Field(sa_column=Column(String(64), nullable=False))
    ts: str = Field(sa_column=Column(String(27), nullable=False))
    signer: str = Field(sa_column=Column(String(128), nullable=False))
    signature: str = Field(sa_column=Column(String(128), nullable=False))


class LedgerCosignatureRow(SQLModel, table=True):
    """One row of ``ledger_cosignatures`` (see :class:`pharmafl.audit.records.Cosignature`)."""

    __tablename__ = COSIGNATURES
    tree_size: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    witness: str = Field(sa_column=Column(String(128), primary_key=True))
    timestamp: int = Field(sa_column=Column(BigInteger, nullable=False))
    signature: str = Field(sa_column=Column(String(128), nullable=False))


_TABLES = [LedgerEntryRow.__table__, LedgerCheckpointRow.__table__, LedgerCosignatureRow.__table__]
_APPEND_ONLY = (ENTRIES, CHECKPOINTS, COSIGNATURES)

# Registrations are few; a partial index finds them without scanning the whole ledger.
_ACTOR_KEY_INDEX = f"CREATE INDEX IF NOT EXISTS {ENTRIES}_actor_keys ON {ENTRIES} (seq) WHERE type = 'actor_key'"

_SQLITE_GUARDS = [
    f"""CREATE TRIGGER IF NOT EXISTS {t}_no_{op.lower()} BEFORE {op} ON {t}
        BEGIN SELECT RAISE(ABORT, 'pharmafl ledger: {t} is append-only; {op} refused'); END"""
    for t in _APPEND_ONLY
    for op in ("UPDATE", "DELETE")
] + [
    f"""CREATE TRIGGER IF NOT EXISTS {ENTRIES}_chain BEFORE INSERT ON {ENTRIES}
        WHEN NEW.seq IS NOT (SELECT COALESCE(MAX(seq), -1) + 1 FROM {ENTRIES})  -- also stops INSERT OR REPLACE
          OR NEW.prev_hash IS NOT (CASE WHEN NEW.seq = 0 THEN '{GENESIS_PREV_HASH}'
               ELSE (SELECT entry_hash FROM {ENTRIES} WHERE seq = NEW.seq - 1) END)
        BEGIN SELECT RAISE(ABORT, 'pharmafl ledger: entry does not extend the chain head'); END""",
    f"""CREATE TRIGGER IF NOT EXISTS {CHECKPOINTS}_covered BEFORE INSERT ON {CHECKPOINTS}
        WHEN NEW.tree_size > (SELECT COALESCE(MAX(seq), -1) + 1 FROM {ENTRIES})
          OR EXISTS (SELECT 1 FROM {CHECKPOINTS} WHERE tree_size = NEW.tree_size)  -- INSERT OR REPLACE
        BEGIN SELECT RAISE(ABORT, 'pharmafl ledger: checkpoint covers missing entries'); END""",
    f"""CREATE TRIGGER IF NOT EXISTS {COSIGNATURES}_checkpointed BEFORE INSERT ON {COSIGNATURES}
        WHEN NOT EXISTS (SELECT 1 FROM {CHECKPOINTS} WHERE tree_size = NEW.tree_size)
          OR EXISTS (SELECT 1 FROM {COSIGNATURES}
                     WHERE tree_size = NEW.tree_size AND witness = NEW.witness)  -- INSERT OR REPLACE
        BEGIN SELECT RAISE(ABORT, 'pharmafl ledger: cosignature of a missing checkpoint or a replacement'); END""",
    _ACTOR_KEY_INDEX,
]

_PG_GUARDS = (
    [
        _ACTOR_KEY_INDEX,
        """CREATE OR REPLACE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN RAISE EXCEPTION 'pharmafl ledger: % is append-only; % refused', TG_TABLE_NAME, TG_OP;
       END $$""",
        f"""CREATE OR REPLACE FUNCTION ledger_check_chain() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
         IF NEW.seq < 0 OR NEW.prev_hash IS DISTINCT FROM (CASE WHEN NEW.seq = 0 THEN '{GENESIS_PREV_HASH}'
              ELSE (SELECT entry_hash FROM {ENTRIES} WHERE seq = NEW.seq - 1) END) THEN
           RAISE EXCEPTION 'pharmafl ledger: entry % does not extend the chain head', NEW.seq
             USING ERRCODE = 'integrity_constraint_violation';
         END IF;
         RETURN NEW;
       END $$""",
        f"""CREATE OR REPLACE FUNCTION ledger_check_checkpoint() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
         IF NEW.tree_size > (SELECT COALESCE(MAX(seq), -1) + 1 FROM {ENTRIES}) THEN
           RAISE EXCEPTION 'pharmafl ledger: checkpoint covers missing entries'
             USING ERRCODE = 'integrity_constraint_violation';
         END IF;
         RETURN NEW;
       END $$""",
        f"""CREATE OR REPLACE FUNCTION ledger_check_cosignature() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
         IF NOT EXISTS (SELECT 1 FROM {CHECKPOINTS} WHERE tree_size = NEW.tree_size) THEN
           RAISE EXCEPTION 'pharmafl ledger: cosignature of a missing checkpoint %', NEW.tree_size
             USING ERRCODE = 'integrity_constraint_violation';
         END IF;
         RETURN NEW;
       END $$""",
    ]
    + [
        stmt
        for t in _APPEND_ONLY
        for stmt in (
            f"DROP TRIGGER IF EXISTS {t}_append_only ON {t}",
            f"""CREATE TRIGGER {t}_append_only BEFORE UPDATE OR DELETE ON {t}
            FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change()""",
            f"DROP TRIGGER IF EXISTS {t}_no_truncate ON {t}",
            f"""CREATE TRIGGER {t}_no_truncate BEFORE TRUNCATE ON {t}
            FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change()""",
            f"REVOKE UPDATE, DELETE, TRUNCATE ON {t} FROM PUBLIC",
        )
    ]
    + [
        f"DROP TRIGGER IF EXISTS {ENTRIES}_chain ON {ENTRIES}",
        f"""CREATE TRIGGER {ENTRIES}_chain BEFORE INSERT ON {ENTRIES}
        FOR EACH ROW EXECUTE FUNCTION ledger_check_chain()""",
        f"DROP TRIGGER IF EXISTS {CHECKPOINTS}_covered ON {CHECKPOINTS}",
        f"""CREATE TRIGGER {CHECKPOINTS}_covered BEFORE INSERT ON {CHECKPOINTS}
        FOR EACH ROW EXECUTE FUNCTION ledger_check_checkpoint()""",
        f"DROP TRIGGER IF EXISTS {COSIGNATURES}_checkpointed ON {COSIGNATURES}",
        f"""CREATE TRIGGER {COSIGNATURES}_checkpointed BEFORE INSERT ON {COSIGNATURES}
        FOR EACH ROW EXECUTE FUNCTION ledger_check_cosignature()""",
    ]
)


def resolve_target(target: str | os.PathLike) -> str:
    """A database URL for ``target``: a URL as is, a run directory's ``ledger.db``, or a path."""
    text_target = os.fspath(target)
    if text_target.startswith(("postgresql:", "postgresql+", "postgres:", "sqlite:")):
        return text_target
    path = Path(text_target)
    if path.is_dir():
        path = path / "ledger.db"
    return f"sqlite:///{path.resolve()}"


class Storage:
    """The ledger tables behind one SQLAlchemy engine; no hashing or signing here."""

    def __init__(self, url: str):
        self.url = url
        self.dialect = "postgresql" if url.startswith("postgres") else "sqlite"
        self.engine: Engine = create_engine(url, future=True, pool_pre_ping=self.dialect == "postgresql")
        self._schema_ready = False
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)

    def exists(self) -> bool:
        if self.dialect == "sqlite":
            path = self.url.removeprefix("sqlite:///")
            if not Path(path).is_file():
                return False
        with self.engine.connect() as conn:
            self._schema_ready = self.engine.dialect.has_table(conn, ENTRIES)
        return self._schema_ready

    def create_schema(self) -> None:
        """Create the tables and their guards (idempotent)."""
        if self.dialect == "sqlite":
            _create_private(Path(self.url.removeprefix("sqlite:///")))
        with self.write() as conn:
            if self.dialect == "postgresql":  # serialise concurrent creators of the schema
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext('pharmafl-ledger-schema'))")
            SQLModel.metadata.create_all(conn, tables=_TABLES)
            for stmt in _SQLITE_GUARDS if self.dialect == "sqlite" else _PG_GUARDS:
                conn.exec_driver_sql(stmt if self.dialect == "sqlite" else stmt.replace("%", "%%"))
        self._schema_ready = True

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """A transaction holding the write lock; commits on success, rolls back on error. A full
        disk is a :class:`LedgerError` saying so (retrying the transaction cannot help)."""
        try:
            with self.engine.connect() as conn:
                if self.dialect == "sqlite":
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                elif self._schema_ready:
                    conn.exec_driver_sql(f"LOCK TABLE {ENTRIES} IN SHARE ROW EXCLUSIVE MODE")
                try:
                    yield conn
                except BaseException:
                    conn.rollback()
                    raise
                conn.commit()
        except OperationalError as err:
            if disk_full(err):
                raise LedgerError(
                    f"the disk holding {describe(self.url)} is full ({getattr(err, 'orig', err)}); nothing of "
                    "this write was recorded: free space, then continue the run with pharmafl resume"
                ) from err
            raise

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A read transaction: one consistent snapshot (WAL readers never block writers)."""
        with self.engine.connect() as conn:
            if self.dialect == "sqlite":
                conn.exec_driver_sql("BEGIN")
            else:
                conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            try:
                yield conn
            finally:
                conn.rollback()

    @staticmethod
    def head(conn: Connection) -> tuple[int, str, str | None]:
        """``(size, last entry_hash, last ts)``; ``(0, GENESIS_PREV_HASH, None)`` when empty."""
        row = conn.exec_driver_sql(f"SELECT seq, entry_hash, ts FROM {ENTRIES} ORDER BY seq DESC LIMIT 1").first()
        return (0, GENESIS_PREV_HASH, None) if row is None else (row[0] + 1, row[1], row[2])

    @staticmethod
    def insert_entries(conn: Connection, entries: Sequence[Entry]) -> None:
        if entries:
            conn.execute(LedgerEntryRow.__table__.insert(), [e.__dict__ for e in entries])

    @staticmethod
    def insert_checkpoint(conn: Connection, cp: Checkpoint) -> None:
        conn.execute(LedgerCheckpointRow.__table__.insert(), [cp.__dict__])

    @staticmethod
    def insert_cosignatures(conn: Connection, cosignatures: Sequence[Cosignature]) -> None:
        if cosignatures:
            rows = [{name: getattr(c, name) for name in COSIGNATURE_COLUMNS} for c in cosignatures]
            conn.execute(LedgerCosignatureRow.__table__.insert(), rows)

    @staticmethod
    def entries(
        conn: Connection, start: int = 0, stop: int | None = None, type_: str | None = None, chunk: int = 10_000
    ) -> Iterator[Entry]:
        """Entries with ``start <= seq < stop`` (optionally of one type), in order, chunked."""
        cols = ", ".join(ENTRY_COLUMNS)
        where = " AND type = :type" if type_ else ""
        while stop is None or start < stop:
            limit = chunk if stop is None else min(chunk, stop - start)
            rows = conn.execute(
                text(f"SELECT {cols} FROM {ENTRIES} WHERE seq >= :start{where} ORDER BY seq LIMIT :n"),
                {"start": start, "n": limit, "type": type_},
            ).all()
            for row in rows:
                yield Entry(*row)
            if len(rows) < limit:
                return
            start = rows[-1][0] + 1

    @staticmethod
    def checkpoints(conn: Connection) -> list[Checkpoint]:
        cols = ", ".join(CHECKPOINT_COLUMNS)
        rows = conn.exec_driver_sql(f"SELECT {cols} FROM {CHECKPOINTS} ORDER BY tree_size").all()
        return [Checkpoint(*row) for row in rows]

    @staticmethod
    def cosignatures(conn: Connection) -> list[Cosignature]:
        """Every stored cosignature, by ``(tree_size, witness)``; none in a ledger written
        before cosignatures existed (the table is added when it is next opened for writing)."""
        if not conn.dialect.has_table(conn, COSIGNATURES):
            return []
        cols = ", ".join(COSIGNATURE_COLUMNS)
        rows = conn.exec_driver_sql(f"SELECT {cols} FROM {COSIGNATURES} ORDER BY tree_size, witness").all()
        return [Cosignature(*row) for row in rows]

    def dispose(self) -> None:
        self.engine.dispose()


def _create_private(path: Path) -> None:
    """Create an empty database file readable by its owner only (if it does not exist yet)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, DB_MODE)
    except FileExistsError:
        return
    os.fchmod(fd, DB_MODE)  # whatever the umask
    os.close(fd)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    dbapi_conn.isolation_level = None  # transactions are begun explicitly (BEGIN IMMEDIATE)
    cur = dbapi_conn.cursor()
    # busy_timeout first: switching to WAL takes a lock too, and under contention (many writers
    # opening at once on a loaded machine) it must wait, not fail with "database is locked"
    for pragma in ("busy_timeout=60000", "journal_mode=WAL", "synchronous=FULL", "recursive_triggers=ON"):
        cur.execute(f"PRAGMA {pragma}")
    cur.close()


def describe(url: str) -> str:
    """``url`` with any password masked, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only used to build a message
        return url


def refuse_missing(storage: Storage) -> None:
    if not storage.exists():
        raise LedgerError(
            f"no ledger at {describe(storage.url)}: the ledger_entries table does not exist; "
            "check the path or URL (a run directory, its ledger.db, or the run's ledger.url)"
        )


def disk_full(err: Exception) -> bool:
    """SQLite's SQLITE_FULL or PostgreSQL's disk_full (SQLSTATE 53100), or ENOSPC underneath."""
    orig = getattr(err, "orig", err)
    return (
        "database or disk is full" in str(orig)
        or getattr(orig, "sqlstate", None) == "53100"
        or getattr(orig, "errno", None) == errno.ENOSPC
    )
