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
ROSTER = str(ASSETS / "consortium.json")
CLEAN = [json.loads(line) for line in (ASSETS / "ledger_clean" / "entries.jsonl").read_text().splitlines()]


def _who(entry: dict) -> str:
    return (entry["payload"].get("statement") or {}).get("site", entry["actor"])


# What each attack targeted in the clean ledger (type, who asserts it), so a drifting fixture cannot pass silently.
TARGETS = {
    "payload_byte_flipped": ("site_update", "site-02"),
    "statement_forged_by_coordinator": ("privacy_spent", "site-03"),
    "statement_payload_edited": ("privacy_spent", "site-03"),
    "statement_missing": ("site_update", "site-01"),
    "forged_entry_inserted": ("privacy_spent", "site-01"),
    "statement_replayed": ("clip", "site-02"),
    "statement_other_run": ("site_update", "site-02"),
    "statement_unpinned_site": ("clip", "site-03"),
    "entry_deleted": ("clip", "site-01"),
    "reordered": ("site_update", "site-03"),
    "truncated_tail": ("round_started", "server"),
    "checkpoint_without_quorum": ("round_ended", "server"),
    "cosignature_unpinned_key": ("round_ended", "server"),
    "signature_replaced": ("site_update", "site-03"),
    "checkpoint_disagrees": ("round_ended", "server"),
    "rewritten_fresh_keys": ("actor_key", "server"),
}
APPENDED = {"actor_rekeyed", "user_key_by_registrar", "second_run_started", "truncated_and_reextended"}


def test_every_attack_has_a_fixture() -> None:
    assert set(ATTACKS) == set(TARGETS) | APPENDED
    assert all((ASSETS / f"ledger_{name}" / "manifest.json").is_file() for name in ATTACKS)


def test_the_clean_fixture_verifies_with_every_anchor() -> None:
    summary = verify_path(
        str(ASSETS / "ledger_clean"), trusted_head=TRUSTED_HEAD, trusted_keys=TRUSTED_KEYS, roster=ROSTER
    )
    assert summary.line().startswith(
        f"OK: {len(CLEAN)} entries, 4 checkpoints (3 witnessed, quorum 2 of 3 sites), head "
    )


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attack_is_caught_at_the_first_bad_entry(attack: str) -> None:
    expected = ATTACKS[attack]
    bundle = str(ASSETS / f"ledger_{attack}")
    if expected.get("passes_without_anchor"):
        assert verify_path(bundle).line().startswith("OK: ")  # the documented limit: invisible from inside
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
        assert not err.value.unreadable


def test_a_rewritten_run_fails_against_the_roster_the_sites_agreed_to() -> None:
    with pytest.raises(VerificationError, match="pins another roster than the trusted") as err:
        verify_path(str(ASSETS / "ledger_rewritten_fresh_keys"), roster=ROSTER, jobs=1)
    assert err.value.seq == 1


@pytest.mark.parametrize("attack", sorted(TARGETS))
def test_fixture_hits_the_entry_it_was_built_to_hit(attack: str) -> None:
    seq = ATTACKS[attack]["seq"]
    assert (CLEAN[seq]["type"], _who(CLEAN[seq])) == TARGETS[attack]


@pytest.mark.parametrize("attack", sorted(APPENDED))
def test_appended_attacks_start_right_after_the_clean_ledger_or_inside_it(attack: str) -> None:
    entries = [json.loads(x) for x in (ASSETS / f"ledger_{attack}" / "entries.jsonl").read_text().splitlines()]
    assert entries[: min(len(entries), len(CLEAN)) - 2] == CLEAN[: min(len(entries), len(CLEAN)) - 2]
    assert ATTACKS[attack]["seq"] < len(entries)


def test_fixtures_are_reproducible_from_the_script(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ASSETS / "make_fixtures.py"), str(tmp_path)], check=True, capture_output=True)

    def files(root: Path) -> list[Path]:
        return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc"))

    assert files(ASSETS) == files(tmp_path)
    for rel in files(ASSETS):
        assert (ASSETS / rel).read_bytes() == (tmp_path / rel).read_bytes(), rel
