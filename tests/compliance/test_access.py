"""Users, credentials and authority checks: every action and every refusal is in the ledger."""

from __future__ import annotations

import pytest

from pharmafl.audit.verify import verify_path
from pharmafl.compliance.access import ACCESS_CONTROL, AccessControl
from pharmafl.compliance.credentials import PasswordPolicy
from pharmafl.compliance.errors import AuthenticationError, AuthorityError, ComplianceError
from pharmafl.compliance.roles import Role
from pharmafl.compliance.users import UserStore

from .conftest import PEOPLE, POLICY, entries_of, open_access, password


def test_init_creates_the_first_admin_signed_by_her_own_key(ledger_run, clock) -> None:
    with open_access(ledger_run, clock) as ac:
        admin = ac.init("ada", "Ada Lovelace", password("ada"), POLICY)
        created = entries_of(ac, "user_created")
        keys = ac.ledger.registered_keys()
        with pytest.raises(ComplianceError, match="already initialised"):
            ac.init("eve", "Eve Other", "another-Pass-123", POLICY)
    assert admin.role == Role.ADMIN and admin.sealed_key is not None
    assert [(e.actor, e.data["created_by"], e.data["role"]) for e in created] == [("user:ada", "bootstrap", "admin")]
    assert keys["user:ada"]["public_key"] == admin.public_key
    assert verify_path(str(ledger_run)).line().startswith("OK: ")


def test_login_is_recorded_and_signed_by_the_user(people) -> None:
    session = people.login("quinn", password("quinn"))
    entry = next(e for e in people.ledger.entries(session.login_seq, session.login_seq + 1))
    assert (entry.type, entry.actor, entry.data["role"]) == ("user_login", "user:quinn", "qa")


def test_new_user_must_enrol_before_login(ledger_run, clock) -> None:
    with open_access(ledger_run, clock) as ac:
        ac.init("ada", "Ada Lovelace", password("ada"), POLICY)
        ac.create_user(ac.login("ada", password("ada")), "quinn", "Quinn Quality", "qa", "Temporary-Pass-1")
        with pytest.raises(AuthenticationError, match="users passwd"):
            ac.login("quinn", "Temporary-Pass-1")
        refused = entries_of(ac, "login_refused")[-1]
        assert refused.actor == ACCESS_CONTROL and "enrolment" in refused.data["reason"]
        assert "user:quinn" not in ac.ledger.registered_keys()
        ac.change_password("quinn", "Temporary-Pass-1", password("quinn"))
        changed = entries_of(ac, "password_changed")[-1]
        assert changed.actor == "user:quinn" and changed.data["enrolled_key"] is True
        assert ac.login("quinn", password("quinn")).user.role == Role.QA


def test_admin_cannot_sign_as_new_user(ledger_run, clock) -> None:
    """The admin knows the temporary password, but no signing key exists until the user sets their own."""
    with open_access(ledger_run, clock) as ac:
        ac.init("ada", "Ada Lovelace", password("ada"), POLICY)
        ac.create_user(ac.login("ada", password("ada")), "quinn", "Quinn Quality", "qa", "Temporary-Pass-1")
        assert ac.users.get("quinn").sealed_key is None
        with pytest.raises(AuthenticationError):
            ac.login("quinn", "Temporary-Pass-1")
        ac.change_password("quinn", "Temporary-Pass-1", password("quinn"))
        with pytest.raises(AuthenticationError, match="wrong password"):
            ac.login("quinn", "Temporary-Pass-1")  # the admin's temporary password no longer opens anything


def test_wrong_password_is_recorded_and_locks_after_the_limit(people) -> None:
    before = len(people.ledger)
    for attempt in range(1, POLICY.max_failed_logins + 1):
        with pytest.raises(AuthenticationError, match="wrong password"):
            people.login("quinn", f"not-her-password-{attempt}")
    failed = entries_of(people, "login_failed")
    assert [e.data["failed_logins"] for e in failed] == [1, 2, 3]
    assert all(e.actor == ACCESS_CONTROL and e.data["user_id"] == "quinn" for e in failed)
    locked = entries_of(people, "user_locked")
    assert [e.data["user_id"] for e in locked] == ["quinn"] and people.users.get("quinn").status == "locked"
    with pytest.raises(AuthenticationError, match="locked"):
        people.login("quinn", password("quinn"))  # even the right password
    assert entries_of(people, "login_refused")[-1].data["user_id"] == "quinn"
    written = [e.type for e in people.ledger.entries(before) if e.type != "actor_key"]  # access-control's key
    assert written == ["login_failed"] * 3 + ["user_locked", "login_refused"]  # nothing else
    people.unlock(people.login("ada", password("ada")), "quinn")
    assert people.login("quinn", password("quinn")).user.failed_logins == 0


