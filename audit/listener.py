"""The pipeline's hook into the ledger: every event becomes a signed entry.

Accounting by hook, not by reach: the runner attaches a :class:`LedgerListener` to its
event bus (:mod:`pharmafl.pipeline.events`); DP, aggregation and site code emit events and
never import :mod:`pharmafl.audit`. The listener duck-types events (``.type``,
``.actor``, ``.payload``) and does not import the pipeline either.

An event that carries a site's signed statement (``event.statement``) is appended by the
ledger's registrar (``server``, the coordinator signs the chain) with payload
``{"statement": <statement verbatim>, **event.annotations}``; the site's signature inside
is what makes it the site's (docs/trust-domains.md). Any other event is appended as an
entry signed by the event's actor, whose key the coordinator's key store must hold: for
:meth:`LedgerListener.for_run` only the system actors (``server``, ``access-control``) —
the listener never holds, or creates, a site's key. After every ``round_ended`` and
``run_ended`` (and ``run_resumed``) the listener writes a signed Merkle checkpoint (signed tree
head). :meth:`LedgerListener.head` is the latest one (a run's checkpoints name it).

Witnessing: ``run_started`` pins the consortium (``payload["consortium"]["cards"]``); its
sites are the log's witnesses. :meth:`LedgerListener.witness_requests` builds one request
per site for the latest checkpoint (the ``run_started`` entry as anchor on a site's first
request), and :meth:`LedgerListener.cosigned` stores the answers
(:meth:`~pharmafl.audit.ledger.Ledger.add_cosignatures`) and records a ``witness_refused``
entry ``{site, tree_size, reason}`` for each site that refused or failed.

A failed append raises: a regulated run must stop rather than carry on unrecorded.

Usage in a run directory (``RUN/ledger.db``, keys in ``RUN/keys/``)::

    listener = LedgerListener.for_run(run_dir, passphrase_from_env())
    bus.attach(listener)
    ...
    bus.close()  # closes the listener and its ledger
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pharmafl.audit.errors import LedgerError
from pharmafl.audit.keys import DEFAULT_SCRYPT_N, KeyStore
from pharmafl.audit.ledger import Ledger
from pharmafl.audit.messages import origin_of
from pharmafl.audit.storage import Storage

CHECKPOINT_AFTER = frozenset({"round_ended", "run_ended", "run_resumed"})
RUN_STARTED = "run_started"
WITNESS_REFUSED = "witness_refused"
SYSTEM_ACTORS = frozenset({"server", "access-control"})


@dataclass(frozen=True)
class _Run:
    """What ``run_started`` pinned: the log's origin, its witnesses' keys, the anchor entry."""

    run_id: str
    origin: str
    witness_keys: dict[str, bytes]
    anchor_seq: int

    @classmethod
    def of(cls, payload: Mapping[str, Any], seq: int) -> _Run | None:
        """The pinned witnesses of a ``run_started`` payload; None if it pins no consortium."""
        consortium = payload.get("consortium")
        if consortium is None:
            return None
        try:
            run_id = payload["run_id"]
            keys = {site: bytes.fromhex(card["public_key"]) for site, card in consortium["cards"].items()}
            if not isinstance(run_id, str) or not all(type(s) is str and len(k) == 32 for s, k in keys.items()):
                raise ValueError(run_id)
        except (AttributeError, KeyError, TypeError, ValueError):
            raise LedgerError(
                "run_started pins a consortium, so it needs a run_id string and consortium.cards "
                "mapping each site to a card with its 32-byte public_key in hex"
            ) from None
        return cls(run_id, origin_of(run_id), keys, seq)


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
        self._run: _Run | None = None
        self._looked_up = False  # the last run_started already searched for in the ledger

    @classmethod
    def for_run(
        cls, run_dir: str | os.PathLike, passphrase: str, *, registrar: str = "server", scrypt_n: int = DEFAULT_SCRYPT_N
    ) -> LedgerListener:
        """Open (or create) ``run_dir/ledger.db`` with keys in ``run_dir/keys/``, a key store
        that holds the coordinator's system actors only (``registrar``, ``access-control``)."""
        run = Path(run_dir)
        keys = KeyStore(run / "keys", passphrase, scrypt_n=scrypt_n, allowed=set(SYSTEM_ACTORS | {registrar}))
        return cls(Ledger.open(run / "ledger.db", keys, registrar=registrar), owns_ledger=True)

    def on_event(self, event: Any) -> None:
        """Append ``event`` (``.type``, ``.actor``, ``.payload``; optionally ``.statement``
        and ``.annotations``)."""
        if self.closed:
            raise LedgerError(f"event {event.type!r} arrived after the ledger listener was closed")
        statement = getattr(event, "statement", None)
        run = _Run.of(event.payload, -1) if event.type == RUN_STARTED else None  # refused before writing
        if statement is not None:
            annotations = dict(getattr(event, "annotations", None) or {})
            if "statement" in annotations:
                raise LedgerError(f"event {event.type!r}: an annotation may not be named 'statement'")
            entry = self.ledger.append(self.ledger.registrar, event.type, {"statement": statement, **annotations})
        else:
            entry = self.ledger.append(event.actor, event.type, event.payload)
        if event.type == RUN_STARTED:
            self._run = None if run is None else replace(run, anchor_seq=entry.seq)
            self._looked_up = True
        if event.type in CHECKPOINT_AFTER:
            self.ledger.checkpoint(self.checkpoint_signer)

    def head(self) -> dict | None:
        """The latest signed checkpoint as ``{tree_size, root_hash}`` (None before the first)."""
        checkpoints = self.ledger.checkpoints()
        return {"tree_size": checkpoints[-1].tree_size, "root_hash": checkpoints[-1].root_hash} if checkpoints else None

    # -- witnessing ----------------------------------------------------------------------

    def witness_requests(self) -> dict[str, dict]:
        """Site -> request to cosign the latest checkpoint, from the size that site last
        cosigned (0, with the ``run_started`` anchor, on its first request); empty when
        the run pins no consortium."""
        run = self._current_run()
        if run is None or not self.ledger.checkpoints():  # nothing to cosign yet (the run's first message)
            return {}
        last = self._last_cosigned(run)
        sizes = [cp.tree_size for cp in self.ledger.checkpoints() if cp.tree_size > run.anchor_seq]
        return {
            site: self.ledger.witness_request(
                last.get(site, 0),
                origin=run.origin,
                log_signer=self.checkpoint_signer,
                anchor_seq=None if site in last else run.anchor_seq,
                alternatives=[n for n in sizes if n > last.get(site, 0)][-8:],  # its answer may have been lost
            )
            for site in sorted(run.witness_keys)
        }

    def cosigned(self, responses: Mapping[str, Mapping[str, Any] | str]) -> dict[str, str]:
        """Store the sites' cosignatures; returns ``{site: reason}`` for every site that
        refused (a str answer), failed or sent a cosignature the ledger refused, each also
        recorded as a ``witness_refused`` entry by the registrar."""
        run = self._current_run()
        if run is None:
            if responses:
                raise LedgerError("cosignatures arrived but the run pins no consortium of witnesses")
            return {}
        checkpoints = self.ledger.checkpoints()
        size = checkpoints[-1].tree_size if checkpoints else 0
        refused: dict[str, str] = {}
        items: list[tuple[str, Mapping[str, Any]]] = []
        for site, answer in sorted(responses.items()):
            if site not in run.witness_keys:
                refused[site] = f"{site!r} is not a witness pinned by run_started"
            elif isinstance(answer, str):
                refused[site] = answer or "refused without a reason"
            elif not isinstance(answer, Mapping):
                refused[site] = f"answer is a {type(answer).__name__}, not a cosignature or a reason"
            elif answer.get("witness") != site:
                refused[site] = f"the cosignature names witness {answer.get('witness')!r}, not {site!r}"
            else:
                items.append((site, answer))
        stored = self.ledger.add_cosignatures([a for _, a in items], witness_keys=run.witness_keys, origin=run.origin)
        refused.update({site: stored[site] for site, _ in items if site in stored})
        if refused:
            self.ledger.append_many(
                [
                    (self.ledger.registrar, WITNESS_REFUSED, {"site": site, "tree_size": size, "reason": reason})
                    for site, reason in sorted(refused.items())
                ]
            )
        return dict(sorted(refused.items()))

    def _current_run(self) -> _Run | None:
        """The run being recorded: the last ``run_started`` (looked up once after a reopen)."""
        if self._run is None and not self._looked_up:
            with self.ledger.storage.read() as conn:
                last = None
                for entry in Storage.entries(conn, type_=RUN_STARTED):
                    last = entry
            self._looked_up = True
            if last is not None:
                self._run = _Run.of(last.data, last.seq)
        return self._run

    def _last_cosigned(self, run: _Run) -> dict[str, int]:
        """Site -> the largest tree size it cosigned in this run."""
        return {
            c.witness: c.tree_size
            for c in self.ledger.cosignatures()
            if c.witness in run.witness_keys and c.tree_size > run.anchor_seq
        }

    def close(self) -> None:
        """Idempotent; closes the ledger if this listener owns it."""
        if not self.closed and self.owns_ledger:
            self.ledger.close()
        self.closed = True
