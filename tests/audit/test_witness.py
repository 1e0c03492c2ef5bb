"""A site's witness (C2SP tlog-witness): it cosigns only heads that extend what it cosigned.

Every attack is a coordinator that holds the ledger and its key and shows the witness
something else: a truncated and re-extended log, a rollback, a split view, a roster or key
the site never agreed to, a forged checkpoint signature, a malformed request.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings, strategies as st

from pharmafl.audit import witness as witness_module
from pharmafl.audit.keys import KeyStore, raw_public_key
from pharmafl.audit.ledger import Ledger
from pharmafl.audit.messages import (
    canonical,
    checkpoint_body,
    checkpoint_message,
    cosignature_message,
    make_card,
    origin_of,
)
from pharmafl.audit.witness import Witness, WitnessError

RUN_ID = "davis-3sites-20261201-120000-3fa9c2d1"
ORIGIN = origin_of(RUN_ID)
SITES = ("site-01", "site-02", "site-03")
T0 = datetime(2026, 12, 1, 12, tzinfo=UTC)


# -- a consortium, a coordinator's ledger, a site's witness (shared with test_cosign, test_listener)


def site_key(site: str, generation: int = 0) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"{site}/{generation}".encode()).digest())


def site_card(site: str, key: Ed25519PrivateKey) -> dict:
    return make_card(
        key.sign,
        {
            "counts": {"pairs": 10, "train": 8},
            "created": "2026-12-01T11:00:00.000000Z",
            "manifest_sha256": hashlib.sha256(site.encode()).hexdigest(),
            "public_key": raw_public_key(key).hex(),
            "site": site,
            "units": {"compound": 3, "pair": 8},
        },
    )


def consortium(keys: dict[str, Ed25519PrivateKey]) -> dict:
    cards = {site: site_card(site, key) for site, key in sorted(keys.items())}
    return {"cards": cards, "roster_sha256": hashlib.sha256(canonical(cards).encode()).hexdigest()}


def run_started(pinned: dict, run_id: str = RUN_ID) -> dict:
    return {
        "run_id": run_id,
        "config": {"rounds": 2},
        "config_hash": "c" * 64,
        "seed": 1,
        "sites": sorted(pinned["cards"]),
        "consortium": pinned,
    }


def open_ledger(path: Path, keys: KeyStore) -> Ledger:
    """A coordinator's ledger on a fixed clock, so two ledgers fed the same events are identical."""
    return Ledger.open(path, keys, clock=lambda: T0)


def extend(ledger: Ledger, tag: str, count: int = 3) -> int:
    """Append ``count`` server entries and checkpoint; the new tree size."""
    ledger.append_many([("server", "round_note", {"tag": tag, "i": i}) for i in range(count)])
    return ledger.checkpoint().tree_size


def request(ledger: Ledger, old_size: int = 0, *, anchor: bool | None = None) -> dict:
    return ledger.witness_request(
        old_size,
        origin=ORIGIN,
        log_signer="server",
        anchor_seq=1 if (old_size == 0 if anchor is None else anchor) else None,
    )


class Clock:
    def __init__(self, t: int = 1_795_000_000):
        self.t = t

    def __call__(self) -> float:
        self.t += 1
        return self.t + 0.25


def make_witness(
    directory: Path,
    site: str = "site-01",
    *,
    key: Ed25519PrivateKey | None = None,
    accepted: set[str] | Callable[[], set[str]],
) -> Witness:
    key = key or site_key(site)
    return Witness(directory / site, site, key.sign, raw_public_key(key), accepted_rosters=accepted, clock=Clock())


@pytest.fixture
def pinned() -> dict:
    return consortium({site: site_key(site) for site in SITES})


@pytest.fixture
def coordinator(tmp_path: Path, keystore: KeyStore, pinned: dict):
    """The real ledger: run_started (seq 1, after the registrar's key) and one round, checkpointed."""
    with open_ledger(tmp_path / "real.db", keystore) as ledger:
        ledger.append("server", "run_started", run_started(pinned))
        extend(ledger, "round 1")
        yield ledger


@pytest.fixture
def site01(tmp_path: Path, pinned: dict) -> Witness:
    return make_witness(tmp_path / "witness", accepted={pinned["roster_sha256"]})


