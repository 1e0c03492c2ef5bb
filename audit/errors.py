"""The ledger's error: a :class:`~pharmafl.errors.PharmaflError` that says what to fix.

Every refusal on the writing side of the ledger (a payload that is not canonical JSON, a
wrong passphrase, an append that lost a race too often, an UPDATE the database refused)
raises :class:`LedgerError`. The standalone verifier has its own
:class:`~pharmafl.audit.verify.VerificationError` because it imports nothing from the
project.
"""

from __future__ import annotations

from pharmafl.errors import PharmaflError


class LedgerError(PharmaflError):
    """A ledger operation was refused; the message names what, where, and how to fix it."""
