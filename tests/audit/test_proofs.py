"""Proofs from a stored ledger, checked against its signed checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from pharmafl.audit import proofs
from pharmafl.audit.errors import LedgerError
from pharmafl.audit.ledger import Ledger
from pharmafl.audit.rfc9162 import verify_consistency, verify_inclusion

from .assets.make_fixtures import LedgerBuilder, write_db


@pytest.fixture
def recorded(tmp_path: Path):
    b = LedgerBuilder().run()  # 31 entries, 4 checkpoints
    with Ledger.open(write_db(tmp_path / "ledger.db", b.entries, b.checkpoints, b.cosignatures)) as ledger:
        yield ledger


def test_inclusion_defaults_to_the_latest_checkpoint(recorded: Ledger) -> None:
    proof = proofs.inclusion(recorded, 5)
    last = recorded.checkpoints()[-1]
    assert proof["verified"] and proof["tree_size"] == last.tree_size
    assert proof["checkpoint"]["root_hash"] == proof["root_hash"] == last.root_hash
    assert proof["entry"]["seq"] == 5 and len(proof["proof"]) <= (last.tree_size - 1).bit_length()
    hexes = [bytes.fromhex(h) for h in proof["proof"]]
    assert verify_inclusion(
        5, proof["tree_size"], bytes.fromhex(proof["leaf_hash"]), hexes, bytes.fromhex(proof["root_hash"])
    )


def test_consistency_between_two_checkpoints(recorded: Ledger) -> None:
    first, last = recorded.checkpoints()[0], recorded.checkpoints()[-1]
    proof = proofs.consistency(recorded, first.tree_size, last.tree_size)
    assert proof["verified"]
    assert (proof["old_root"], proof["new_root"]) == (first.root_hash, last.root_hash)
    assert verify_consistency(
        first.tree_size,
        last.tree_size,
        bytes.fromhex(first.root_hash),
        bytes.fromhex(last.root_hash),
        [bytes.fromhex(h) for h in proof["proof"]],
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda led: proofs.inclusion(led, 99), "seq 99 is not in a tree of 31 entries"),
        (lambda led: proofs.inclusion(led, 3, tree_size=40), "tree size 40 is out of range"),
        (lambda led: proofs.consistency(led, 10, 5), "0 < OLD <= NEW"),
    ],
)
def test_out_of_range_requests_say_what_is_valid(recorded: Ledger, call, message: str) -> None:
    with pytest.raises(LedgerError, match=message):
        call(recorded)
