"""The coordinator's side of witnessing: witness requests out, checked cosignatures in."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from pharmafl.audit.errors import LedgerError
from pharmafl.audit.keys import KeyStore, raw_public_key
from pharmafl.audit.ledger import Ledger
from pharmafl.audit.merkle import leaf_hash
from pharmafl.audit.records import Cosignature
from pharmafl.audit.rfc9162 import verify_consistency, verify_inclusion

from .test_witness import ORIGIN, SITES, coordinator, extend, make_witness, pinned, request, site_key  # noqa: F401 - fixtures shared with the witness tests

WITNESS_KEYS = {site: raw_public_key(site_key(site)) for site in SITES}


@pytest.fixture
def witnesses(tmp_path: Path, pinned: dict) -> dict:
    return {site: make_witness(tmp_path / "w", site, accepted={pinned["roster_sha256"]}) for site in SITES}


def add(ledger: Ledger, items: list[dict], keys: dict = WITNESS_KEYS) -> dict[str, str]:
    return ledger.add_cosignatures(items, witness_keys=keys, origin=ORIGIN)


def test_witness_request_carries_the_head_the_log_key_and_proofs(coordinator: Ledger) -> None:
    first = request(coordinator)
    cp = coordinator.checkpoints()[-1]
    assert set(first) == {"origin", "checkpoint", "log_key", "old_size", "proof", "anchor"}
    assert first["checkpoint"] == json.loads(cp.to_json_line()) and first["origin"] == ORIGIN
    assert first["log_key"] == coordinator.registered_keys()["server"]["public_key"]
    assert (first["old_size"], first["proof"]) == (0, [])
    entries = list(coordinator.entries())
    assert first["anchor"]["entry"] == json.loads(entries[1].to_json_line()) and entries[1].type == "run_started"
    path = [bytes.fromhex(h) for h in first["anchor"]["proof"]]
    assert verify_inclusion(1, cp.tree_size, entries[1].leaf_hash(), path, bytes.fromhex(cp.root_hash))
    size = extend(coordinator, "round 2")
    later = request(coordinator, cp.tree_size)
    assert "anchor" not in later and later["checkpoint"]["tree_size"] == size
    new_root, proof = bytes.fromhex(later["checkpoint"]["root_hash"]), [bytes.fromhex(h) for h in later["proof"]]
    assert verify_consistency(cp.tree_size, size, bytes.fromhex(cp.root_hash), new_root, proof)
    assert request(coordinator, size)["proof"] == []
    leaf = bytes.fromhex(entries[1].entry_hash) + bytes.fromhex(entries[1].signature)
    assert leaf_hash(leaf) == entries[1].leaf_hash()  # what the witness recomputes


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"old_size": 99}, "old_size 99 must be an int within 0..5"),
        ({"old_size": -1}, "old_size -1 must be"),
        ({"anchor_seq": 5}, "anchor_seq 5 must be an entry under the checkpoint"),
        ({"log_signer": "site-01"}, "signed by 'server', not the log signer 'site-01'"),
    ],
)
def test_witness_request_refuses_what_no_witness_could_check(coordinator: Ledger, kwargs: dict, message: str) -> None:
    args = {"old_size": 0, "origin": ORIGIN, "log_signer": "server", "anchor_seq": 1} | kwargs
    with pytest.raises(LedgerError, match=message):
        coordinator.witness_request(args.pop("old_size"), **args)


def test_witness_request_needs_a_checkpoint(ledger: Ledger) -> None:
    ledger.record("server", "run_started", run_id="r")
    with pytest.raises(LedgerError, match="no checkpoint to witness yet"):
        ledger.witness_request(0, origin=ORIGIN, log_signer="server", anchor_seq=1)


def test_valid_cosignatures_are_stored_and_idempotent(coordinator: Ledger, witnesses: dict) -> None:
    answers = [witnesses[s].add_checkpoint(request(coordinator)) for s in SITES]
    assert add(coordinator, answers) == {}
    assert add(coordinator, answers[:1]) == {}  # the same again: accepted, stored once
    stored = coordinator.cosignatures()
    assert stored == [Cosignature(5, a["witness"], a["timestamp"], a["signature"]) for a in answers]
    assert stored[0].to_json_line() == json.dumps(dict(sorted(answers[0].items())), separators=(",", ":"))


def test_wrong_key_wrong_size_and_bad_signature_are_refused(coordinator: Ledger, witnesses: dict) -> None:
    good = witnesses["site-01"].add_checkpoint(request(coordinator))
    other = witnesses["site-02"].add_checkpoint(request(coordinator))
    items = [
        dict(good, witness="site-03"),  # site-01's signature passed off as site-03's
        dict(other, tree_size=4),  # not a checkpoint's size
        dict(good, signature=good["signature"][:-1] + ("0" if good["signature"][-1] != "0" else "1")),
        {"witness": "site-09", **{k: v for k, v in good.items() if k != "witness"}},
        dict(good, timestamp=good["timestamp"] + 1),
        {"witness": "site-02"},
    ]
    refused = {}
    for item in items:  # one call each: the first reason per witness is reported
        refused.setdefault(item["witness"], []).append(next(iter(add(coordinator, [item]).values())))
    assert "does not verify under its pinned key" in refused["site-03"][0]
    assert "tree size 4, which is not a checkpoint" in refused["site-02"][0]
    assert "does not verify" in refused["site-01"][0] and "does not verify" in refused["site-01"][1]
    assert "'site-09' is not pinned" in refused["site-09"][0]
    assert "{witness, tree_size, timestamp, signature}" in refused["site-02"][1]
    assert coordinator.cosignatures() == []
    assert add(coordinator, [good], keys={"site-01": WITNESS_KEYS["site-02"]}) != {}  # pinned to another key


def test_a_different_cosignature_of_a_stored_one_is_refused(coordinator: Ledger, witnesses: dict) -> None:
    first = witnesses["site-01"].add_checkpoint(request(coordinator))
    again = witnesses["site-01"].add_checkpoint(request(coordinator, 5))  # a re-cosign, later timestamp
    assert add(coordinator, [first]) == {}
    assert "already has a different cosignature of tree size 5" in add(coordinator, [again])["site-01"]
    assert coordinator.cosignatures() == [Cosignature(5, "site-01", first["timestamp"], first["signature"])]


def test_valid_ones_are_stored_even_when_others_are_refused(coordinator: Ledger, witnesses: dict) -> None:
    good = witnesses["site-01"].add_checkpoint(request(coordinator))
    bad = dict(witnesses["site-02"].add_checkpoint(request(coordinator)), tree_size=2)
    assert list(add(coordinator, [good, bad])) == ["site-02"]
    assert [c.witness for c in coordinator.cosignatures()] == ["site-01"]


def test_read_only_ledger_stores_no_cosignatures(coordinator: Ledger, witnesses: dict) -> None:
    good = witnesses["site-01"].add_checkpoint(request(coordinator))
    with Ledger.open(coordinator.storage.url) as read_only, pytest.raises(LedgerError, match="read-only"):
        add(read_only, [good])


def _sqlite(ledger: Ledger) -> sqlite3.Connection:
    return sqlite3.connect(ledger.storage.url.removeprefix("sqlite:///"))


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger_cosignatures SET timestamp = 1",
        "DELETE FROM ledger_cosignatures",
        "INSERT OR REPLACE INTO ledger_cosignatures SELECT * FROM ledger_cosignatures",
        "INSERT INTO ledger_cosignatures VALUES (4, 'site-03', 1, 'ab')",  # no checkpoint of size 4
    ],
)
def test_database_refuses_changes_to_cosignatures(coordinator: Ledger, witnesses: dict, statement: str) -> None:
    add(coordinator, [witnesses["site-01"].add_checkpoint(request(coordinator))])
    before = coordinator.cosignatures()
    with _sqlite(coordinator) as conn, pytest.raises(sqlite3.IntegrityError, match="pharmafl ledger"):
        conn.execute(statement)
    assert coordinator.cosignatures() == before


def test_a_ledger_from_before_cosignatures_reads_none(tmp_path: Path, keystore: KeyStore) -> None:
    with Ledger.open(tmp_path / "l.db", keystore) as ledger:
        ledger.record("server", "run_started", run_id="r")
    with sqlite3.connect(tmp_path / "l.db") as conn:
        conn.execute("DROP TABLE ledger_cosignatures")
    with Ledger.open(tmp_path / "l.db") as old:
        assert old.cosignatures() == []
    with Ledger.open(tmp_path / "l.db", keystore) as reopened:  # opening to write adds the table
        assert reopened.cosignatures() == [] and len(reopened) == 2