def test_a_success_resets_the_failure_count(people) -> None:
    with pytest.raises(AuthenticationError):
        people.login("dana", "not-her-password-1")
    assert people.users.get("dana").failed_logins == 1
    people.login("dana", password("dana"))
    assert people.users.get("dana").failed_logins == 0


def test_unknown_user_is_recorded_without_saying_which_part_was_wrong(people) -> None:
    with pytest.raises(AuthenticationError, match="unknown user id or wrong password for 'mallory'"):
        people.login("mallory", "whatever-Pass-1")
    last = entries_of(people, "login_failed")[-1]
    assert last.data == {"reason": "unknown user id", "user_id": "mallory"}


def test_expired_password_is_refused_until_changed(people, clock) -> None:
    clock.advance(days=POLICY.max_age_days, seconds=1)
    with pytest.raises(AuthenticationError, match="password expired"):
        people.login("quinn", password("quinn"))
    assert "expired" in entries_of(people, "login_refused")[-1].data["reason"]
    people.change_password("quinn", password("quinn"), "new-Secret-77777")
    assert people.login("quinn", "new-Secret-77777").user.user_id == "quinn"
    with pytest.raises(AuthenticationError):
        people.login("quinn", password("quinn"))


def test_password_ageing_is_configurable(people, clock) -> None:
    admin = people.login("ada", password("ada"))
    people.set_policy(admin, PasswordPolicy.for_tests(max_age_days=0, max_failed_logins=3))
    clock.advance(days=3650)
    assert people.login("quinn", password("quinn")).user.user_id == "quinn"  # 0: no ageing
    assert entries_of(people, "policy_changed")[-1].data["policy"]["max_age_days"] == 0


@pytest.mark.parametrize(
    "user, action, args",
    [
        ("quinn", "create_user", ("eve", "Eve Other", "qa", "Temporary-Pass-9")),
        ("dana", "create_user", ("eve", "Eve Other", "admin", "Temporary-Pass-9")),
        ("rita", "set_role", ("rita", "admin")),
        ("rita", "unlock", ("quinn",)),
        ("quinn", "disable", ("dana",)),
        ("rita", "set_policy", (PasswordPolicy(max_age_days=0),)),
    ],
)
def test_refusals_by_role(people, user, action, args) -> None:
    session = people.login(user, password(user))
    before_users, before = people.users.all(), len(people.ledger)
    with pytest.raises(AuthorityError, match=f"'{user}' \\(role {PEOPLE[user][1]}\\) may not .*only admin may"):
        getattr(people, action)(session, *args)
    refused = list(people.ledger.entries(before))
    assert [(e.type, e.actor) for e in refused] == [("action_refused", f"user:{user}")]
    assert refused[0].data["action"] == "manage_users" and refused[0].data["allowed_roles"] == ["admin"]
    assert people.users.all() == before_users  # nothing half-made
    assert people.users.policy() == POLICY


def test_admin_manages_roles_and_every_change_is_recorded(people) -> None:
    admin = people.login("ada", password("ada"))
    assert people.set_role(admin, "dana", "qa").role == Role.QA
    change = entries_of(people, "user_role_changed")[-1]
    assert (change.actor, change.data["old_role"], change.data["role"]) == ("user:ada", "data_scientist", "qa")
    people.disable(admin, "rita")
    with pytest.raises(AuthenticationError, match="disabled"):
        people.login("rita", password("rita"))
    with pytest.raises(ComplianceError, match="cannot disable themselves"):
        people.disable(admin, "ada")
    with pytest.raises(ComplianceError, match="Could not resolve role 'superuser'"):
        people.set_role(admin, "dana", "superuser")
    assert verify_path(str(people.ledger.storage.url.removeprefix("sqlite:///"))).line().startswith("OK: ")


