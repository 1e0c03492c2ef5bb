"""Events the pipeline emits, and the listener interface that records them.

Accounting by hook, not by reach: training, DP and aggregation code emit plain events
through an :class:`EventBus`; whoever needs a record (the audit ledger, TensorBoard, the
console) attaches a :class:`Listener`. Nothing here imports ``pharmafl.audit``.

An event is ``(type, actor, payload)``. ``actor`` names who acts: ``"server"``,
``"site-03"``, ``"user:alice"``. ``payload`` is a JSON-serializable mapping (str keys;
values str, int, float, bool, None, lists and dicts of those). Hashes are lowercase hex
SHA-256 strings.

Event types and their payload keys (a listener must accept extra keys):

===================  =========  ==============================================================
type                 actor      payload
===================  =========  ==============================================================
run_started          server     run_id, config (dict), config_hash, git_commit, versions (dict
                                name->version), seed, sites (list of site ids),
                                manifests (site id -> manifest sha256), privacy (None, or the
                                settings, what ε protects in words, and every party's plan)
run_resumed          server     run_id, session (2, 3, ...), from_round (last completed round,
                                0: none), steps_done, next_round, interrupted_rounds (begun,
                                never completed: redone under new numbers), checkpoint_hash
                                (None: the initial model), server_state_hash, previous_status
                                (None: the session ended without run_ended), reason, engine,
                                git_commit, versions
round_started        server     round, step (the logical round, 1..federation.rounds: round
                                numbers are never reused, so after a resume they differ),
                                sites (list of site ids selected)
site_update          site-XX    round, update_hash (sha256 of the serialized update exactly as
                                sent), num_examples, update_bytes, metrics, accepted (bool),
                                problem (why it was rejected, or None)
clip                 site-XX    round, clip_norm, clipped, total, max_norm, mean_norm
privacy_spent        site-XX    round, epsilon_round, epsilon_total, delta, budget (None:
                     or server  none), accountant, noise_multiplier, sample_rate, steps,
                                privacy_unit, noise_source (server, client-level DP: also
                                clip_norm and participants)
site_declined        site-XX    round, reason, plus numbers (epsilon_total, epsilon_if_trained,
                                budget, delta, accountant)
secure_shares        site-XX    round, commitment (salted sha256 of the plaintext update),
                                share_hashes (party -> sha256 of the ciphertext sent to it),
                                envelope_hash, num_examples (secure aggregation only)
bound_check          server     round, site, passed (bool), max_update_norm, slack, sketches,
                                buckets, sketch_seed (secure aggregation: the MPC norm check)
site_failed          server     round, site, error
site_timed_out       server     round, site, timeout_s, waited_s (no answer within
                                federation.round_timeout_s; the round goes on without it)
aggregated           server     round, participants (list), weights (site id -> float),
                                aggregate_hash, checkpoint_hash, strategy (secure aggregation:
                                also secure {parties, sum_hash, excluded (site -> why),
                                seconds})
alarm                server     round, kind, site (or None), message
round_ended          server     round, step, metrics ({"sites": {...}, "global": {...}}),
                                diagnostics (update norms, cosine matrix, cosine to the mean),
                                server_state_hash (the strategy's and monitors' state after the
                                round, as the round's checkpoint holds it)
run_ended            server     status ("completed", "stopped: <why>" or "failed: <error>"),
                                rounds (completed, over all sessions), model_hash, metrics
                                (dict); once per session: a stopped or failed run resumes
===================  =========  ==============================================================

Whatever a site asserts (``site_update``, ``clip``, ``privacy_spent`` of a site,
``site_declined``, ``secure_shares``) — and what an aggregation party asserts
(``party_registered``, ``party_round``, ``party_refused``: the party's id is the
statement's ``site``) — reaches the bus as its signer's own signed statement
(:meth:`EventBus.emit_statement`, format in ``docs/trust-domains.md``): the event's payload
is the statement's round and payload plus the coordinator's annotations, and the event
keeps the statement verbatim for the ledger, which embeds it in the coordinator's entry.

The ledger writes a signed Merkle checkpoint after every ``round_ended``, ``run_resumed`` and
``run_ended``; an engine then asks the bus for the witness requests of that checkpoint
(:meth:`EventBus.witness_requests`), delivers each to its site's witness and hands the
answers back (:meth:`EventBus.cosigned`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

RUN_STARTED = "run_started"
RUN_RESUMED = "run_resumed"
ROUND_STARTED = "round_started"
SITE_UPDATE = "site_update"
CLIP = "clip"
PRIVACY_SPENT = "privacy_spent"
SITE_DECLINED = "site_declined"
SECURE_SHARES = "secure_shares"
BOUND_CHECK = "bound_check"
SITE_FAILED = "site_failed"
SITE_TIMED_OUT = "site_timed_out"
AGGREGATED = "aggregated"
ALARM = "alarm"
ROUND_ENDED = "round_ended"
RUN_ENDED = "run_ended"
PARTY_REGISTERED = "party_registered"
PARTY_ROUND = "party_round"
PARTY_REFUSED = "party_refused"

EVENT_TYPES = (
    RUN_STARTED,
    RUN_RESUMED,
    ROUND_STARTED,
    SITE_UPDATE,
    CLIP,
    PRIVACY_SPENT,
    SITE_DECLINED,
    SECURE_SHARES,
    BOUND_CHECK,
    SITE_FAILED,
    SITE_TIMED_OUT,
    AGGREGATED,
    ALARM,
    ROUND_ENDED,
    RUN_ENDED,
    PARTY_REGISTERED,
    PARTY_ROUND,
    PARTY_REFUSED,
)


@dataclass(frozen=True)
class Event:
    """One thing that happened in a run."""

    type: str
    actor: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    statement: Mapping[str, Any] | None = None  # the site's signed statement, verbatim
    annotations: Mapping[str, Any] | None = None  # what the coordinator adds to it (e.g. accepted)


@runtime_checkable
class Listener(Protocol):
    """Receives every event of a run, in emission order."""

    def on_event(self, event: Event) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class Witnessed(Protocol):
    """A listener that writes checkpoints the sites cosign (the ledger)."""

    def witness_requests(self) -> dict[str, dict]: ...

    def cosigned(self, responses: Mapping[str, Any]) -> dict[str, str]: ...


@runtime_checkable
class Headed(Protocol):
    """A listener that keeps signed checkpoints (the ledger): its latest one, ``{tree_size, root_hash}``."""

    def head(self) -> dict | None: ...


class EventBus:
    """Fans events out to listeners, in the order they were attached."""

    def __init__(self, listeners: Iterable[Listener] = ()):
        self._listeners: list[Listener] = list(listeners)

    def attach(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def emit(self, type: str, actor: str, **payload: Any) -> Event:
        if type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type!r}; valid: {', '.join(EVENT_TYPES)}")
        event = Event(type=type, actor=actor, payload=payload)
        for listener in self._listeners:
            listener.on_event(event)
        return event

    def emit_statement(self, statement: Mapping[str, Any], **annotations: Any) -> Event:
        """Emit a site's signed statement (checked by the caller) with the coordinator's annotations."""
        type_ = statement["type"]
        if type_ not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type_!r}; valid: {', '.join(EVENT_TYPES)}")
        payload = {"round": statement["round"], **statement["payload"], **annotations}
        event = Event(type_, statement["site"], payload, statement=statement, annotations=annotations)
        for listener in self._listeners:
            listener.on_event(event)
        return event

    def witness_requests(self) -> dict[str, dict]:
        """Site id -> request to cosign the latest checkpoint (empty without a witnessed ledger)."""
        out: dict[str, dict] = {}
        for listener in self._listeners:
            if isinstance(listener, Witnessed):
                out.update(listener.witness_requests())
        return out

    def cosigned(self, responses: Mapping[str, Any]) -> dict[str, str]:
        """Hand the sites' answers (a cosignature, or why not) to the ledger; returns refusals."""
        refused: dict[str, str] = {}
        for listener in self._listeners:
            if isinstance(listener, Witnessed):
                refused.update(listener.cosigned(responses))
        return refused

    def ledger_head(self) -> dict | None:
        """The latest signed checkpoint of the run's ledger (None: no ledger, or none written yet)."""
        for listener in self._listeners:
            if isinstance(listener, Headed):
                return listener.head()
        return None

    def close(self) -> None:
        """Close every listener; the first error is raised after all were tried."""
        first: BaseException | None = None
        for listener in self._listeners:
            try:
                listener.close()
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                first = first or exc
        if first is not None:
            raise first