def forked(tmp_path: Path, keystore: KeyStore, pinned: dict, name: str, tags: list[str]) -> Ledger:
    """Another ledger under the same coordinator key: same run_started, then ``tags`` (one
    checkpointed batch each)."""
    ledger = open_ledger(tmp_path / f"{name}.db", keystore)
    ledger.append("server", "run_started", run_started(pinned))
    for tag in tags:
        extend(ledger, tag)
    return ledger


# -- what an honest log gets -------------------------------------------------------------------


def test_first_contact_with_the_anchor_is_cosigned_in_c2sp_form(coordinator: Ledger, site01: Witness) -> None:
    answer = site01.add_checkpoint(request(coordinator))
    cp = coordinator.checkpoints()[-1]
    assert answer["witness"] == "site-01" and answer["tree_size"] == cp.tree_size == 5
    message = cosignature_message(checkpoint_body(ORIGIN, cp.tree_size, cp.root_hash), answer["timestamp"])
    assert message.startswith(b"cosignature/v1\ntime %d\n%s\n5\n" % (answer["timestamp"], ORIGIN.encode()))
    site_key("site-01").public_key().verify(bytes.fromhex(answer["signature"]), message)
    head = site01.head(ORIGIN)
    assert (head["tree_size"], head["root_hash"], head["roster_sha256"]) == (5, cp.root_hash, _roster(coordinator))
    assert head["log_key"] == coordinator.registered_keys()["server"]["public_key"]
    assert site01.state_file(ORIGIN).name == hashlib.sha256(ORIGIN.encode()).hexdigest() + ".json"


def test_consistent_extensions_and_the_same_head_again_are_cosigned(coordinator: Ledger, site01: Witness) -> None:
    first = site01.add_checkpoint(request(coordinator))
    size = extend(coordinator, "round 2")
    second = site01.add_checkpoint(request(coordinator, first["tree_size"]))
    again = site01.add_checkpoint(request(coordinator, size))  # a re-sent head: cosigned again
    assert (second["tree_size"], again["tree_size"]) == (size, size)
    assert again["timestamp"] > second["timestamp"] > first["timestamp"]


def test_a_lost_answer_is_recovered_from_the_requests_alternatives(coordinator: Ledger, site01: Witness) -> None:
    """The witness cosigned size 5 but the log never stored the answer (it crashed, its disk was
    full): the log asks from 0 again, offering a proof from each later checkpoint it holds."""
    lost = site01.add_checkpoint(request(coordinator))["tree_size"]
    size = extend(coordinator, "round 2")
    plain = request(coordinator)  # from 0 with the anchor, as if nothing was cosigned
    with pytest.raises(WitnessError, match=f"not the size site-01 last cosigned .*: {lost}"):
        site01.add_checkpoint(plain)
    offered = coordinator.witness_request(0, origin=ORIGIN, log_signer="server", anchor_seq=1, alternatives=[2, lost])
    assert [a["old_size"] for a in offered["alternatives"]] == [2, lost]
    assert site01.add_checkpoint(offered)["tree_size"] == size
    extend(coordinator, "round 3")  # an alternative's proof is checked like the main one
    forged = coordinator.witness_request(0, origin=ORIGIN, log_signer="server", anchor_seq=1, alternatives=[size])
    forged["alternatives"][0]["proof"] = ["00" * 32 for _ in forged["alternatives"][0]["proof"]]
    with pytest.raises(WitnessError, match=f"consistency proof from {size} to .* does not verify"):
        site01.add_checkpoint(forged)
    assert site01.head(ORIGIN)["tree_size"] == size


def _roster(ledger: Ledger) -> str:
    return next(e for e in ledger.entries() if e.type == "run_started").data["consortium"]["roster_sha256"]


# -- what a dishonest coordinator is refused ---------------------------------------------------


def test_truncated_and_re_extended_log_is_refused(
    tmp_path: Path, keystore: KeyStore, pinned: dict, coordinator: Ledger, site01: Witness
) -> None:
    cosigned = site01.add_checkpoint(request(coordinator))["tree_size"]
    # keep run_started, drop the round (a forged round in its place) and grow past the cosigned head
    rewritten = forked(tmp_path, keystore, pinned, "rewritten", ["forged round 1", "round 2"])
    assert rewritten.checkpoints()[-1].tree_size > cosigned
    with pytest.raises(WitnessError, match=f"consistency proof from {cosigned} to .* does not verify"):
        site01.add_checkpoint(request(rewritten, cosigned))
    with pytest.raises(WitnessError, match=f"not the size site-01 last cosigned .*: {cosigned}") as err:
        site01.add_checkpoint(request(rewritten, 2, anchor=False))  # a proof from before the cut
    assert err.value.current_size == cosigned
    assert site01.head(ORIGIN)["tree_size"] == cosigned
    rewritten.close()


