"""The trust-domain policy (docs/trust-domains.md): pinned site cards, site statements, witness quorum,
self-enrolled user keys, and malformed input as one clear error. Each attack is built here the way the
coordinator could build it (holding the server key and the database, never a site's key)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest

from pharmafl.audit import messages as m
from pharmafl.audit.verify import VerificationError, main, verify_path

from .assets.make_fixtures import SITES, LedgerBuilder, SeededKeys, save

ATTACKER = SeededKeys("attacker")


def saved(tmp_path: Path, b: LedgerBuilder, name: str = "bundle") -> str:
    return str(save(tmp_path / name, b.entries, b.checkpoints, b.cosignatures))


def fails(path: str, **anchors) -> VerificationError:
    with pytest.raises(VerificationError) as err:
        verify_path(path, jobs=1, **anchors)
    return err.value


def head_file(tmp_path: Path, cp) -> str:
    (tmp_path / "head.json").write_text(cp if isinstance(cp, str) else m.canonical(cp))
    return str(tmp_path / "head.json")


# -- site statements ------------------------------------------------------------------------


@pytest.mark.parametrize("with_head", [False, True])
def test_forged_site_statement_appended_by_the_coordinator_fails(tmp_path: Path, with_head: bool) -> None:
    b = LedgerBuilder().run()
    head = copy.deepcopy(b.checkpoints[-1])
    n = len(b.entries)
    forged = b.statement(
        "site-01", "privacy_spent", 3, {"epsilon_round": 0.01, "epsilon_total": 0.01}, key=ATTACKER.get("site-01")
    )
    b.append("server", "privacy_spent", {"statement": forged})
    b.checkpoint(cosigners=())
    anchors = {"trusted_head": head_file(tmp_path, head)} if with_head else {}
    err = fails(saved(tmp_path, b), **anchors)
    assert err.seq == n and "site-01's statement signature does not verify under its pinned key" in err.reason


def test_the_issues_reproduction_truncate_to_a_trusted_head_then_forge_now_fails(tmp_path: Path) -> None:
    b = LedgerBuilder().run()
    head = b.checkpoints[1]  # a real, cosigned checkpoint, taken as the regulator's trusted head
    b.entries = b.entries[: head["tree_size"]]
    b.checkpoints = b.checkpoints[:2]
    b.cosignatures = [c for c in b.cosignatures if c["tree_size"] <= head["tree_size"]]
    b.append(
        "server",
        "privacy_spent",
        {"statement": b.statement("site-01", "privacy_spent", 3, {"epsilon_total": 0.01}, key=ATTACKER.get("site-01"))},
    )
    b.checkpoint(cosigners=())
    err = fails(saved(tmp_path, b), trusted_head=head_file(tmp_path, head))
    assert err.seq == head["tree_size"] and "statement signature does not verify" in err.reason


def test_a_site_typed_entry_without_statement_fails_but_the_servers_own_accounting_passes(tmp_path: Path) -> None:
    b = LedgerBuilder().run()
    n = len(b.entries)
    b.append("server", "privacy_spent", {"epsilon_total": 0.5, "party": "server", "round": 3})
    b.append("server", "privacy_spent", {"epsilon_total": 0.5, "party": "site-01", "round": 3})
    assert fails(saved(tmp_path, b)).seq == n + 1


def test_statements_before_run_started_have_no_pinned_site(tmp_path: Path) -> None:
    b = LedgerBuilder()
    b.site_entry("site-01", "clip", 1, {"clip_norm": 1.0})
    err = fails(saved(tmp_path, b))
    assert (err.seq, "not a site pinned by run_started" in err.reason) == (1, True)


# -- the consortium -------------------------------------------------------------------------


def consortium_run(tmp_path: Path, edit) -> VerificationError:
    b = LedgerBuilder()
    cons = b.consortium()
    edit(cons)
    b.append("server", "run_started", {"consortium": cons, "run_id": b.run_id})
    return fails(saved(tmp_path, b))


def test_run_started_must_pin_a_consortium(tmp_path: Path) -> None:
    b = LedgerBuilder()
    b.append("server", "run_started", {"run_id": b.run_id, "sites": list(SITES)})
    assert "must carry run_id and consortium" in fails(saved(tmp_path, b)).reason


def test_a_card_with_a_broken_self_signature_fails(tmp_path: Path) -> None:
    def edit(cons):
        cons["cards"]["site-02"]["units"] = {"pair": 1}
        cons["roster_sha256"] = m.sha256_hex(m.canonical(cons["cards"]))

    assert "the card of 'site-02'" in consortium_run(tmp_path, edit).reason


def test_a_roster_hash_that_is_not_the_cards_fails(tmp_path: Path) -> None:
    assert "wrong roster_sha256" in consortium_run(tmp_path, lambda c: c.update(roster_sha256="0" * 64)).reason


def test_two_sites_with_one_key_fail(tmp_path: Path) -> None:
    def edit(cons):
        b = LedgerBuilder()
        b.keys.get = lambda actor: ATTACKER.get("shared")
        b.keys.public = lambda actor: ATTACKER.public("shared")
        cons["cards"] = {s: b.card(s) for s in SITES}
        cons["roster_sha256"] = m.sha256_hex(m.canonical(cons["cards"]))

    assert "two sites or parties share one key" in consortium_run(tmp_path, edit).reason


def test_the_roster_anchor_must_be_a_consortium_file(tmp_path: Path) -> None:
    roster = {"format": m.CONSORTIUM_FORMAT, "cards": {}, "roster_sha256": "x"}
    (tmp_path / "roster.json").write_text(json.dumps(roster))
    err = fails(str(Path(__file__).parent / "assets" / "ledger_clean"), roster=str(tmp_path / "roster.json"))
    assert err.unreadable and f"not a {m.CONSORTIUM_FORMAT} file" in err.reason


# -- witnesses ------------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "ok"), [(0, True), (1, True), (3, True), (4, False)])
def test_the_witness_option_sets_the_quorum(tmp_path: Path, k: int, ok: bool) -> None:
    path = saved(tmp_path, LedgerBuilder().run())
    if ok:
        assert verify_path(path, witnesses=k, jobs=1).quorum == k
    else:
        assert "the witness policy needs 4" in fails(path, witnesses=k).reason


def test_a_negative_witness_count_is_refused() -> None:
    with pytest.raises(VerificationError, match="give a count >= 0") as err:
        verify_path(str(Path(__file__).parent / "assets" / "ledger_clean"), witnesses=-1)
    assert err.value.unreadable


@pytest.mark.parametrize("edit", ["unknown_size", "unknown_witness"])
def test_cosignatures_must_name_a_checkpoint_and_a_pinned_site(tmp_path: Path, edit: str) -> None:
    b = LedgerBuilder().run()
    c = dict(b.cosignatures[0])
    if edit == "unknown_size":
        c["tree_size"] = 5
    else:
        c["witness"] = "site-99"
    b.cosignatures.append(c)
    assert "only a pinned site cosigns, and only a checkpoint of this ledger" in fails(saved(tmp_path, b)).reason


def test_a_run_whose_end_no_witnessed_checkpoint_covers_fails(tmp_path: Path) -> None:
    b = LedgerBuilder()
    b.append("server", "run_started", {"consortium": b.consortium(), "run_id": b.run_id})
    b.append("server", "round_started", {"round": 1})
    b.checkpoint()
    b.append("server", "run_ended", {"status": "completed"})
    err = fails(saved(tmp_path, b))
    assert (err.seq, "of the run lie under no witnessed checkpoint" in err.reason) == (3, True)


def test_a_cosignature_of_a_checkpoint_before_run_started_is_not_needed(tmp_path: Path) -> None:
    b = LedgerBuilder()
    b.register("server")
    b.checkpoint(cosigners=())
    b.run(rounds=1)
    assert verify_path(saved(tmp_path, b), jobs=1).line().startswith("OK: ")


# -- users ----------------------------------------------------------------------------------


def test_a_user_enrols_herself_with_an_enrolment_object(tmp_path: Path) -> None:
    b = LedgerBuilder().run()
    b.registered.add("user:bob")
    b.append("user:bob", "actor_key", b.key_payload("user:bob"))  # no enrolment object
    assert "actor_key: expected exactly the fields" in fails(saved(tmp_path, b)).reason


def test_the_registrar_may_not_register_a_user(tmp_path: Path) -> None:
    b = LedgerBuilder().run()
    b.registered.add("user:eve")
    b.append("server", "actor_key", b.key_payload("user:eve", enrolment={}))
    assert "a user only herself" in fails(saved(tmp_path, b)).reason


def test_a_pinned_site_cannot_be_registered_under_another_key(tmp_path: Path) -> None:
    b = LedgerBuilder().run()
    b.registered.add("site-01")
    b.append("server", "actor_key", b.key_payload("site-01", ATTACKER.get("site-01")))
    assert "is not the key of its pinned site card" in fails(saved(tmp_path, b)).reason


# -- malformed input: one clear error, never a traceback, never OK ------------------------------

CLEAN = Path(__file__).parent / "assets" / "ledger_clean"


@pytest.mark.parametrize("head", ["{}", "null", "[]", '"x"', "3", '{"tree_size": [1]}', '{"tree_size": 1e999}'])
def test_a_trusted_head_that_is_no_checkpoint_fails(tmp_path: Path, head: str) -> None:
    err = fails(str(CLEAN), trusted_head=head_file(tmp_path, head))
    assert "trusted head: expected exactly the fields" in err.reason and not err.unreadable


@pytest.mark.parametrize("head", ['{"tree_size": NaN}', "not json", "\xff\xfe", "[" * 100_000])
def test_a_trusted_head_that_is_no_json_is_unreadable(tmp_path: Path, head: str) -> None:
    (tmp_path / "head.json").write_bytes(head.encode("latin-1"))
    assert fails(str(CLEAN), trusted_head=str(tmp_path / "head.json")).unreadable


def test_a_directory_where_a_file_belongs_is_unreadable(tmp_path: Path) -> None:
    b = LedgerBuilder().run()
    path = Path(saved(tmp_path, b))
    (path / "cosignatures.jsonl").unlink()
    (path / "cosignatures.jsonl").mkdir()
    err = fails(str(path))
    assert err.unreadable and "cosignatures.jsonl" in str(err)
    assert fails(str(CLEAN), trusted_head=str(tmp_path)).unreadable
    assert fails(str(CLEAN), roster=str(tmp_path)).unreadable


def rewrite_manifest(path: Path, edit) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    (path / "manifest.json").write_text(
        json.dumps(manifest, sort_keys=True, separators=(",", ":"), allow_nan=True) + "\n"
    )


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.update(entries=math.nan),
        lambda d: d.update(entries=10**30),
        lambda d: d.update(checkpoints=-1),
        lambda d: d.update(extra={"a": [[[1]]]}),
        lambda d: d.clear(),
    ],
)
def test_a_manifest_that_is_not_the_bundles_fails(tmp_path: Path, edit) -> None:
    path = Path(saved(tmp_path, LedgerBuilder().run()))
    rewrite_manifest(path, edit)
    err = fails(str(path))
    assert "manifest.json is not the manifest of these files" in err.reason and not err.unreadable


@pytest.mark.parametrize(
    "payload",
    [
        "[" * 70 + "]" * 70,
        "[" * 100_000 + "]" * 100_000,
        '{"x": 1e999}',
        '{"x": 123456789012345678901234567890}',
        '{"x": NaN}',
    ],
)
def test_payloads_without_a_canonical_form_fail_on_their_line(tmp_path: Path, payload: str) -> None:
    path = Path(saved(tmp_path, LedgerBuilder().run()))
    lines = (path / "entries.jsonl").read_text().splitlines(keepends=True)
    entry = json.loads(lines[3])
    text = m.canonical({**entry, "payload": {}}).replace('"payload":{}', f'"payload":{{"deep":{payload}}}')
    lines[3] = text + "\n"
    (path / "entries.jsonl").write_text("".join(lines))
    err = fails(str(path))
    assert err.seq == 3 and "entries.jsonl line 4" in err.reason


def test_bytes_that_are_not_utf8_fail_on_their_line(tmp_path: Path) -> None:
    path = Path(saved(tmp_path, LedgerBuilder().run()))
    raw = (path / "entries.jsonl").read_bytes().splitlines(keepends=True)
    raw[2] = raw[2].replace(b'"server"', b'"serv\xff"', 1)
    (path / "entries.jsonl").write_bytes(b"".join(raw))
    err = fails(str(path))
    assert (err.seq, "entries.jsonl line 3" in err.reason) == (2, True)


def test_the_command_line_never_prints_a_traceback(tmp_path: Path, capsys) -> None:
    (tmp_path / "head.json").write_text("null")
    assert main([str(CLEAN), "--trusted-head", str(tmp_path / "head.json"), "--jobs", "1"]) == 1
    assert main([str(tmp_path / "nope")]) == 2
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("FAIL: seq 0: trusted head") and out[1].startswith("ERROR: ")


# -- aggregation parties ----------------------------------------------------------------------

PARTIES = ("server-party", "helper-1")


def party_card(b: LedgerBuilder, party: str) -> dict:
    card = {
        "created": "2025-01-01T00:00:00.000000Z",
        "format": m.PARTY_CARD_FORMAT,
        "hpke_key": "ab" * 32,
        "party": party,
        "public_key": b.keys.public(party),
        "role": "server" if party == "server-party" else "helper",
        "tls_cert": "-----BEGIN CERTIFICATE-----",
        "tls_fingerprint": "cd" * 32,
        "fingerprint": m.sha256_hex(bytes.fromhex(b.keys.public(party))),
    }
    return {**card, "signature": b.keys.get(party).sign(m.party_card_message(card)).hex()}


def secure_run(b: LedgerBuilder, edit=lambda cons: None) -> LedgerBuilder:
    parties = {p: party_card(b, p) for p in PARTIES}
    cons = {"cards": b.cards, "parties": parties, "roster_sha256": m.roster_sha256(b.cards, parties)}
    edit(cons)
    b.append("server", "run_started", {"consortium": cons, "run_id": b.run_id})
    for p in PARTIES:
        b.site_entry(p, "party_registered", None, {"terms_sha256": "00" * 32, "rank": PARTIES.index(p)})
    return b


def test_signed_party_statements_verify(tmp_path: Path) -> None:
    b = secure_run(LedgerBuilder())
    b.site_entry("helper-1", "party_round", 1, {"revealed": True, "sum_sha256": None})
    b.site_entry("helper-1", "party_refused", 2, {"reason": "already aggregated round 1"})
    b.site_entry("helper-1", "party_refused", 2, {"reason": "already aggregated round 1", "request": "round"})
    b.checkpoint()
    assert verify_path(saved(tmp_path, b), jobs=1).line().startswith("OK: ")


def test_a_party_statement_forged_by_the_coordinator_fails(tmp_path: Path) -> None:
    """The coordinator claims the helper revealed a round's sum; it holds no party key."""
    b = secure_run(LedgerBuilder())
    n = len(b.entries)
    forged = b.statement("helper-1", "party_round", 1, {"revealed": True}, key=ATTACKER.get("helper-1"))
    b.append("server", "party_round", {"statement": forged})
    b.checkpoint()
    err = fails(saved(tmp_path, b))
    assert err.seq == n and "helper-1's statement signature does not verify" in err.reason


