"""The user table, in the same database as the ledger (SQLite ``ledger.db`` or PostgreSQL).

``compliance_users``   user_id (primary key) · full_name · role · status · failed_logins ·
                       password (scrypt hash, JSON) · sealed_key (JSON, null until the user
                       sets their own password) · public_key · password_set_at ·
                       must_change · created_at · created_by · created_seq (the seq of the
                       account's ``user_created`` entry)
``compliance_policy``  id = 1 · policy (JSON of :class:`PasswordPolicy`)

Users are mutable state (failure counters, password age, status); the ledger is the
history. Every change here is written **in the same transaction** as the ledger entry that
records it: the writes take the ledger transaction's connection (``conn``, from the
ledger's ``on_commit`` hook, :mod:`pharmafl.compliance.access`), so a crash leaves both or
neither. These tables are not append-only and are not what a regulator verifies; they hold
no secret in the clear.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Boolean, Column, Integer, String, Text, select
from sqlalchemy.engine import Connection
from sqlmodel import Field, SQLModel

from pharmafl.audit.evidence import display_key
from pharmafl.audit.storage import Storage
from pharmafl.compliance.credentials import PasswordPolicy
from pharmafl.compliance.errors import ComplianceError
from pharmafl.compliance.roles import Role

USERS = "compliance_users"
POLICY = "compliance_policy"
_USER_ID = re.compile(r"[a-z][a-z0-9._-]{1,31}")
STATUSES = ("active", "locked", "disabled")


class UserRow(SQLModel, table=True):
    __tablename__ = USERS
    user_id: str = Field(sa_column=Column(String(32), primary_key=True))
    full_name: str = Field(sa_column=Column(String(200), nullable=False))
    role: str = Field(sa_column=Column(String(32), nullable=False))
    status: str = Field(sa_column=Column(String(16), nullable=False))
    failed_logins: int = Field(sa_column=Column(Integer, nullable=False))
    password: str = Field(sa_column=Column(Text, nullable=False))
    sealed_key: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    public_key: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    password_set_at: str = Field(sa_column=Column(String(27), nullable=False))
    must_change: bool = Field(sa_column=Column(Boolean, nullable=False))
    created_at: str = Field(sa_column=Column(String(27), nullable=False))
    created_by: str = Field(sa_column=Column(String(64), nullable=False))
    created_seq: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))


class PolicyRow(SQLModel, table=True):
    __tablename__ = POLICY
    id: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    policy: str = Field(sa_column=Column(Text, nullable=False))


_TABLES = [UserRow.__table__, PolicyRow.__table__]
_COLUMNS = [c.name for c in UserRow.__table__.columns]


@dataclass(frozen=True)
class User:
    """A user as stored (the password hash and sealed key as parsed JSON)."""

    user_id: str
    full_name: str
    role: Role
    status: str
    failed_logins: int
    password: dict
    sealed_key: dict | None
    public_key: str | None
    password_set_at: str
    must_change: bool
    created_at: str
    created_by: str
    created_seq: int | None = None

    @property
    def actor(self) -> str:
        return actor_of(self.user_id)

    def public_view(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "full_name": self.full_name,
            "role": self.role.value,
            "status": self.status,
            "enrolled": self.sealed_key is not None,
            "password_set_at": self.password_set_at,
        }


def check_user_id(user_id: str) -> str:
    if not isinstance(user_id, str) or not _USER_ID.fullmatch(user_id):
        raise ComplianceError(
            f"user id {user_id!r} is not valid: 2-32 characters, lowercase letters, digits and "
            "'._-', starting with a letter (e.g. 'alice', 'qa.lead')"
        )
    return user_id


def actor_of(user_id: str) -> str:
    """The ledger actor of a user: ``user:<id>``."""
    return f"user:{user_id}"


def _to_user(row: Any) -> User:
    d = dict(zip(_COLUMNS, row))
    return User(
        d["user_id"],
        d["full_name"],
        Role(d["role"]),
        d["status"],
        d["failed_logins"],
        json.loads(d["password"]),
        json.loads(d["sealed_key"]) if d["sealed_key"] else None,
        d["public_key"],
        d["password_set_at"],
        bool(d["must_change"]),
        d["created_at"],
        d["created_by"],
        d["created_seq"],
    )


def _to_row(user: User) -> dict:
    return {
        "user_id": user.user_id,
        "full_name": user.full_name,
        "role": user.role.value,
        "status": user.status,
        "failed_logins": user.failed_logins,
        "password": json.dumps(user.password, sort_keys=True),
        "sealed_key": json.dumps(user.sealed_key, sort_keys=True) if user.sealed_key else None,
        "public_key": user.public_key,
        "password_set_at": user.password_set_at,
        "must_change": user.must_change,
        "created_at": user.created_at,
        "created_by": user.created_by,
        "created_seq": user.created_seq,
    }


class UserStore:
    """CRUD on the two tables through the ledger's :class:`~pharmafl.audit.storage.Storage`;
    writes take a connection whose transaction is the ledger entry's."""

    def __init__(self, storage: Storage):
        self.storage = storage

    def create_schema(self) -> None:
        with self.storage.write() as conn:
            SQLModel.metadata.create_all(conn, tables=_TABLES)

    def exists(self) -> bool:
        with self.storage.engine.connect() as conn:
            return self.storage.engine.dialect.has_table(conn, USERS)

    def get(self, user_id: str) -> User | None:
        if not self.exists():
            return None
        with self.storage.read() as conn:
            row = conn.execute(select(UserRow.__table__).where(UserRow.__table__.c.user_id == user_id)).first()
        return None if row is None else _to_user(row)

    def all(self) -> list[User]:
        if not self.exists():
            return []
        with self.storage.read() as conn:
            rows = conn.execute(select(UserRow.__table__).order_by(UserRow.__table__.c.user_id)).all()
        return [_to_user(r) for r in rows]

    def insert(self, conn: Connection, user: User) -> None:
        """Add ``user`` in the transaction of ``conn`` (the ledger's, through ``on_commit``);
        refuses, inside that transaction, an id or printed name another account holds."""
        table = UserRow.__table__
        for row in conn.execute(select(table.c.user_id, table.c.full_name)):
            if row[0] == user.user_id or display_key(row[1]) == display_key(user.full_name):
                raise ComplianceError(
                    f"user {user.user_id!r} ({user.full_name!r}) was created meanwhile, or its "
                    f"printed name is {row[0]!r}'s: ids and printed names are never reused"
                )
        conn.execute(table.insert(), [_to_row(user)])

    def require_empty(self, conn: Connection) -> None:
        """Refuse, inside the transaction of ``conn``, if any account exists (bootstrap races)."""
        if conn.execute(select(UserRow.__table__.c.user_id)).first() is not None:
            raise ComplianceError("users were initialised meanwhile by another `pharmafl users init`")

    def save(self, conn: Connection, user: User) -> None:
        """Replace the stored row of ``user.user_id`` (it must exist) in the transaction of ``conn``."""
        table = UserRow.__table__
        done = conn.execute(table.update().where(table.c.user_id == user.user_id).values(**_to_row(user)))
        if done.rowcount != 1:
            raise ComplianceError(f"user {user.user_id!r} vanished from {USERS} while being updated")

    def policy(self) -> PasswordPolicy | None:
        if not self.exists():
            return None
        with self.storage.read() as conn:
            row = conn.execute(select(PolicyRow.__table__.c.policy).where(PolicyRow.__table__.c.id == 1)).first()
        return None if row is None else PasswordPolicy(**json.loads(row[0]))

    def set_policy(self, conn: Connection, policy: PasswordPolicy) -> None:
        table = PolicyRow.__table__
        conn.execute(table.delete().where(table.c.id == 1))
        conn.execute(table.insert(), [{"id": 1, "policy": json.dumps(policy.as_dict(), sort_keys=True)}])
