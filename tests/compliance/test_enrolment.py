"""Enrolment: a user's key is made only by whoever holds her temporary password (issue 12).

The attack: someone holding the run's system passphrase (``$PHARMAFL_KEY_PASSPHRASE``), but
not Quinn's temporary password, makes a key for Quinn before she enrols and approves a report
in her name. It is refused when written through the registrar, refused by every compliance
action when written around it with a self-made enrolment, and caught by the offline verifier.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pharmafl.audit.errors import LedgerError
from pharmafl.audit.evidence import enrolment_mac, verify_package
from pharmafl.audit.keys import KeyStore
from pharmafl.audit.ledger import Ledger
from pharmafl.audit.verify import VerificationError
from pharmafl.compliance import enrolment
from pharmafl.compliance.access import AccessControl
from pharmafl.compliance.credentials import derive
from pharmafl.compliance.errors import AuthenticationError, ComplianceError
from pharmafl.compliance.evidence import export_evidence
from pharmafl.compliance.report import generate_report, load_report
from pharmafl.compliance.signatures import make_signature
from pharmafl.compliance.signing import sign

from ..audit.conftest import FAST_SCRYPT, PASSPHRASE
from .conftest import POLICY, enrol_people, entries_of, open_access, password

TEMPORARY = "Temporary-Pass-1"


@pytest.fixture
def pending(ledger_run: Path, clock):
    """ada (admin), dana and rita enrolled; quinn created by ada and not enrolled yet."""
    ac = open_access(ledger_run, clock)
    enrol_people(ac, users=("dana", "rita"))
    ac.create_user(ac.login("ada", password("ada")), "quinn", "Quinn Quality", "qa", TEMPORARY)
    yield ac
    ac.close()


@pytest.fixture
def report(pending: AccessControl, ledger_run: Path, tmp_path: Path) -> Path:
    return generate_report(
        pending, pending.login("dana", password("dana")), ledger_run, tmp_path / "r1", formats=("parquet",)
    )


def approval(key: Ed25519PrivateKey, report: Path) -> dict:
    """An 'approved' e-signature in Quinn's name, made with ``key``."""
    return make_signature(
        key,
        signer="user:quinn",
        printed_name="Quinn Quality",
        role="qa",
        record="report",
        record_hash=load_report(report)[1],
        meaning="approved",
        signed_at="2030-01-01T00:00:00.000000Z",
    )


class AttackerKeys:
    """Everything the system passphrase opens, plus a key the attacker made for Quinn."""

    def __init__(self, run: Path, quinn: Ed25519PrivateKey):
        self.store, self.quinn = KeyStore(run / "keys", PASSPHRASE, scrypt_n=FAST_SCRYPT), quinn

    def get_or_create(self, actor: str) -> Ed25519PrivateKey:
        return self.quinn if actor == "user:quinn" else self.store.get_or_create(actor)


def test_system_passphrase_cannot_register_a_user_key(pending, ledger_run, report) -> None:
    store = KeyStore(ledger_run / "keys", PASSPHRASE, scrypt_n=FAST_SCRYPT)  # no allow-list: the raw key store
    before = len(pending.ledger)
    with Ledger.open(ledger_run, store) as ledger:
        with pytest.raises(LedgerError, match="registrar never registers a user key"):
            ledger.register("user:quinn")
        with pytest.raises(LedgerError, match="registrar never registers a user key"):
            ledger.record("user:quinn", "e_signature", **approval(store.get_or_create("user:quinn"), report))
    assert len(pending.ledger) == before and "user:quinn" not in pending.ledger.registered_keys()
    with pytest.raises(AuthenticationError, match="wrong password"):  # nor through access control
        pending.change_password("quinn", "guessed-Pass-123", "my-Own-Pass-0001")
    pending.change_password("quinn", TEMPORARY, password("quinn"))  # Quinn herself still enrols
    assert pending.accounts().users["user:quinn"]["status"] == "active"


def made_up(actor: str, key: Ed25519PrivateKey, created: int, other: int) -> dict:
    return enrolment.enrolment(actor, key, created, secrets.token_bytes(32))


def wrong_account(actor: str, key: Ed25519PrivateKey, created: int, other: int) -> dict:
    return enrolment.enrolment(actor, key, other, secrets.token_bytes(32))


def bootstrap(actor: str, key: Ed25519PrivateKey, created: int, other: int) -> dict:
    return dict(enrolment.BOOTSTRAP)


def no_answer(actor: str, key: Ed25519PrivateKey, created: int, other: int) -> dict:
    return {"note": "trust me"}


FORGERIES = [
    (made_up, "enrolment of 'user:quinn': the code key does not open the commitment of its user_created"),
    (wrong_account, "enrolment of 'user:quinn' answers user_created at seq \\d+, which is not the entry that created"),
    (bootstrap, "'user:quinn' self-enrols as the bootstrap admin after accounts exist"),
    (no_answer, "enrolment of 'user:quinn' is malformed"),
]


