"""Every tamper fixture fails verification at the right entry (fixtures: assets/ledger_<attack>/)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pharmafl.audit.verify import VerificationError, verify_path

from .conftest import ASSETS

ATTACKS = json.loads((ASSETS / "attacks.json").read_text())
TRUSTED_HEAD = str(ASSETS / "trusted_head.json")
TRUSTED_KEYS = str(ASSETS / "ledger_clean" / "keys.json")
CLEAN = [json.loads(line) for line in (ASSETS / "ledger_clean" / "entries.jsonl").read_text().splitlines()]

# What each attack targeted in the clean ledger, so a drifting fixture cannot pass silently.
TARGETS = {
    "payload_byte_flipped": ("site_update", "site-02"),
    "epsilon_edited": ("privacy_spent", "site-03"),
    "entry_deleted": ("clip", "site-01"),
    "forged_entry_inserted": ("privacy_spent", "site-01"),
    "reordered": ("site_update", "site-03"),
    "truncated_tail": ("round_started", "server"),
    "signature_replaced": ("site_update", "site-03"),
    "checkpoint_disagrees": ("round_ended", "server"),
    "rewritten_fresh_keys": ("actor_key", "server"),
}


def test_every_attack_in_the_issue_has_a_fixture() -> None:
    assert set(ATTACKS) == set(TARGETS) | {"actor_rekeyed"}
    assert all((ASSETS / f"ledger_{name}" / "manifest.json").is_file() for name in ATTACKS)


def test_the_clean_fixture_verifies_with_both_anchors() -> None:
    summary = verify_path(str(ASSETS / "ledger_clean"), trusted_head=TRUSTED_HEAD, trusted_keys=TRUSTED_KEYS)
    assert summary.startswith(f"OK: {len(CLEAN)} entries, 3 checkpoints, head ")


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attack_is_caught_at_the_first_bad_entry(attack: str) -> None:
    expected = ATTACKS[attack]
    bundle = str(ASSETS / f"ledger_{attack}")
    if expected.get("passes_without_anchor"):
        assert verify_path(bundle).startswith("OK: ")  # the documented limit: invisible from inside
        anchors = [{"trusted_head": TRUSTED_HEAD}]
        if attack == "rewritten_fresh_keys":
            anchors.append({"trusted_keys": TRUSTED_KEYS})
    else:
        anchors = [{}]
    for anchor in anchors:
        with pytest.raises(VerificationError) as err:
            verify_path(bundle, **anchor, jobs=1)
        assert err.value.seq == expected["seq"], str(err.value)
        assert expected["reason"] in err.value.reason


@pytest.mark.parametrize("attack", sorted(TARGETS))
def test_fixture_hits_the_entry_it_was_built_to_hit(attack: str) -> None:
    seq = ATTACKS[attack]["seq"]
    assert (CLEAN[seq]["type"], CLEAN[seq]["actor"]) == TARGETS[attack]


def test_rekeyed_actor_was_a_real_second_registration() -> None:
    entries = [json.loads(x) for x in (ASSETS / "ledger_actor_rekeyed" / "entries.jsonl").read_text().splitlines()]
    seq = ATTACKS["actor_rekeyed"]["seq"]
    assert seq == len(CLEAN)
    assert entries[seq]["type"] == "actor_key" and entries[seq]["payload"]["actor"] == "site-02"


def test_fixtures_are_reproducible_from_the_script(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ASSETS / "make_fixtures.py"), str(tmp_path)], check=True,
                   capture_output=True)
    committed = sorted(p.relative_to(ASSETS) for p in ASSETS.rglob("*") if p.is_file() and p.suffix != ".py")
    regenerated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert committed == regenerated
    for rel in committed:
        assert (ASSETS / rel).read_bytes() == (tmp_path / rel).read_bytes(), rel
