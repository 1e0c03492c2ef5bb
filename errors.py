"""One root error for pharmafl, with messages that say what to fix.

Every error a user can cause derives from :class:`PharmaflError`. Messages give the
expected and the actual value, the file and row, and the valid choices, so that the
message alone is enough to fix the input. (The standalone ledger verifier,
``pharmafl.audit.verify``, has an error type of its own: it imports nothing from the
project so that a regulator can read and run it alone.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

# The exit codes of every ``pharmafl`` command (README, ``pharmafl --help``).
EXIT_OK = 0  # success
EXIT_FAILED = 1  # verification failed, or the action was refused or failed
EXIT_USAGE = 2  # usage error or unreadable input: a missing file, a bad value, a bad option


class PharmaflError(Exception):
    """Root of every error pharmafl raises on bad input or a refused action.

    ``exit_code`` is what the CLI exits with: :data:`EXIT_USAGE` for bad or unreadable
    input (the default), :data:`EXIT_FAILED` for a :class:`RefusedError`.
    """

    exit_code: ClassVar[int] = EXIT_USAGE


class RefusedError(PharmaflError):
    """The input was readable but the action was refused or failed (a check, a party, a run)."""

    exit_code: ClassVar[int] = EXIT_FAILED


class ConfigError(PharmaflError):
    """A run configuration is malformed: unknown key, bad value, wrong type."""


class FetchError(PharmaflError):
    """A public dataset could not be fetched or failed its pinned checksum."""


class FeaturizationError(PharmaflError):
    """A molecule or sequence could not be turned into model input."""


@dataclass(frozen=True)
class Location:
    """Where a bad value sits: file, 1-based data row (header excluded), column, id."""

    file: str | Path | None = None
    row: int | None = None
    column: str | None = None
    ident: str | None = None

    def __str__(self) -> str:
        parts = []
        if self.file is not None:
            parts.append(str(self.file))
        if self.row is not None:
            parts.append(f"row {self.row}")
        if self.column is not None:
            parts.append(f"column {self.column!r}")
        if self.ident is not None:
            parts.append(f"id {self.ident!r}")
        return ", ".join(parts) if parts else "<input>"


class DataError(PharmaflError):
    """A data table is malformed. ``location`` says where; ``fix`` says what to do."""

    def __init__(self, problem: str, location: Location | None = None, fix: str | None = None):
        self.problem = problem
        self.location = location or Location()
        self.fix = fix
        message = f"{self.location}: {problem}"
        if fix:
            message += f" ({fix})"
        super().__init__(message)