def forge(pending: AccessControl, run: Path, report: Path, forgery) -> None:
    """Enrol a key for Quinn around access control (no temporary password) and approve in her name."""
    created = {e.data["user_id"]: e.seq for e in entries_of(pending, "user_created")}
    key = Ed25519PrivateKey.generate()
    with Ledger.open(run, AttackerKeys(run, key)) as ledger:
        ledger.enrol("user:quinn", key, forgery("user:quinn", key, created["quinn"], created["dana"]))
        ledger.record("user:quinn", "e_signature", **approval(key, report))
        ledger.checkpoint()


@pytest.mark.parametrize("forgery, message", FORGERIES, ids=[f.__name__ for f, _ in FORGERIES])
def test_enrolment_without_the_temporary_password_is_refused_at_write_time(
    pending, ledger_run, report, tmp_path, forgery, message
) -> None:
    forge(pending, ledger_run, report, forgery)
    with pytest.raises(ComplianceError, match=message):
        pending.accounts()
    with pytest.raises(ComplianceError, match="users do not check"):
        sign(pending, pending.login("dana", password("dana")), report, "authored")
    with pytest.raises(ComplianceError, match="users do not check"):
        export_evidence(pending, pending.login("rita", password("rita")), [report], tmp_path / "package")
    with pytest.raises(ComplianceError, match="users do not check"):
        generate_report(pending, pending.login("dana", password("dana")), ledger_run, tmp_path / "r2")
    with pytest.raises(ComplianceError, match="already in the ledger .*enrolled by someone else"):
        pending.change_password("quinn", TEMPORARY, password("quinn"))  # and Quinn learns of it
    assert not (tmp_path / "package").exists() and not (tmp_path / "r2").exists()
    assert not [e for e in entries_of(pending, "e_signature") if e.actor == "user:dana"]


@pytest.mark.parametrize("forgery, message", FORGERIES[:1] + FORGERIES[2:3], ids=["made_up", "bootstrap"])
def test_forged_enrolment_fails_the_evidence_package(
    pending, ledger_run, report, tmp_path, monkeypatch, forgery, message
) -> None:
    forge(pending, ledger_run, report, forgery)
    monkeypatch.setattr(AccessControl, "accounts", lambda self: None)  # an exporter that skips the replay
    package = export_evidence(pending, pending.login("rita", password("rita")), [report], tmp_path / "package")
    with pytest.raises(VerificationError, match=message):
        verify_package(str(package))


def test_enrolment_answers_the_commitment_of_user_created(pending) -> None:
    pending.change_password("quinn", TEMPORARY, password("quinn"))
    created = [e for e in entries_of(pending, "user_created") if e.data["user_id"] == "quinn"][0]
    key_entry = [e for e in entries_of(pending, "actor_key") if e.data["actor"] == "user:quinn"][0]
    commitment, answer = created.data["enrolment"], key_entry.data["enrolment"]
    assert created.actor == "user:ada" and key_entry.actor == "user:quinn" and key_entry.seq > created.seq
    assert commitment["format"] == "pharmafl-enrolment-commitment-v1" and commitment["kdf"]["n"] == POLICY.scrypt_n
    assert set(answer) == {"method", "user_created", "code_key", "mac"} and answer["user_created"] == created.seq
    code_key = derive(TEMPORARY, commitment["kdf"])  # the temporary password, and only it, makes the code key
    assert answer["code_key"] == code_key.hex()
    assert hashlib.sha256(code_key).hexdigest() == commitment["code_key_sha256"]
    assert hmac.compare_digest(
        answer["mac"], enrolment_mac(code_key, "user:quinn", key_entry.data["public_key"], created.seq)
    )
    assert key_entry.data["public_key"] == pending.users.get("quinn").public_key
    ada = [e for e in entries_of(pending, "actor_key") if e.data["actor"] == "user:ada"][0]
    assert ada.actor == "user:ada" and ada.data["enrolment"] == {"method": "bootstrap"}  # trust on first use
    assert entries_of(pending, "user_created")[0].seq > ada.seq


def test_an_interrupted_init_spends_the_admin_id(ledger_run, clock, monkeypatch) -> None:
    """Killed between the first admin's self-enrolment and her user_created: nothing half-made."""
    with open_access(ledger_run, clock) as ac:
        monkeypatch.setattr(AccessControl, "commit", lambda *a, **k: (_ for _ in ()).throw(OSError("power cut")))
        with pytest.raises(OSError):
            ac.init("ada", "Ada Lovelace", password("ada"), POLICY)
        monkeypatch.undo()
        assert ac.users.all() == [] and "user:ada" in ac.ledger.registered_keys()
        with pytest.raises(ComplianceError, match="'user:ada' already has a key in the ledger .*choose another"):
            ac.init("ada", "Ada Lovelace", password("ada"), POLICY)
        ac.init("ada.l", "Ada Lovelace", password("ada"), POLICY)
        assert set(ac.accounts().users) == {"user:ada.l"}