def test_rollback_to_an_older_head_is_refused(coordinator: Ledger, site01: Witness) -> None:
    old = request(coordinator)
    site01.add_checkpoint(old)
    size = extend(coordinator, "round 2")
    site01.add_checkpoint(request(coordinator, old["checkpoint"]["tree_size"]))
    rollback = dict(old, old_size=old["checkpoint"]["tree_size"], proof=[])
    rollback.pop("anchor")
    for attempt in (old, rollback):
        with pytest.raises(WitnessError, match=f"smaller than the head {size} .*rollback refused") as err:
            site01.add_checkpoint(attempt)
        assert err.value.current_size == size
    assert site01.head(ORIGIN)["tree_size"] == size


def test_old_size_that_is_not_its_own_is_a_conflict_naming_its_size(coordinator: Ledger, site01: Witness) -> None:
    with pytest.raises(WitnessError, match="has cosigned nothing for .* not size 3") as err:
        site01.add_checkpoint(request(coordinator, 3, anchor=True))
    assert err.value.current_size == 0 and site01.head(ORIGIN) is None
    cosigned = site01.add_checkpoint(request(coordinator))["tree_size"]
    extend(coordinator, "round 2")
    with pytest.raises(WitnessError, match=f"old_size 2 is not the size site-01 last cosigned .*: {cosigned}") as err:
        site01.add_checkpoint(request(coordinator, 2))  # another site's view of the log
    assert err.value.current_size == cosigned


def test_split_view_each_witness_cosigns_one_head_and_the_fake_one_is_caught(
    tmp_path: Path, keystore: KeyStore, pinned: dict, coordinator: Ledger
) -> None:
    fake = forked(tmp_path, keystore, pinned, "fake", ["round 1, as site-02 is told"])
    real_cp, fake_cp = coordinator.checkpoints()[-1], fake.checkpoints()[-1]
    assert real_cp.tree_size == fake_cp.tree_size and real_cp.root_hash != fake_cp.root_hash
    a = make_witness(tmp_path / "w", "site-01", accepted={pinned["roster_sha256"]})
    b = make_witness(tmp_path / "w", "site-02", accepted={pinned["roster_sha256"]})
    a.add_checkpoint(request(coordinator))
    b.add_checkpoint(request(fake))
    size = real_cp.tree_size
    for witness, other in ((a, fake), (b, coordinator)):  # neither cosigns the other head of that size
        with pytest.raises(WitnessError, match=f"different root .* for tree size {size}.*split view refused"):
            witness.add_checkpoint(request(other, size))
        with pytest.raises(WitnessError, match=f"last cosigned .*: {size}"):
            witness.add_checkpoint(request(other))
    later = extend(coordinator, "round 2")
    assert a.add_checkpoint(request(coordinator, size))["tree_size"] == later
    with pytest.raises(WitnessError, match=f"consistency proof from {size} to {later} does not verify"):
        b.add_checkpoint(request(coordinator, size))
    assert b.head(ORIGIN)["root_hash"] == fake_cp.root_hash
    fake.close()


def test_a_roster_the_site_did_not_accept_is_refused(tmp_path: Path, coordinator: Ledger) -> None:
    accepted = {hashlib.sha256(b"another consortium").hexdigest()}
    witness = make_witness(tmp_path / "w", accepted=lambda: accepted)
    with pytest.raises(WitnessError, match="site-01 did not accept roster [0-9a-f]{64}"):
        witness.add_checkpoint(request(coordinator))
    assert witness.head(ORIGIN) is None
    accepted.add(_roster(coordinator))  # the site agrees (consortia.json is read at first contact)
    assert witness.add_checkpoint(request(coordinator))["tree_size"] == 5


def test_own_key_replaced_in_the_pinned_card_is_refused(tmp_path: Path, keystore: KeyStore) -> None:
    swapped = consortium({"site-01": site_key("site-01", generation=1), "site-02": site_key("site-02")})
    with open_ledger(tmp_path / "l.db", keystore) as ledger:
        ledger.append("server", "run_started", run_started(swapped))
        extend(ledger, "round 1")
        witness = make_witness(tmp_path / "w", accepted={swapped["roster_sha256"]})  # even if it were accepted
        with pytest.raises(WitnessError, match="carries another key for site-01"):
            witness.add_checkpoint(request(ledger))
    assert witness.head(ORIGIN) is None