def test_user_ids_are_never_reused(people) -> None:
    admin = people.login("ada", password("ada"))
    people.disable(admin, "rita")
    before = len(people.ledger)
    for user_id in ("quinn", "rita"):
        with pytest.raises(ComplianceError, match="already exists; user ids are never reused"):
            people.create_user(admin, user_id, "Someone Else", "qa", "Temporary-Pass-9")
    assert len(people.ledger) == before


@pytest.mark.parametrize(
    "user_id, name, temp, message",
    [
        ("Eve", "Eve Other", "Temporary-Pass-9", "user id 'Eve' is not valid"),
        ("eve", "  ", "Temporary-Pass-9", r"full \(printed\) name is required"),
        ("eve", "Eve Other", "short-1A", "too short"),
        ("eve", "Eve Other", "eve-is-my-Pass-1", "must not contain the user id or name"),
        ("eve", "Eve Other", "alllowercaseletters", "one kind of character"),
    ],
)
def test_bad_input_writes_nothing(people, user_id, name, temp, message) -> None:
    admin = people.login("ada", password("ada"))
    before = len(people.ledger)
    with pytest.raises(ComplianceError, match=message):
        people.create_user(admin, user_id, name, "qa", temp)
    assert len(people.ledger) == before and people.users.get(user_id) is None


def test_change_password_checks_the_old_one_and_the_policy(people) -> None:
    with pytest.raises(AuthenticationError):
        people.change_password("quinn", "not-her-password", "new-Secret-77777")
    with pytest.raises(ComplianceError, match="must differ"):
        people.change_password("quinn", password("quinn"), password("quinn"))
    key_before = people.users.get("quinn").public_key
    people.change_password("quinn", password("quinn"), "new-Secret-77777")
    assert people.users.get("quinn").public_key == key_before  # same key, re-sealed under the new password
    assert entries_of(people, "password_changed")[-1].data == {"enrolled_key": False, "user_id": "quinn"}


def test_no_users_yet_says_how_to_start(ledger_run) -> None:
    with open_access(ledger_run) as ac, pytest.raises(ComplianceError, match="pharmafl users init"):
        ac.login("ada", "whatever-Pass-1")


def test_users_need_a_run_with_a_ledger(tmp_path) -> None:
    with pytest.raises(ComplianceError, match="does not exist"):
        open_access(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ComplianceError, match="no ledger at"):
        open_access(tmp_path / "empty")


def test_ledger_verifies_after_every_kind_of_action(people) -> None:
    with pytest.raises(AuthenticationError):
        people.login("quinn", "not-her-password")
    with pytest.raises(AuthorityError):
        people.create_user(people.login("rita", password("rita")), "eve", "Eve Other", "qa", "Temporary-Pass-9")
    types = {e.type for e in entries_of(people)}
    assert {"user_created", "password_changed", "user_login", "login_failed", "action_refused"} <= types
    assert verify_path(people.ledger.storage.url.removeprefix("sqlite:///")).line().startswith("OK: ")
    assert {e.actor for e in entries_of(people, "user_login")} <= {f"user:{u}" for u in PEOPLE}


def test_a_session_does_not_outlive_a_role_change_or_a_disable(people) -> None:
    """Authority is checked against the account as it is now, not as it was at login."""
    admin = people.login("ada", password("ada"))
    quinn, dana = people.login("quinn", password("quinn")), people.login("dana", password("dana"))
    people.set_role(admin, "quinn", "data_scientist")
    people.disable(admin, "dana")
    before = len(people.ledger)
    with pytest.raises(AuthenticationError, match="'quinn': the account changed .*role data_scientist.*log in again"):
        people.require(quinn, "sign:approved", "sign records as 'approved'")
    with pytest.raises(AuthenticationError, match="'dana': the account changed .*disabled.*log in again"):
        people.require(dana, "generate_report", "generate a report")
    refused = [e for e in people.ledger.entries(before) if e.type != "actor_key"]  # access-control's first entry
    assert [(e.type, e.actor, e.data["user_id"]) for e in refused] == [
        ("login_refused", ACCESS_CONTROL, "quinn"),
        ("login_refused", ACCESS_CONTROL, "dana"),
    ]
    with pytest.raises(AuthorityError, match="only qa may"):  # a fresh login carries the new role
        people.require(people.login("quinn", password("quinn")), "sign:approved", "sign records as 'approved'")


