"""Compliance errors: refusals a user meets, each saying what was refused and what to do.

All derive from :class:`~pharmafl.errors.PharmaflError` through :class:`ComplianceError`;
the CLI prints one line and exits 1. The two refusals Part 11 cares about have their own
types so that callers (and tests) can tell them apart:

* :class:`AuthenticationError`: unknown user or wrong password, locked or disabled
  account, expired password, an account whose owner has not yet set a password;
* :class:`AuthorityError`: an authenticated user whose role may not take the action
  (21 CFR 11.10(d), (g)).

Both are recorded in the ledger before they are raised.
"""

from __future__ import annotations

from pharmafl.errors import PharmaflError, RefusedError


class ComplianceError(PharmaflError):
    """A compliance operation was refused or its input is invalid."""


class AuthenticationError(ComplianceError, RefusedError):
    """The user could not be authenticated (recorded as ``login_failed`` / ``login_refused``)."""


class AuthorityError(ComplianceError, RefusedError):
    """The user's role may not take the action (recorded as ``action_refused``)."""
