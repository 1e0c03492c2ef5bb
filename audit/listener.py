"""The pipeline's hook into the ledger: every event becomes a signed entry.

Accounting by hook, not by reach: the runner attaches a :class:`LedgerListener` to its
event bus (:mod:`pharmafl.pipeline.events`); DP, aggregation and site code emit events and
never import :mod:`pharmafl.audit`. The listener duck-types events (``.type``,
``.actor``, ``.payload``) and does not import the pipeline either.

Each event is appended as an entry signed by the event's actor; an actor's public key is
registered (``actor_key`` entry) before its first entry. After every ``round_ended`` and
``run_ended`` the listener writes a signed Merkle checkpoint (signed tree head).

A failed append raises: a regulated run must stop rather than carry on unrecorded.

Usage in a run directory (``RUN/ledger.db``, keys in ``RUN/keys/``)::

    listener = LedgerListener.for_run(run_dir, passphrase_from_env())
    bus.attach(listener)
    ...
    bus.close()  # closes the listener and its ledger
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pharmafl.audit.errors import LedgerError
from pharmafl.audit.keys import DEFAULT_SCRYPT_N, KeyStore
from pharmafl.audit.ledger import Ledger

CHECKPOINT_AFTER = frozenset({"round_ended", "run_ended"})


class LedgerListener:
    """A pipeline :class:`~pharmafl.pipeline.events.Listener` that records into a ledger.

    Args:
        ledger: an open, writable :class:`Ledger`.
        checkpoint_signer: who signs checkpoints (default: the ledger's registrar).
        owns_ledger: close the ledger when the listener is closed.
    """

    def __init__(self, ledger: Ledger, *, checkpoint_signer: str | None = None, owns_ledger: bool = False):
        if ledger.keys is None:
            raise LedgerError(f"{ledger!r} is read-only; open it with keys=KeyStore(...) to record a run")
        self.ledger = ledger
        self.checkpoint_signer = checkpoint_signer or ledger.registrar
        self.owns_ledger = owns_ledger
        self.closed = False

    @classmethod
    def for_run(cls, run_dir: str | os.PathLike, passphrase: str, *, registrar: str = "server",
                scrypt_n: int = DEFAULT_SCRYPT_N) -> LedgerListener:
        """Open (or create) ``run_dir/ledger.db`` with keys in ``run_dir/keys/``."""
        run = Path(run_dir)
        keys = KeyStore(run / "keys", passphrase, scrypt_n=scrypt_n)
        return cls(Ledger.open(run / "ledger.db", keys, registrar=registrar), owns_ledger=True)

    def on_event(self, event: Any) -> None:
        """Append ``event`` (anything with ``.type``, ``.actor``, ``.payload``)."""
        if self.closed:
            raise LedgerError(f"event {event.type!r} arrived after the ledger listener was closed")
        self.ledger.append(event.actor, event.type, event.payload)
        if event.type in CHECKPOINT_AFTER:
            self.ledger.checkpoint(self.checkpoint_signer)

    def close(self) -> None:
        """Idempotent; closes the ledger if this listener owns it."""
        if not self.closed and self.owns_ledger:
            self.ledger.close()
        self.closed = True