def test_cards_that_do_not_hash_to_the_pinned_roster_are_refused(
    tmp_path: Path, keystore: KeyStore, pinned: dict
) -> None:
    lying = copy.deepcopy(pinned)
    lying["cards"]["site-02"]["public_key"] = raw_public_key(site_key("site-02", 9)).hex()  # roster hash kept
    with open_ledger(tmp_path / "l.db", keystore) as ledger:
        ledger.append("server", "run_started", run_started(lying))
        extend(ledger, "round 1")
        with pytest.raises(WitnessError, match="is not the hash of the pinned cards"):
            make_witness(tmp_path / "w", accepted={pinned["roster_sha256"]}).add_checkpoint(request(ledger))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r["checkpoint"].update(signature=_flip(r["checkpoint"]["signature"])), "is not signed by log key"),
        (lambda r: r["checkpoint"].update(tree_size=r["checkpoint"]["tree_size"] + 1), "is not signed by log key"),
        (lambda r: r.update(log_key=raw_public_key(site_key("mallory")).hex()), "is not signed by log key"),
    ],
)
def test_bad_log_signature_is_refused(coordinator: Ledger, site01: Witness, change, message: str) -> None:
    forged = request(coordinator)
    change(forged)
    with pytest.raises(WitnessError, match=message):
        site01.add_checkpoint(forged)
    assert site01.head(ORIGIN) is None


def test_a_new_log_key_after_pinning_is_refused(coordinator: Ledger, site01: Witness) -> None:
    site01.add_checkpoint(request(coordinator))
    other = Ed25519PrivateKey.generate()
    forged = request(coordinator, 5)
    cp = forged["checkpoint"]
    cp["signature"] = other.sign(checkpoint_message(cp["tree_size"], cp["root_hash"], cp["ts"], cp["signer"])).hex()
    forged["log_key"] = raw_public_key(other).hex()
    with pytest.raises(WitnessError, match="is not the key site-01 pinned for"):
        site01.add_checkpoint(forged)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.pop("anchor"), "does not know origin .* needs the run_started entry"),
        (lambda a: a["anchor"]["entry"]["payload"].update(seed=2), "anchor entry_hash does not match"),
        (lambda a: a["anchor"].update(proof=a["anchor"]["proof"][:-1]), "is not included in the checkpoint"),
        (lambda a: a["anchor"]["proof"].reverse(), "is not included in the checkpoint"),
        (lambda a: a.update(origin=origin_of("another-run")), "whose log is not pharmafl/another-run"),
        (lambda a: a.update(proof=[a["checkpoint"]["root_hash"]]), "proof must be empty when old_size is 0"),
    ],
)
def test_first_contact_needs_a_valid_anchor(coordinator: Ledger, site01: Witness, change, message: str) -> None:
    bad = request(coordinator)
    change(bad)
    with pytest.raises(WitnessError, match=message):
        site01.add_checkpoint(bad)
    assert site01.head(ORIGIN) is None


def test_the_anchor_must_be_run_started(tmp_path: Path, keystore: KeyStore, pinned: dict, site01: Witness) -> None:
    with open_ledger(tmp_path / "l.db", keystore) as ledger:
        ledger.append("server", "round_note", run_started(pinned))
        extend(ledger, "round 1")
        with pytest.raises(WitnessError, match="must be the run_started entry, not 'round_note'"):
            site01.add_checkpoint(request(ledger))


def _flip(hex_text: str) -> str:
    return ("1" if hex_text[0] == "0" else "0") + hex_text[1:]


# -- persistence ----------------------------------------------------------------------------


def test_the_head_survives_a_restart(
    tmp_path: Path, keystore: KeyStore, pinned: dict, coordinator: Ledger, site01: Witness
) -> None:
    size = site01.add_checkpoint(request(coordinator))["tree_size"]
    restarted = make_witness(tmp_path / "witness", accepted={pinned["roster_sha256"]})  # a new process
    assert restarted.head(ORIGIN)["tree_size"] == size
    fake = forked(tmp_path, keystore, pinned, "fake", ["the other round 1"])
    with pytest.raises(WitnessError, match="split view refused"):
        restarted.add_checkpoint(request(fake, size))
    with pytest.raises(WitnessError, match=f"last cosigned .*: {size}"):
        restarted.add_checkpoint(request(fake))  # as if it had never seen the origin
    fake.close()


