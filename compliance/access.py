"""Access control: who may do what, authenticated with both credential components, all ledgered.

:class:`AccessControl` opens a run's ledger together with the user table in the same
database. Every user action is a ledger entry, and the user table is changed **in the same
transaction** (the ledger's ``on_commit`` hook): a crash leaves both or neither. Every
check runs before anything is written, so a refused action leaves only its refusal entry
and never a half-made change.

A user's key is never registered by the registrar: it is enrolled by its owner
(:meth:`AccessControl.change_password`, the first time) with an ``actor_key`` entry signed
by the new key that answers the enrolment commitment of the account's ``user_created``
(:mod:`pharmafl.compliance.enrolment`); the first admin self-enrols at :meth:`init`.

=====================  =================  ==================================================
entry type             signed by          when
=====================  =================  ==================================================
``actor_key``          the user           her enrolment (first ``change_password``; ``init``)
``user_created``       the admin          ``create_user`` (the first admin: by itself, at ``init``)
``password_changed``   the user           ``change_password`` (``enrolled_key``: the first one)
``user_login``         the user           ``login`` succeeded (both components checked)
``login_failed``       ``access-control`` unknown user or wrong password (counts towards lockout)
``user_locked``        ``access-control`` the failure that reached ``max_failed_logins``
``login_refused``      ``access-control`` locked, disabled, not enrolled, password expired,
                                         account changed since the session logged in
``action_refused``     the user           an authenticated user's role may not take the action
``user_role_changed``  the admin          ``set_role``
``user_unlocked``      the admin          ``unlock``
``user_disabled``      the admin          ``disable``
``policy_changed``     the admin          ``set_policy``
=====================  =================  ==================================================

``access-control`` is a system actor whose key lives in the run's key store, like the
registrar's (``server``): refusals before authentication cannot be signed by the user,
whose key only their password opens. Opening the ledger for writing needs the key-store
passphrase (``$PHARMAFL_KEY_PASSPHRASE``): the system actors sign refusals and
checkpoints. That passphrase is not enough to act as a user: it opens no user key and
makes no enrolment.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pharmafl.audit.errors import LedgerError
from pharmafl.audit.evidence import Accounts, display_key
from pharmafl.audit.keys import DEFAULT_SCRYPT_N, KeyStore
from pharmafl.audit.ledger import Ledger, utc_now
from pharmafl.audit.records import Entry, format_ts
from pharmafl.audit.storage import Storage, refuse_missing, resolve_target
from pharmafl.audit.verify import VerificationError
from pharmafl.compliance import enrolment
from pharmafl.compliance.credentials import (
    PasswordPolicy,
    check_new_password,
    hash_password,
    open_key,
    password_matches,
    public_hex,
    seal_key,
)
from pharmafl.compliance.errors import AuthenticationError, AuthorityError, ComplianceError
from pharmafl.compliance.roles import SIGNING_ROLES, Role, may, parse_role, roles_for
from pharmafl.compliance.users import User, UserStore, actor_of, check_user_id

ACCESS_CONTROL = "access-control"
Item = tuple[str, str, Mapping[str, Any]]
TableChange = Callable[[Any, list[Entry]], None]  # (conn, entries) -> None, in the ledger's transaction


class SessionKeys:
    """A ledger KeySource: unlocked users' keys, plus the run key store's system actors only
    (never creates a key file for a user)."""

    def __init__(self, system: KeyStore, system_actors: Iterable[str]):
        self.system = system
        self.system_actors = set(system_actors)
        self.unlocked: dict[str, Ed25519PrivateKey] = {}

    def unlock(self, actor: str, key: Ed25519PrivateKey) -> None:
        self.unlocked[actor] = key

    def get_or_create(self, actor: str) -> Ed25519PrivateKey:
        if actor in self.unlocked:
            return self.unlocked[actor]
        if actor in self.system_actors:
            return self.system.get_or_create(actor)
        raise ComplianceError(f"no unlocked signing key for {actor!r}: log in as that user first")


@dataclass(frozen=True)
class Session:
    """An authenticated user (both components checked at :meth:`AccessControl.login`)."""

    user: User
    login_seq: int

    @property
    def actor(self) -> str:
        return self.user.actor


def ledger_target(run_dir: str | os.PathLike) -> str:
    """The run's ledger: ``ledger.url`` from ``RUN/config.yaml`` if set, else ``RUN/ledger.db``."""
    run = Path(run_dir)
    if not run.is_dir():
        raise ComplianceError(f"run directory {run} does not exist; pass the folder `pharmafl run` wrote")
    cfg = run / "config.yaml"
    url = None
    if cfg.is_file():
        url = ((yaml.safe_load(cfg.read_text()) or {}).get("ledger") or {}).get("url")
    return url or str(run / "ledger.db")