def test_a_site_key_cannot_sign_as_a_party_nor_a_party_as_a_site(tmp_path: Path) -> None:
    b = secure_run(LedgerBuilder())
    b.site_entry("site-01", "party_round", 1, {"revealed": True})  # a site posing as a party
    assert "not a party pinned by run_started" in fails(saved(tmp_path / "a", b)).reason
    b = secure_run(LedgerBuilder())
    b.site_entry("helper-1", "site_update", 1, {"update_hash": "00" * 32})
    assert "not a site pinned by run_started" in fails(saved(tmp_path / "b", b)).reason


def test_a_party_round_replayed_fails(tmp_path: Path) -> None:
    b = secure_run(LedgerBuilder())
    entry = b.site_entry("helper-1", "party_round", 1, {"revealed": True})
    b.append("server", "party_round", {"statement": entry["payload"]["statement"]})
    assert "again: replayed" in fails(saved(tmp_path, b)).reason


def _rehash(cons: dict) -> None:
    cons["roster_sha256"] = m.roster_sha256(cons["cards"], cons["parties"])


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda c: c["parties"]["helper-1"].update(hpke_key="ef" * 32) or _rehash(c), "the card of 'helper-1' (party)"),
        (lambda c: c["parties"]["helper-1"].update(hpke_key="ef" * 32), "wrong roster_sha256"),
        (lambda c: c.update(roster_sha256=m.roster_sha256(c["cards"])), "wrong roster_sha256"),  # parties left out
        (
            lambda c: c["parties"].update({"site-01": c["parties"].pop("helper-1")}) or _rehash(c),
            "the card of 'site-01' (party)",
        ),
    ],
)
def test_a_party_card_swapped_or_left_out_of_the_roster_fails(tmp_path: Path, edit, match) -> None:
    """A coordinator that substitutes a helper's key (to open both shares) breaks the card or the roster."""
    err = fails(saved(tmp_path, secure_run(LedgerBuilder(), edit)))
    assert match in err.reason
