"""The permission table: separation of duties, and the verifier's copy of the signing rows."""

from __future__ import annotations

import pytest

from pharmafl.audit import evidence
from pharmafl.compliance import credentials
from pharmafl.compliance.errors import ComplianceError
from pharmafl.compliance.roles import MEANINGS, PERMISSIONS, SIGNING_ROLES, Role, may, parse_meaning, parse_role


def test_regulator_may_read_and_export_only() -> None:
    assert [a for a in PERMISSIONS if may(Role.REGULATOR, a)] == ["export_evidence"]


def test_admin_manages_users_and_nothing_else() -> None:
    assert [a for a in PERMISSIONS if may("admin", a)] == ["manage_users"]


def test_only_qa_reviews_and_approves() -> None:
    assert {r for r in Role if may(r, "sign:approved")} == {Role.QA} == {r for r in Role if may(r, "sign:reviewed")}
    assert {r for r in Role if may(r, "sign:authored")} == {Role.QA, Role.DATA_SCIENTIST}


def test_the_standalone_verifier_carries_the_same_signing_rules() -> None:
    assert set(evidence.MAY_SIGN) == set(MEANINGS)
    for meaning, roles in evidence.MAY_SIGN.items():
        assert roles == {r.value for r in PERMISSIONS[f"sign:{meaning}"]}
    assert evidence.MAY_GENERATE == {r.value for r in PERMISSIONS["generate_report"]}
    assert evidence.MAY_EXPORT == {r.value for r in PERMISSIONS["export_evidence"]}
    assert evidence.ROLES == {r.value for r in Role} and evidence.SIGNING == {r.value for r in SIGNING_ROLES}
    assert (evidence.MIN_KDF_N, evidence.TEST_KDF_N) == (credentials.MIN_SCRYPT_N, credentials.TEST_SCRYPT_N)


def test_signing_roles_are_the_roles_that_may_sign() -> None:
    assert SIGNING_ROLES == {Role.QA, Role.DATA_SCIENTIST} and Role.ADMIN not in SIGNING_ROLES


def test_unknown_names_list_the_choices() -> None:
    with pytest.raises(ComplianceError, match=r"Could not resolve role 'auditor' among choices \['data_scientist'"):
        parse_role("auditor")
    with pytest.raises(ComplianceError, match="among choices \\['authored', 'reviewed', 'approved'\\]"):
        parse_meaning("witnessed")
    with pytest.raises(ComplianceError, match="unknown action"):
        may("qa", "delete_everything")
