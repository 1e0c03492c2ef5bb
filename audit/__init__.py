"""The audit ledger: append-only, hash-chained, signed, Merkle-checkpointed.

Importing this package is cheap (no SQLAlchemy, no torch): names are loaded on first use,
so ``python -m pharmafl.audit.verify`` runs where only ``cryptography`` is installed.

=======================  ==================================================================
``Ledger``               open/create, ``append``/``record``/``append_many``, ``checkpoint``
``KeyStore``             passphrase-encrypted Ed25519 keys, ``get_or_create(actor)``
``LedgerListener``       pipeline listener; ``LedgerListener.for_run(run_dir, passphrase)``
``export``               evidence bundle (JSONL, Parquet, keys, checkpoints, manifest)
``verify_path``          the standalone verifier (``VerificationError`` on failure)
``LedgerError``          every refusal on the writing side
=======================  ==================================================================
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Checkpoint": "records",
    "Entry": "records",
    "KeyStore": "keys",
    "Ledger": "ledger",
    "LedgerError": "errors",
    "LedgerListener": "listener",
    "VerificationError": "verify",
    "export": "bundle",
    "passphrase_from_env": "keys",
    "verify_path": "verify",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pharmafl.audit' has no attribute {name!r}; available: {', '.join(__all__)}")
    value = getattr(importlib.import_module(f"pharmafl.audit.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
