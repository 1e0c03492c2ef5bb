"""Roles and what each may do: the authority checks of 21 CFR 11.10(d) and (g).

===================  ===================================================================
role                 may
===================  ===================================================================
``data_scientist``   run jobs, generate reports, sign as ``authored``
``qa``               generate reports, sign as ``authored``, ``reviewed``, ``approved``,
                     export evidence packages
``regulator``        read and verify: export evidence packages; changes nothing
``admin``            manage users (create, change roles, unlock, disable, set the policy)
===================  ===================================================================

Every user may log in and change their own password. Separation of duties: an admin
cannot sign or generate reports, a QA user cannot create users, nobody changes their own
role, and no one holding admin is given a signing role (:data:`SIGNING_ROLES`). The table is data
(:data:`PERMISSIONS`) and one pure function (:func:`may`); the standalone evidence
verifier carries its own copy of the signing rows to re-check signatures offline.
"""

from __future__ import annotations

from enum import Enum

from pharmafl.compliance.errors import ComplianceError


class Role(str, Enum):
    DATA_SCIENTIST = "data_scientist"
    QA = "qa"
    REGULATOR = "regulator"
    ADMIN = "admin"


MEANINGS = ("authored", "reviewed", "approved")

PERMISSIONS: dict[str, frozenset[Role]] = {
    "run_jobs": frozenset({Role.DATA_SCIENTIST}),
    "generate_report": frozenset({Role.DATA_SCIENTIST, Role.QA}),
    "sign:authored": frozenset({Role.DATA_SCIENTIST, Role.QA}),
    "sign:reviewed": frozenset({Role.QA}),
    "sign:approved": frozenset({Role.QA}),
    "export_evidence": frozenset({Role.QA, Role.REGULATOR}),
    "manage_users": frozenset({Role.ADMIN}),
}


SIGNING_ROLES = frozenset().union(*(roles for action, roles in PERMISSIONS.items() if action.startswith("sign:")))
"""Roles that may sign: never given to anyone who holds admin (separation of duties)."""


def parse_role(text: str) -> Role:
    """The role named ``text``; a clear error listing the valid roles otherwise."""
    try:
        return Role(text)
    except ValueError:
        raise ComplianceError(f"Could not resolve role {text!r} among choices {[r.value for r in Role]}") from None


def parse_meaning(text: str) -> str:
    if text not in MEANINGS:
        raise ComplianceError(f"Could not resolve signature meaning {text!r} among choices {list(MEANINGS)}")
    return text


def may(role: Role | str, action: str) -> bool:
    """Whether ``role`` may take ``action`` (a key of :data:`PERMISSIONS`)."""
    if action not in PERMISSIONS:
        raise ComplianceError(f"unknown action {action!r}; valid: {', '.join(PERMISSIONS)}")
    return Role(role) in PERMISSIONS[action]


def roles_for(action: str) -> list[str]:
    """The roles that may take ``action``, sorted (for messages)."""
    return sorted(r.value for r in PERMISSIONS[action])
