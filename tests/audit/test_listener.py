"""The pipeline hook: events and site statements in; signed entries, checkpoints, cosignatures out."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from pharmafl.audit.errors import LedgerError
from pharmafl.audit.keys import KeyStore
from pharmafl.audit.ledger import Ledger
from pharmafl.audit.listener import LedgerListener
from pharmafl.audit.messages import make_statement
from pharmafl.audit.verify import verify
from pharmafl.audit.witness import Witness, WitnessError
from pharmafl.pipeline.events import EventBus, Listener

from .conftest import FAST_SCRYPT, PASSPHRASE, event
from .test_witness import ORIGIN, RUN_ID, SITES, consortium, make_witness, site_key


def statement(site: str, type_: str, round_: int | None, **payload) -> dict:
    """What a site signs at the site (sites/home.py does this with the site's own key)."""
    return make_statement(site_key(site).sign, run_id=RUN_ID, round=round_, site=site, type=type_, payload=payload)


def start(bus: EventBus, pinned: dict | None) -> None:
    extra = {} if pinned is None else {"consortium": pinned}
    bus.emit(
        "run_started",
        "server",
        run_id=RUN_ID,
        config={},
        config_hash="c" * 64,
        git_commit="g" * 40,
        versions={},
        seed=3,
        sites=list(SITES),
        manifests={s: "m" * 64 for s in SITES},
        privacy=None,
        **extra,
    )


def play_round(bus: EventBus, rnd: int) -> None:
    bus.emit("round_started", "server", round=rnd, sites=list(SITES))
    for site in SITES:
        bus.emit_statement(
            statement(
                site,
                "site_update",
                rnd,
                update_hash="a" * 64,
                num_examples=100,
                update_bytes=4096,
                metrics={"loss": 0.5},
            ),
            accepted=True,
            problem=None,
        )
        bus.emit_statement(
            statement(site, "clip", rnd, clip_norm=1.0, clipped=3, total=10, max_norm=2.5, mean_norm=0.5)
        )
    bus.emit(
        "aggregated",
        "server",
        round=rnd,
        participants=list(SITES),
        weights={s: 1 / 3 for s in SITES},
        aggregate_hash="b" * 64,
        checkpoint_hash="d" * 64,
        strategy="fedavg",
    )
    bus.emit("round_ended", "server", round=rnd, metrics={})


def witness_all(bus: EventBus, witnesses: dict[str, Witness]) -> dict[str, str]:
    """What an engine does after each checkpoint: deliver each request, hand the answers back."""
    answers: dict = {}
    for site, req in bus.witness_requests().items():
        try:
            answers[site] = witnesses[site].add_checkpoint(req)
        except WitnessError as err:
            answers[site] = str(err)
    return bus.cosigned(answers)


@pytest.fixture
def pinned() -> dict:
    return consortium({site: site_key(site) for site in SITES})


@pytest.fixture
def witnesses(tmp_path: Path, pinned: dict) -> dict[str, Witness]:
    return {site: make_witness(tmp_path / "homes", site, accepted={pinned["roster_sha256"]}) for site in SITES}


@pytest.fixture
def listener(tmp_path: Path):
    opened = LedgerListener.for_run(tmp_path / "run", PASSPHRASE, scrypt_n=FAST_SCRYPT)
    yield opened
    opened.close()


def test_is_a_pipeline_listener(ledger: Ledger) -> None:
    assert isinstance(LedgerListener(ledger), Listener)


def test_events_and_statements_become_entries_with_checkpoints(tmp_path: Path, listener: LedgerListener) -> None:
    bus = EventBus([listener])
    start(bus, None)
    bus.emit("round_started", "server", round=1, sites=["site-01"])
    clip = statement("site-01", "clip", 1, clip_norm=1.0, clipped=3, total=10, max_norm=2.5, mean_norm=0.5)
    bus.emit_statement(clip)
    bus.emit("site_failed", "server", round=1, site="site-02", error="timeout")
    bus.emit("round_ended", "server", round=1, metrics={})
    bus.emit("run_ended", "server", status="stopped", rounds=1, model_hash="h" * 64, metrics={})
    bus.close()
    assert listener.closed
    with Ledger.open(tmp_path / "run" / "ledger.db") as ledger:
        entries = list(ledger.entries())
        cps = ledger.checkpoints()
    assert [(e.actor, e.type) for e in entries] == [
        ("server", "actor_key"),
        ("server", "run_started"),
        ("server", "round_started"),
        ("server", "clip"),
        ("server", "site_failed"),
        ("server", "round_ended"),
        ("server", "run_ended"),
    ]
    assert entries[3].data == {"statement": clip}  # verbatim, signed by the site, chained by the server
    assert [c.tree_size for c in cps] == [6, 7] and all(c.signer == "server" for c in cps)


def test_a_statement_is_embedded_verbatim_with_the_coordinators_annotations(listener: LedgerListener) -> None:
    update = statement(
        "site-02", "site_update", 2, update_hash="a" * 64, num_examples=7, update_bytes=10, metrics={"auc": 0.75}
    )
    listener.on_event(
        SimpleNamespace(
            type="site_update",
            actor="site-02",
            payload={"ignored": True},
            statement=update,
            annotations={"accepted": False, "problem": "norm 9 > 5"},
        )
    )
    entry = list(listener.ledger.entries())[-1]
    assert (entry.actor, entry.type) == ("server", "site_update")
    assert entry.data == {"statement": update, "accepted": False, "problem": "norm 9 > 5"}
    assert json.loads(json.dumps(entry.data["statement"])) == update
    with pytest.raises(LedgerError, match="may not be named 'statement'"):
        listener.on_event(
            SimpleNamespace(type="clip", actor="site-02", payload={}, statement=update, annotations={"statement": {}})
        )


def test_the_coordinator_never_holds_or_creates_a_site_key(
    tmp_path: Path, listener: LedgerListener, pinned: dict, witnesses: dict
) -> None:
    bus = EventBus([listener])
    start(bus, pinned)
    play_round(bus, 1)
    witness_all(bus, witnesses)
    before = len(listener.ledger)
    with pytest.raises(LedgerError, match="holds keys only for access-control, server, not 'site-01'"):
        listener.on_event(event("clip", "site-01", round=2, clip_norm=1.0))  # a site event without a statement
    assert len(listener.ledger) == before
    keys = tmp_path / "run" / "keys"
    assert KeyStore(keys, PASSPHRASE).actors() == ["server"]
    assert sorted(p.name for p in keys.iterdir()) == ["server.key.json"]
    assert set(listener.ledger.registered_keys()) == {"server"}


def test_every_checkpoint_of_a_run_is_witnessed_by_the_sites(
    listener: LedgerListener, pinned: dict, witnesses: dict
) -> None:
    bus = EventBus([listener])
    start(bus, pinned)
    play_round(bus, 1)
    first = bus.witness_requests()
    assert sorted(first) == list(SITES)
    assert all(
        r["old_size"] == 0 and r["anchor"]["entry"]["type"] == "run_started" and r["origin"] == ORIGIN
        for r in first.values()
    )
    assert witness_all(bus, witnesses) == {}
    size = listener.ledger.checkpoints()[-1].tree_size
    play_round(bus, 2)
    later = bus.witness_requests()
    assert all(r["old_size"] == size and "anchor" not in r for r in later.values())
    assert witness_all(bus, witnesses) == {}
    bus.emit("run_ended", "server", status="completed", rounds=2, model_hash="9" * 64, metrics={})
    assert witness_all(bus, witnesses) == {}
    cps = listener.ledger.checkpoints()
    assert {(c.tree_size, c.witness) for c in listener.ledger.cosignatures()} == {
        (cp.tree_size, s) for cp in cps for s in SITES
    }
    run = verify(
        [
            (e.seq, e.ts, e.actor, e.type, e.payload, e.prev_hash, e.entry_hash, e.signature)
            for e in listener.ledger.entries()
        ],
        [json.loads(c.to_json_line()) for c in cps],
        [json.loads(c.to_json_line()) for c in listener.ledger.cosignatures()],
    )
    summary = run.result()
    assert (summary.entries, summary.checkpoints, summary.witnessed, summary.quorum, summary.sites) == (
        len(listener.ledger),
        3,
        3,
        2,
        3,
    )


def test_refusals_and_failures_are_recorded_as_witness_refused(
    listener: LedgerListener, pinned: dict, witnesses: dict
) -> None:
    bus = EventBus([listener])
    start(bus, pinned)
    play_round(bus, 1)
    requests = bus.witness_requests()
    good = witnesses["site-01"].add_checkpoint(requests["site-01"])
    forged = dict(witnesses["site-03"].add_checkpoint(requests["site-03"]), witness="site-02")
    size = listener.ledger.checkpoints()[-1].tree_size
    refused = bus.cosigned({"site-01": good, "site-02": forged, "site-03": "connection reset by peer"})
    assert sorted(refused) == ["site-02", "site-03"]
    assert "does not verify under its pinned key" in refused["site-02"]
    assert refused["site-03"] == "connection reset by peer"
    entries = list(listener.ledger.entries())[-2:]
    assert [(e.actor, e.type, e.data) for e in entries] == [
        ("server", "witness_refused", {"site": site, "tree_size": size, "reason": refused[site]})
        for site in ("site-02", "site-03")
    ]
    assert [c.witness for c in listener.ledger.cosignatures()] == ["site-01"]
    assert "anchor" not in bus.witness_requests()["site-01"]  # site-01 continues from its head
    assert bus.witness_requests()["site-02"]["old_size"] == 0  # the others start over


def test_a_cosignature_for_another_site_is_refused(listener: LedgerListener, pinned: dict, witnesses: dict) -> None:
    bus = EventBus([listener])
    start(bus, pinned)
    play_round(bus, 1)
    answer = witnesses["site-01"].add_checkpoint(bus.witness_requests()["site-01"])
    refused = bus.cosigned({"site-02": answer, "site-09": "hello"})
    assert "names witness 'site-01', not 'site-02'" in refused["site-02"]
    assert "not a witness pinned" in refused["site-09"]
    assert listener.ledger.cosignatures() == []


def test_no_consortium_no_witnesses(listener: LedgerListener) -> None:
    bus = EventBus([listener])
    start(bus, None)
    bus.emit("round_ended", "server", round=1, metrics={})
    assert bus.witness_requests() == {} and bus.cosigned({}) == {}
    with pytest.raises(LedgerError, match="pins no consortium"):
        bus.cosigned({"site-01": "refused"})


def test_reopening_a_run_continues_the_same_ledger_and_its_witnessing(
    tmp_path: Path, pinned: dict, witnesses: dict
) -> None:
    first = LedgerListener.for_run(tmp_path / "run", PASSPHRASE, scrypt_n=FAST_SCRYPT)
    bus = EventBus([first])
    start(bus, pinned)
    play_round(bus, 1)
    witness_all(bus, witnesses)
    size = first.ledger.checkpoints()[-1].tree_size
    bus.close()
    resumed = LedgerListener.for_run(tmp_path / "run", PASSPHRASE, scrypt_n=FAST_SCRYPT)
    bus = EventBus([resumed])
    play_round(bus, 2)
    assert {r["old_size"] for r in bus.witness_requests().values()} == {size}
    assert witness_all(bus, witnesses) == {}
    bus.close()


def test_event_after_close_and_bad_payload_are_loud(ledger: Ledger) -> None:
    listener = LedgerListener(ledger)
    with pytest.raises(LedgerError, match=r"payload of 'aggregated' by 'server'\['weights'\]"):
        listener.on_event(event("aggregated", "server", weights={1: 0.5}))
    listener.close()
    listener.close()  # idempotent
    with pytest.raises(LedgerError, match="after the ledger listener was closed"):
        listener.on_event(event("alarm", "server"))


def test_read_only_ledger_cannot_back_a_listener(tmp_path: Path, listener: LedgerListener) -> None:
    listener.on_event(event("alarm", "server", kind="x"))
    with Ledger.open(tmp_path / "run" / "ledger.db") as read_only, pytest.raises(LedgerError, match="read-only"):
        LedgerListener(read_only)


def test_wrong_passphrase_for_an_existing_run(tmp_path: Path, listener: LedgerListener) -> None:
    listener.on_event(event("alarm", "server", kind="x"))
    wrong = LedgerListener.for_run(tmp_path / "run", "wrong passphrase", scrypt_n=FAST_SCRYPT)
    with pytest.raises(LedgerError, match="wrong passphrase"):
        wrong.on_event(event("alarm", "server"))
    wrong.close()
    assert KeyStore(tmp_path / "run" / "keys", PASSPHRASE).actors() == ["server"]