def test_user_management_refusals_write_nothing(people) -> None:
    admin = people.login("ada", password("ada"))
    people.disable(admin, "rita")
    before, users = len(people.ledger), people.users.all()
    with pytest.raises(ComplianceError, match="'rita' is disabled, not locked; disabled accounts stay disabled"):
        people.unlock(admin, "rita")
    for action, args in (("set_role", ("nobody", "qa")), ("unlock", ("nobody",)), ("disable", ("nobody",))):
        with pytest.raises(ComplianceError, match="no user 'nobody' \\(known users: ada, dana, quinn, rita\\)"):
            getattr(people, action)(admin, *args)
    assert len(people.ledger) == before and people.users.all() == users


def test_printed_names_are_unique(people) -> None:
    admin = people.login("ada", password("ada"))
    before = len(people.ledger)
    for name in ("Quinn Quality", "  quinn   QUALITY ", "Ｑuinn Quality"):  # case, spacing, full-width Q
        with pytest.raises(ComplianceError, match="printed name .* is taken by 'quinn'"):
            people.create_user(admin, "quinn2", name, "qa", "Temporary-Pass-9")
    assert len(people.ledger) == before and people.users.get("quinn2") is None
    assert people.create_user(admin, "quinn2", "Quinn B. Quality", "qa", "Temporary-Pass-9").user_id == "quinn2"


def test_no_self_role_change_and_no_signing_role_for_an_admin(people) -> None:
    ada = people.login("ada", password("ada"))
    people.create_user(ada, "bob", "Bob Admin", "admin", "Temporary-Pass-9")
    people.change_password("bob", "Temporary-Pass-9", "river-Moon-00042")
    bob = people.login("bob", "river-Moon-00042")
    before = len(people.ledger)
    with pytest.raises(AuthorityError, match="'bob' may not change the role of 'bob' .*nobody changes their own"):
        people.set_role(bob, "bob", "qa")
    for role in ("qa", "data_scientist"):
        with pytest.raises(AuthorityError, match="'ada' holds admin, and no admin is given a signing role"):
            people.set_role(bob, "ada", role)
    refused = [e for e in people.ledger.entries(before) if e.type != "actor_key"]
    assert [(e.type, e.actor) for e in refused] == [("action_refused", "user:bob")] * 3
    assert all(e.data["reason"] and e.data["action"] == "manage_users" for e in refused)
    assert (people.users.get("ada").role, people.users.get("bob").role) == (Role.ADMIN, Role.ADMIN)
    assert people.set_role(bob, "ada", "regulator").role == Role.REGULATOR  # a role that signs nothing: allowed
    assert people.accounts().users["user:ada"]["role"] == "regulator"


def test_a_crash_leaves_the_entry_and_the_table_row_together(people, monkeypatch) -> None:
    """A crash between a user's ledger entry and the users table (issue 12): both or neither."""
    admin = people.login("ada", password("ada"))
    before = len(people.ledger)
    real_insert, real_save = UserStore.insert, UserStore.save

    def insert_then_crash(self, conn, user):
        real_insert(self, conn, user)  # the row is written in the ledger's transaction ...
        raise OSError("power cut")  # ... which never commits

    def save_then_crash(self, conn, user):
        real_save(self, conn, user)
        raise OSError("power cut")

    monkeypatch.setattr(UserStore, "insert", insert_then_crash)
    with pytest.raises(OSError, match="power cut"):
        people.create_user(admin, "eve", "Eve Other", "qa", "Temporary-Pass-9")
    monkeypatch.setattr(UserStore, "insert", real_insert)
    assert len(people.ledger) == before and people.users.get("eve") is None  # neither
    people.create_user(admin, "eve", "Eve Other", "qa", "Temporary-Pass-9")  # the same id again: nothing spent
    monkeypatch.setattr(UserStore, "save", save_then_crash)
    with pytest.raises(OSError, match="power cut"):
        people.change_password("eve", "Temporary-Pass-9", "sea-Secret-00042")  # her enrolment
    monkeypatch.setattr(UserStore, "save", real_save)
    assert "user:eve" not in people.ledger.registered_keys() and people.users.get("eve").sealed_key is None
    people.change_password("eve", "Temporary-Pass-9", "sea-Secret-00042")
    assert people.users.get("eve").public_key == people.ledger.registered_keys()["user:eve"]["public_key"]
    assert people.accounts().users["user:eve"] == {"role": "qa", "name": "Eve Other", "status": "active"}