def test_no_cosignature_without_the_head_on_disk(
    coordinator: Ledger, site01: Witness, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = site01.add_checkpoint(request(coordinator))
    extend(coordinator, "round 2")

    def crash(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(witness_module.os, "replace", crash)
    with pytest.raises(WitnessError, match="could not persist .* no cosignature given"):
        site01.add_checkpoint(request(coordinator, first["tree_size"]))
    monkeypatch.undo()
    assert site01.head(ORIGIN)["tree_size"] == first["tree_size"]
    assert sorted(p.suffix for p in site01.directory.iterdir()) == [".json", ".lock"]  # no temporary left


def test_state_files_are_private(coordinator: Ledger, site01: Witness) -> None:
    site01.add_checkpoint(request(coordinator))
    assert oct(os.stat(site01.directory).st_mode & 0o777) == "0o700"
    assert oct(os.stat(site01.state_file(ORIGIN)).st_mode & 0o777) == "0o600"


def test_unreadable_state_is_refused_not_reset(coordinator: Ledger, site01: Witness) -> None:
    site01.add_checkpoint(request(coordinator))
    site01.state_file(ORIGIN).write_text("{")
    with pytest.raises(WitnessError, match="unreadable witness state .* restore it from backup"):
        site01.add_checkpoint(request(coordinator))


def test_a_sign_callable_with_another_key_is_refused(tmp_path: Path, pinned: dict, coordinator: Ledger) -> None:
    witness = Witness(
        tmp_path / "w",
        "site-01",
        site_key("site-02").sign,
        raw_public_key(site_key("site-01")),
        accepted_rosters={pinned["roster_sha256"]},
    )
    with pytest.raises(WitnessError, match="signing key of site-01 does not match its public key"):
        witness.add_checkpoint(request(coordinator))
    assert witness.head(ORIGIN) is None


# -- malformed requests: one error type, whatever arrives ------------------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(["0" * 64, "f" * 128, "", "pharmafl/x", "00" * 31]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, prefix + (i,))
    return out


def _mutate(request_: dict, path: tuple, action: str, value: Any) -> Any:
    if not path:
        return value
    copy_ = copy.deepcopy(request_)
    parent = copy_
    for step in path[:-1]:
        parent = parent[step]
    if action == "delete" and isinstance(parent, dict):
        del parent[path[-1]]
    elif action == "extra" and isinstance(parent, dict):
        parent["extra field"] = value
    else:
        parent[path[-1]] = value
    return copy_


@pytest.fixture
def valid_request(coordinator: Ledger) -> dict:
    return json.loads(json.dumps(request(coordinator)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_malformed_request_is_one_witness_error(valid_request: dict, site01: Witness, data) -> None:
    paths = _paths(valid_request)
    path = data.draw(st.sampled_from(paths), label="path")
    action = data.draw(st.sampled_from(["replace", "delete", "extra"]), label="action")
    value = data.draw(JSON, label="value")
    mutated = _mutate(valid_request, path, action, value)
    try:
        answer = site01.add_checkpoint(mutated)
    except WitnessError:
        return
    assert set(answer) == {"witness", "tree_size", "timestamp", "signature"}  # the mutation changed nothing


@pytest.mark.parametrize("bad", [None, [], "old 0\n", {}, {"origin": ORIGIN}, 7])
def test_not_a_request_at_all(site01: Witness, bad) -> None:
    with pytest.raises(WitnessError):
        site01.add_checkpoint(bad)


def test_deep_nesting_and_huge_numbers_are_one_witness_error(valid_request: dict, site01: Witness) -> None:
    deep: Any = {}
    for _ in range(5000):
        deep = {"d": deep}
    for change in (
        lambda r: r["anchor"]["entry"]["payload"].update(deep=deep),
        lambda r: r["anchor"]["entry"]["payload"].update(n=2**80 + 1),
        lambda r: r["anchor"]["entry"]["payload"].update(x=float("nan")),
        lambda r: r.update(old_size=2**64),
        lambda r: r["checkpoint"].update(tree_size=True),
        lambda r: r.update(proof=["00" * 32] * 64),
    ):
        bad = json.loads(json.dumps(valid_request))
        change(bad)
        with pytest.raises(WitnessError):
            site01.add_checkpoint(bad)