class AccessControl:
    """Users, logins and authority checks over a run's ledger. Open with :meth:`open`.

    ``allow_test_kdf`` admits a :meth:`PasswordPolicy.for_tests` policy (cheap scrypt); no
    command sets it, so a database made that way is refused outside test suites.
    """

    def __init__(
        self,
        ledger: Ledger,
        keys: SessionKeys,
        *,
        clock: Callable[[], datetime] = utc_now,
        allow_test_kdf: bool = False,
    ):
        self.ledger, self.keys, self.clock = ledger, keys, clock
        self.allow_test_kdf = allow_test_kdf
        self.users = UserStore(ledger.storage)

    @classmethod
    def open(
        cls,
        run_dir: str | os.PathLike,
        system_passphrase: str,
        *,
        clock: Callable[[], datetime] = utc_now,
        scrypt_n: int = DEFAULT_SCRYPT_N,
        allow_test_kdf: bool = False,
    ) -> AccessControl:
        """Open the run's ledger (which must exist) with the run's key store for system actors."""
        target = resolve_target(ledger_target(run_dir))
        storage = Storage(target)
        try:
            refuse_missing(storage)
        except LedgerError as err:
            raise ComplianceError(f"{err} (users live beside a run's ledger: pass a run directory)") from None
        finally:
            storage.dispose()
        probe = Ledger.open(target)
        registrar = probe.registrar
        probe.close()
        system = {registrar, ACCESS_CONTROL}
        keys = SessionKeys(
            KeyStore(Path(run_dir) / "keys", system_passphrase, scrypt_n=scrypt_n, allowed=system), system
        )
        return cls(Ledger.open(target, keys, clock=clock), keys, clock=clock, allow_test_kdf=allow_test_kdf)

    def close(self) -> None:
        self.ledger.close()

    def __enter__(self) -> AccessControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------------------

    def _now(self) -> str:
        return format_ts(self.clock())

    def commit(self, items: list[Item], change: TableChange | None = None) -> list[Entry]:
        """Append ``items`` and make ``change`` to the user table in one transaction, then a
        signed checkpoint over them."""
        entries = self.ledger.append_many(items, on_commit=change)
        self.ledger.checkpoint()
        return entries

    def _save(self, user: User) -> TableChange:
        return lambda conn, _entries: self.users.save(conn, user)

    def policy(self) -> PasswordPolicy:
        policy = self.users.policy()
        if policy is None:
            raise ComplianceError(
                "this run has no users yet: create the first admin with "
                "`pharmafl users init RUN --admin ID --name 'Full Name'`"
            )
        return self._check_kdf(policy)

    def _check_kdf(self, policy: PasswordPolicy) -> PasswordPolicy:
        if policy.test_only_kdf and not self.allow_test_kdf:
            raise ComplianceError(
                f"this run's password policy is a test suite's (PasswordPolicy.for_tests, scrypt "
                f"n={policy.scrypt_n}): refused outside tests; its records are not fit for use"
            )
        return policy

    def _user(self, user_id: str) -> User:
        user = self.users.get(user_id)
        if user is None:
            known = ", ".join(u.user_id for u in self.users.all()) or "none"
            raise ComplianceError(f"no user {user_id!r} (known users: {known})")
        return user

    def _fresh_id(self, user_id: str) -> str:
        """``user_id``'s actor, refused if a key is already registered for it (the id is spent)."""
        actor = actor_of(user_id)
        registered = self.ledger.registered_keys().get(actor)
        if registered is not None:
            raise ComplianceError(
                f"{actor!r} already has a key in the ledger (seq {registered['seq']}) but no "
                "account: an interrupted `users init`, or a key registered around enrolment; "
                "that id is spent, choose another"
            )
        return actor

    def _unique_name(self, full_name: str) -> None:
        taken = next((u for u in self.users.all() if display_key(u.full_name) == display_key(full_name)), None)
        if taken is not None:
            raise ComplianceError(
                f"printed name {full_name!r} is taken by {taken.user_id!r}: printed names are "
                "unique, they name the signer on every copy (21 CFR 11.50); add an initial"
            )

    def accounts(self) -> Accounts:
        """The ledger's users replayed exactly as the offline verifier does; refuses a ledger
        whose accounts do not check (e.g. a user key registered around enrolment)."""
        try:
            return Accounts((e.seq, e.ts, e.actor, e.type, e.payload) for e in self.ledger.entries())
        except VerificationError as err:
            raise ComplianceError(
                f"the ledger's users do not check ({err}): a key or an action outside the rules "
                "of enrolment and roles; nothing is signed, reported or exported from it"
            ) from None

    # -- bootstrap and credentials ----------------------------------------------------------

    def init(self, admin_id: str, full_name: str, password: str, policy: PasswordPolicy = PasswordPolicy()) -> User:
        """Create the first admin (only while there are no users); she self-enrols her key now
        (``{"method": "bootstrap"}``: trust on first use)."""
        if self.users.all():
            raise ComplianceError(
                "users are already initialised for this run; an admin adds users with `pharmafl users create`"
            )
        check_user_id(admin_id)
        _check_name(full_name)
        check_new_password(password, self._check_kdf(policy), admin_id, full_name)
        if self.accounts().users:
            raise ComplianceError(
                "the ledger already records accounts although the user table is empty: "
                "investigate before anyone initialises users here"
            )
        actor = self._fresh_id(admin_id)
        key = Ed25519PrivateKey.generate()
        now = self._now()
        user = User(
            admin_id,
            full_name,
            Role.ADMIN,
            "active",
            0,
            hash_password(password, policy.scrypt_n),
            seal_key(key, password, actor, policy.scrypt_n),
            public_hex(key),
            now,
            False,
            now,
            "bootstrap",
        )
        self.users.create_schema()
        self.ledger.enrol(actor, key, enrolment.BOOTSTRAP)
        self.keys.unlock(actor, key)

        def first(conn: Any, entries: list[Entry]) -> None:
            self.users.require_empty(conn)
            self.users.set_policy(conn, policy)
            self.users.insert(conn, replace(user, created_seq=entries[0].seq))

        created = {
            "user_id": admin_id,
            "full_name": full_name,
            "role": "admin",
            "created_by": "bootstrap",
            "policy": policy.as_dict(),
        }
        entry = self.commit([(actor, "user_created", created)], first)[0]
        return replace(user, created_seq=entry.seq)

    def _check_password(self, user: User | None, user_id: str, password: str, policy: PasswordPolicy) -> User:
        """Account state and password, with failures recorded (and counted towards lockout)."""
        if user is None:
            self.commit([(ACCESS_CONTROL, "login_failed", {"user_id": user_id, "reason": "unknown user id"})])
            raise AuthenticationError(f"unknown user id or wrong password for {user_id!r}")
        if user.status != "active":
            why = (
                "account locked after repeated failed logins; an admin must unlock it "
                f"(`pharmafl users unlock RUN --id {user_id} --user ADMIN`)"
                if user.status == "locked"
                else "account disabled by an admin"
            )
            self.commit([(ACCESS_CONTROL, "login_refused", {"user_id": user_id, "reason": why})])
            raise AuthenticationError(f"{user_id!r}: {why}")
        if not password_matches(password, user.password):
            failed = user.failed_logins + 1
            locked = failed >= policy.max_failed_logins
            items = [
                (
                    ACCESS_CONTROL,
                    "login_failed",
                    {
                        "user_id": user_id,
                        "reason": "wrong password",
                        "failed_logins": failed,
                        "max_failed_logins": policy.max_failed_logins,
                    },
                )
            ]
            if locked:
                items.append((ACCESS_CONTROL, "user_locked", {"user_id": user_id, "failed_logins": failed}))
            self.commit(items, self._save(replace(user, failed_logins=failed, status="locked" if locked else "active")))
            raise AuthenticationError(
                f"unknown user id or wrong password for {user_id!r}"
                + (" (account now locked; an admin must unlock it)" if locked else "")
            )
        return user

    def login(self, user_id: str, password: str) -> Session:
        """Authenticate with both components; records ``user_login`` or the refusal."""
        policy = self.policy()
        user = self._check_password(self.users.get(user_id), user_id, password, policy)
        if user.sealed_key is None or user.must_change:
            why = "the user has not yet set their own password (enrolment)"
            self.commit([(ACCESS_CONTROL, "login_refused", {"user_id": user_id, "reason": why})])
            raise AuthenticationError(f"{user_id!r}: {why}; run `pharmafl users passwd RUN --user {user_id}`")
        expires = _expiry(user, policy)
        if expires is not None and self.clock() >= expires:
            why = f"password expired on {format_ts(expires)} (max age {policy.max_age_days} days)"
            self.commit([(ACCESS_CONTROL, "login_refused", {"user_id": user_id, "reason": why})])
            raise AuthenticationError(
                f"{user_id!r}: {why}; change it with `pharmafl users passwd RUN --user {user_id}`"
            )
        self.keys.unlock(user.actor, open_key(user.sealed_key, password, user.actor))
        user = replace(user, failed_logins=0)
        entry = self.commit(
            [(user.actor, "user_login", {"user_id": user_id, "role": user.role.value})], self._save(user)
        )[0]
        return Session(user, entry.seq)

    def change_password(self, user_id: str, old: str, new: str) -> User:
        """Set a new password (allowed when expired); the first change enrols the user's signing key."""
        policy = self.policy()
        user = self._check_password(self.users.get(user_id), user_id, old, policy)
        if new == old:
            raise ComplianceError(f"the new password for {user_id!r} must differ from the old one")
        check_new_password(new, policy, user_id, user.full_name)
        if user.sealed_key is None:
            return self._enrol(user, old, new, policy)
        key = open_key(user.sealed_key, old, user.actor)
        self.keys.unlock(user.actor, key)
        changed = self._resealed(user, key, new, policy)
        self.commit(
            [(user.actor, "password_changed", {"user_id": user_id, "enrolled_key": False})], self._save(changed)
        )
        return changed

    def _resealed(self, user: User, key: Ed25519PrivateKey, new: str, policy: PasswordPolicy) -> User:
        return replace(
            user,
            password=hash_password(new, policy.scrypt_n),
            sealed_key=seal_key(key, new, user.actor, policy.scrypt_n),
            public_key=public_hex(key),
            password_set_at=self._now(),
            must_change=False,
            failed_logins=0,
        )

    def _enrol(self, user: User, temporary: str, new: str, policy: PasswordPolicy) -> User:
        """The first password change: a key the user makes now, enrolled (with the table row, in
        one transaction) against the commitment in her account's ``user_created``."""
        created = self._user_created(user)
        registered = self.ledger.registered_keys().get(user.actor)
        if registered is not None:
            raise ComplianceError(
                f"a key for {user.actor!r} is already in the ledger (seq {registered['seq']}), "
                "enrolled by someone else: tell an admin, who must disable this account and create "
                "a new one"
            )
        code_key = enrolment.open_commitment(
            temporary, created.data.get("enrolment"), f"{user.user_id!r}'s user_created (seq {created.seq})"
        )
        key = Ed25519PrivateKey.generate()
        changed = self._resealed(user, key, new, policy)
        self.ledger.enrol(
            user.actor, key, enrolment.enrolment(user.actor, key, created.seq, code_key), on_commit=self._save(changed)
        )
        self.keys.unlock(user.actor, key)
        self.commit([(user.actor, "password_changed", {"user_id": user.user_id, "enrolled_key": True})])
        return changed

    def _user_created(self, user: User) -> Entry:
        seq = user.created_seq
        entry = next(iter(self.ledger.entries(seq, seq + 1)), None) if isinstance(seq, int) else None
        if entry is None or entry.type != "user_created" or entry.data.get("user_id") != user.user_id:
            raise ComplianceError(
                f"the account {user.user_id!r} names no user_created entry of its own (seq {seq}); "
                "an admin must disable it and create a new one"
            )
        return entry

    # -- authority -------------------------------------------------------------------------

    def require(self, session: Session, action: str, what: str) -> None:
        """Refuse (recorded as ``action_refused``) unless the session's role may take ``action``.

        The account is read again first: a session whose user was disabled, locked or given
        another role since login is refused (``login_refused``) and must log in again.
        """
        current = self.users.get(session.user.user_id)
        if current is None or current.status != "active" or current.role != session.user.role:
            why = "the account changed since this session logged in (now " + (
                f"{current.status}, role {current.role.value})" if current else "missing)"
            )
            self.commit([(ACCESS_CONTROL, "login_refused", {"user_id": session.user.user_id, "reason": why})])
            raise AuthenticationError(f"{session.user.user_id!r}: {why}; log in again")
        if may(session.user.role, action):
            return
        allowed = roles_for(action)
        self.commit(
            [
                (
                    session.actor,
                    "action_refused",
                    {
                        "user_id": session.user.user_id,
                        "role": session.user.role.value,
                        "action": action,
                        "what": what,
                        "allowed_roles": allowed,
                    },
                )
            ]
        )
        raise AuthorityError(
            f"{session.user.user_id!r} (role {session.user.role.value}) may not {what}: only "
            f"{', '.join(allowed)} may; ask an admin if your role is wrong"
        )

    def _refuse(self, session: Session, what: str, reason: str) -> None:
        """A separation-of-duties refusal, recorded as ``action_refused`` with its reason."""
        self.commit(
            [
                (
                    session.actor,
                    "action_refused",
                    {
                        "user_id": session.user.user_id,
                        "role": session.user.role.value,
                        "action": "manage_users",
                        "what": what,
                        "reason": reason,
                    },
                )
            ]
        )
        raise AuthorityError(f"{session.user.user_id!r} may not {what}: {reason}")

    def record(
        self, session: Session, items: list[tuple[str, Mapping[str, Any]]], change: TableChange | None = None
    ) -> list[Entry]:
        """Entries signed by the session's user (and ``change`` to the user table) in one transaction."""
        return self.commit([(session.actor, type_, payload) for type_, payload in items], change)

    # -- user management (admin) -------------------------------------------------------------

    def create_user(self, session: Session, user_id: str, full_name: str, role: str, temp_password: str) -> User:
        """A new account with a temporary password, committed to in ``user_created`` (its enrolment code)."""
        self.require(session, "manage_users", f"create user {user_id!r}")
        check_user_id(user_id)
        _check_name(full_name)
        parsed = parse_role(role)
        if self.users.get(user_id) is not None:
            raise ComplianceError(f"user {user_id!r} already exists; user ids are never reused")
        self._unique_name(full_name)
        self._fresh_id(user_id)
        policy = self.policy()
        check_new_password(temp_password, policy, user_id, full_name)
        now = self._now()
        user = User(
            user_id,
            full_name,
            parsed,
            "active",
            0,
            hash_password(temp_password, policy.scrypt_n),
            None,
            None,
            now,
            True,
            now,
            session.user.user_id,
        )
        entry = self.record(
            session,
            [
                (
                    "user_created",
                    {
                        "user_id": user_id,
                        "full_name": full_name,
                        "role": parsed.value,
                        "created_by": session.user.user_id,
                        "enrolment": enrolment.commit(temp_password, policy.scrypt_n),
                    },
                )
            ],
            lambda conn, entries: self.users.insert(conn, replace(user, created_seq=entries[0].seq)),
        )[0]
        return replace(user, created_seq=entry.seq)

    def set_role(self, session: Session, user_id: str, role: str) -> User:
        self.require(session, "manage_users", f"change the role of {user_id!r}")
        user, parsed = self._user(user_id), parse_role(role)
        what = f"change the role of {user_id!r} to {parsed.value}"
        if user_id == session.user.user_id:
            self._refuse(session, what, "nobody changes their own role; another admin must")
        if user.role == Role.ADMIN and parsed in SIGNING_ROLES:
            self._refuse(
                session,
                what,
                f"{user_id!r} holds admin, and no admin is given a signing role "
                f"({', '.join(sorted(r.value for r in SIGNING_ROLES))}): separation of "
                "duties; create a separate account",
            )
        if user.role == Role.ADMIN and parsed != Role.ADMIN and self._last_admin(user_id):
            raise ComplianceError(f"{user_id!r} is the last active admin; create another admin first")
        changed = replace(user, role=parsed)
        self.record(
            session,
            [
                (
                    "user_role_changed",
                    {
                        "user_id": user_id,
                        "old_role": user.role.value,
                        "role": parsed.value,
                        "changed_by": session.user.user_id,
                    },
                )
            ],
            self._save(changed),
        )
        return changed

    def unlock(self, session: Session, user_id: str) -> User:
        self.require(session, "manage_users", f"unlock {user_id!r}")
        user = self._user(user_id)
        if user.status == "disabled":
            raise ComplianceError(f"{user_id!r} is disabled, not locked; disabled accounts stay disabled")
        changed = replace(user, status="active", failed_logins=0)
        self.record(session, [("user_unlocked", {"user_id": user_id, "by": session.user.user_id})], self._save(changed))
        return changed

    def disable(self, session: Session, user_id: str) -> User:
        self.require(session, "manage_users", f"disable {user_id!r}")
        user = self._user(user_id)
        if user_id == session.user.user_id or (user.role == Role.ADMIN and self._last_admin(user_id)):
            raise ComplianceError(
                f"refusing to disable {user_id!r}: an admin cannot disable themselves or the last active admin"
            )
        changed = replace(user, status="disabled")
        self.record(session, [("user_disabled", {"user_id": user_id, "by": session.user.user_id})], self._save(changed))
        return changed

    def set_policy(self, session: Session, policy: PasswordPolicy) -> None:
        self.require(session, "manage_users", "change the password policy")
        self._check_kdf(policy)
        self.record(
            session,
            [("policy_changed", {"policy": policy.as_dict(), "by": session.user.user_id})],
            lambda conn, _entries: self.users.set_policy(conn, policy),
        )

    def _last_admin(self, user_id: str) -> bool:
        return not [
            u for u in self.users.all() if u.role == Role.ADMIN and u.status == "active" and u.user_id != user_id
        ]


def _expiry(user: User, policy: PasswordPolicy) -> datetime | None:
    if not policy.max_age_days:
        return None
    set_at = datetime.strptime(user.password_set_at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return set_at + timedelta(days=policy.max_age_days)


def _check_name(full_name: str) -> None:
    if not isinstance(full_name, str) or not full_name.strip() or len(full_name) > 200:
        raise ComplianceError(
            "a user's full (printed) name is required, 1-200 characters: it is shown on every signature (21 CFR 11.50)"
        )