CRASH = """
import os, sys
from pharmafl.audit.ledger import Ledger
from pharmafl.compliance.access import AccessControl
from pharmafl.compliance.users import UserStore

run, passphrase, scrypt_n, admin_password, where = sys.argv[1:]
ac = AccessControl.open(run, passphrase, scrypt_n=int(scrypt_n), allow_test_kdf=True)
admin = ac.login("ada", admin_password)
if where == "in the transaction":
    real = UserStore.insert
    def insert(self, conn, user):
        real(self, conn, user)
        os._exit(9)  # killed: the row and the entry written, not committed
    UserStore.insert = insert
else:
    Ledger.checkpoint = lambda self, signer=None: os._exit(9)  # killed right after the commit
ac.create_user(admin, "eve", "Eve Other", "qa", "Temporary-Pass-9")
"""


@pytest.mark.parametrize("where, written", [("in the transaction", False), ("after the commit", True)])
def test_a_killed_process_leaves_the_entry_and_the_table_row_together(people, where, written) -> None:
    import subprocess
    import sys

    from ..audit.conftest import FAST_SCRYPT, PASSPHRASE

    run = people.ledger.storage.url.removeprefix("sqlite:///").removesuffix("/ledger.db")
    done = subprocess.run(
        [sys.executable, "-c", CRASH, run, PASSPHRASE, str(FAST_SCRYPT), password("ada"), where],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 9, done.stderr[-2000:]
    created = [e for e in entries_of(people, "user_created") if e.data["user_id"] == "eve"]
    assert (len(created), people.users.get("eve") is not None) == (int(written), written)
    if written:
        assert people.users.get("eve").created_seq == created[0].seq
    people.accounts()  # the ledger's users still check either way


def test_production_refuses_the_test_only_kdf(people) -> None:
    from ..audit.conftest import FAST_SCRYPT, PASSPHRASE

    with pytest.raises(ComplianceError, match=r"scrypt_n must be a power of two >= 2\*\*17"):
        PasswordPolicy(scrypt_n=2**14)
    assert PasswordPolicy().scrypt_n == 2**17 and not PasswordPolicy().test_only_kdf
    assert entries_of(people, "user_created")[0].data["policy"]["test_only_kdf"] is True  # recorded as such
    run = people.ledger.storage.url.removeprefix("sqlite:///").removesuffix("/ledger.db")
    with AccessControl.open(run, PASSPHRASE, scrypt_n=FAST_SCRYPT) as production:  # as every command opens it
        with pytest.raises(ComplianceError, match="test suite's .*refused outside tests"):
            production.login("ada", password("ada"))


def test_production_costs_scrypt_2_17(ledger_run) -> None:
    """The production policy end to end: passwords, sealed key and enrolment code at n = 2**17."""
    from ..audit.conftest import FAST_SCRYPT, PASSPHRASE

    with AccessControl.open(ledger_run, PASSPHRASE, scrypt_n=FAST_SCRYPT) as ac:
        admin = ac.init("ada", "Ada Lovelace", password("ada"), PasswordPolicy(max_failed_logins=3))
        ac.create_user(ac.login("ada", password("ada")), "quinn", "Quinn Quality", "qa", "Temporary-Pass-1")
        created = entries_of(ac, "user_created")[-1]
        quinn = ac.users.get("quinn")
    assert admin.password["n"] == admin.sealed_key["kdf"]["n"] == quinn.password["n"] == 2**17
    assert created.data["enrolment"]["kdf"]["n"] == 2**17
