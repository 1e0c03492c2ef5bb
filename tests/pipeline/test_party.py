"""An aggregation party's own checks: its home, the terms it accepts, every envelope it opens.

Each attack of issue 13 is here as a refusal the party makes and signs, never a crash:
a forged, replayed, truncated or mislabelled envelope, a header that is not the site's, a
weight over the cap, terms that would reveal one site's update or wrap the ring, a roster
the party never accepted, and a second request for a round.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from pharmafl.audit import messages
from pharmafl.errors import ConfigError
from pharmafl.pipeline.consortium import init_consortium, load_consortium
from pharmafl.pipeline.secure_agg.checks import check_terms, layout_length, open_site
from pharmafl.pipeline.secure_agg.party_home import PartyHome, PartyRefusal
from pharmafl.sites import update as wire
from pharmafl.sites.home import SiteHome
from pharmafl.sites.party_card import check_party_card, party_keys, ranked
from pharmafl.sites.secret_sharing import ShareError, parse_envelope, seal_update
from pharmafl.sites.tables import load_dataset

ASSETS = Path(__file__).parents[1] / "sites" / "assets"
SITES = ("site-01", "site-02", "site-03")
LAYOUT = [["delta/a", [2, 3]], ["delta/b", [4]]]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root, ds = tmp_path_factory.mktemp("world"), load_dataset(ASSETS)
    sites = {s: SiteHome.init(root / s, s, ds, passphrase=f"pw-{s}", scrypt_n=2**14) for s in SITES}
    parties = {
        "server-party": PartyHome.init(
            root / "server-party", "server-party", role="server", simulated=True, scrypt_n=2**14
        ),
        "helper-1": PartyHome.init(root / "helper-1", "helper-1", simulated=True, scrypt_n=2**14),
    }
    cons = load_consortium(
        init_consortium(
            [h.path / "site-card.json" for h in sites.values()],
            root / "coord",
            [p.path / "party-card.json" for p in parties.values()],
        )
    )
    for h in [*sites.values(), *parties.values()]:
        h.accept_consortium(cons)
    return {"root": root, "sites": sites, "parties": parties, "consortium": cons}


def terms(world, **kw) -> dict:
    cons = world["consortium"]
    base = {
        "run_id": "run-1",
        "context": "run-1:abc",
        "roster_sha256": cons["roster_sha256"],
        "parties": ranked(cons["parties"]),
        "dealer": "helper-1",
        "min_sites": 2,
        "weighting": "examples",
        "max_examples": 1000,
        "max_update_norm": 10.0,
        "slack": 0.16,
        "sketches": 4,
        "buckets": 1024,
        "layout": LAYOUT,
    }
    return {**base, **kw}


def envelope(
    world,
    site: str,
    round: int = 1,
    num_examples: int = 10,
    context: str = "run-1:abc",
    run_id: str = "run-1",
    value: float = 0.01,
):
    """What the coordinator relays to a party: the site's signed statement, the header, its blob."""
    parts = {"delta": {"a": np.full((2, 3), value, np.float32), "b": np.full(4, value, np.float32)}}
    payload = wire.encode(wire.Update(site, round, num_examples, parts))
    sealed = seal_update(
        site=site,
        round=round,
        num_examples=num_examples,
        parts=parts,
        update_hash=wire.sha256(payload),
        parties=party_keys(world["consortium"]),
        context=context,
    )
    env = parse_envelope(sealed.envelope)
    stmt = world["sites"][site].sign_statement(
        run_id,
        round,
        "secure_shares",
        {
            "commitment": env.header["commitment"],
            "share_hashes": env.share_hashes(),
            "header_sha256": env.header_sha256,
            "envelope_hash": wire.sha256(sealed.envelope),
            "num_examples": num_examples,
        },
    )
    return env, stmt


def relay(env, stmt, party="helper-1") -> dict:
    return {"statement": stmt, "header": env.header_bytes, "blob": env.blobs[party]}


def open_(world, site, item, party="helper-1", round=1, t=None):
    t = t or terms(world)
    return open_site(
        site,
        item,
        terms=t,
        consortium=world["consortium"],
        me=world["parties"][party].hpke,
        round=round,
        length=layout_length(t["layout"]),
    )


# --- the party's home and card ----------------------------------------------------------


def test_party_init_writes_a_card_the_consortium_and_the_sites_check(world, tmp_path):
    helper = world["parties"]["helper-1"]
    card = json.loads((helper.path / "party-card.json").read_text())
    assert check_party_card(card, "card") == helper.card and card["role"] == "helper"
    assert "PRIVATE" not in json.dumps(card) and not any((helper.path / "keys").glob("*.pub"))
    assert b"ENCRYPTED" in (helper.path / "keys" / "hpke.pem").read_bytes()
    assert b"ENCRYPTED" in (helper.path / "keys" / "tls-key.pem").read_bytes()
    reopened = PartyHome.open(helper.path)
    assert reopened.hpke.public == helper.hpke.public and reopened.card == helper.card
    with pytest.raises(ConfigError, match="wrong passphrase"):
        PartyHome.open(helper.path, "not the passphrase")
    altered = dict(card, hpke_key="0" * 64)
    with pytest.raises(ConfigError, match="signature does not verify"):
        check_party_card(altered, "card")
    with pytest.raises(ConfigError, match="not an empty directory"):
        PartyHome.init(helper.path, "helper-1", simulated=True)
    with pytest.raises(ConfigError, match="PHARMAFL_PARTY_PASSPHRASE"):
        PartyHome.init(tmp_path / "p", "helper-9")
    assert not (tmp_path / "p").exists()


def test_the_roster_covers_the_party_keys_a_site_seals_to(world):
    cons = world["consortium"]
    assert cons["roster_sha256"] == messages.roster_sha256(cons["cards"], cons["parties"])
    assert [k.name for k in party_keys(cons)] == ["server-party", "helper-1"]
    swapped = json.loads(json.dumps(cons))  # the coordinator slips its own key in for the helper's
    swapped["parties"]["helper-1"]["hpke_key"] = world["parties"]["server-party"].card["hpke_key"]
    with pytest.raises(ConfigError, match="did not accept"):
        world["sites"]["site-01"].check_accepted(swapped)
    world["sites"]["site-01"].check_accepted(cons)


def test_a_party_refuses_a_consortium_without_its_own_card(world, tmp_path):
    other = PartyHome.init(tmp_path / "h2", "helper-2", simulated=True, scrypt_n=2**14)
    with pytest.raises(ConfigError, match="does not hold this party's card"):
        other.accept_consortium(world["consortium"])
    with pytest.raises(PartyRefusal, match="did not accept roster"):
        other.consortium(world["consortium"]["roster_sha256"])


# --- terms ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, match",
    [
        ({"min_sites": 1}, "below 2: a sum over one site reveals"),
        ({"max_examples": 2**42}, "could wrap the 64-bit ring"),
        ({"dealer": "server-party"}, "not the server's"),
        ({"parties": ["helper-1", "server-party"]}, "rank order"),
        ({"roster_sha256": "0" * 64}, "did not accept roster"),
        ({"context": "other:abc"}, "must start with the run id"),
        ({"weighting": "quality"}, "weighting"),
    ],
)
def test_terms_that_break_the_promise_are_refused(world, change, match):
    helper = world["parties"]["helper-1"]
    t = terms(world, **change)
    with pytest.raises(PartyRefusal, match=match):
        check_terms(t, helper.consortium(t["roster_sha256"]), "helper-1")


def test_a_run_keeps_its_first_terms_and_rounds_only_move_forward(world):
    helper = world["parties"]["helper-1"]
    t = terms(world, run_id="run-terms", context="run-terms:x")
    assert helper.fix_terms("run-terms", t) is True
    assert helper.fix_terms("run-terms", t) is False  # the same again: a reconnect
    with pytest.raises(PartyRefusal, match="other terms"):
        helper.fix_terms("run-terms", {**t, "max_examples": 5})
    helper.begin_round("run-terms", 1)
    with pytest.raises(PartyRefusal, match="already aggregated round 1"):
        helper.begin_round("run-terms", 1)  # a second request: rerun on a subset and subtract
    helper.begin_round("run-terms", 3)
    with pytest.raises(PartyRefusal, match="already aggregated round 3"):
        helper.begin_round("run-terms", 2)
    reopened = PartyHome.open(helper.path)  # persisted: a restarted party still refuses
    with pytest.raises(PartyRefusal, match="already aggregated"):
        reopened.begin_round("run-terms", 3)


# --- envelopes ----------------------------------------------------------------------------


def test_an_honest_envelope_opens_with_the_signed_weight(world):
    env, stmt = envelope(world, "site-01", num_examples=37)
    shares = [open_(world, "site-01", relay(env, stmt, p), party=p) for p in ("server-party", "helper-1")]
    assert shares[0][1] == shares[1][1] == 37
    with np.errstate(over="ignore"):
        total = shares[0][0] + shares[1][0]
    assert np.allclose(total / 2**16, 0.01, atol=1e-4)
    assert open_(world, "site-01", relay(env, stmt), t=terms(world, weighting="uniform"))[1] == 1


def _resign(world, site, env, header: dict, **payload):
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    stmt = world["sites"][site].sign_statement(
        "run-1",
        header["round"],
        "secure_shares",
        {
            "commitment": header["commitment"],
            "share_hashes": env.share_hashes(),
            "header_sha256": hashlib.sha256(head).hexdigest(),
            "envelope_hash": "0" * 64,
            "num_examples": header["num_examples"],
            **payload,
        },
    )
    return head, stmt


@pytest.mark.parametrize(
    "attack, match",
    [
        ("forged", "not signed by site-02's pinned key"),
        ("replayed", "labelled site-02 round 1"),
        ("other-run", "labelled site-02 round 2 of run 'run-0'"),
        ("truncated", "does not open|does not match its header hash"),
        ("mislabelled", "the header is labelled site-03"),
        ("header-swapped", "not the one the site signed"),
        ("over-cap", "outside 1..1000"),
        ("missing-field", "header fields"),
        ("unknown-site", "not a site of the accepted roster"),
        ("no-statement", "statement is missing"),
    ],
)
def test_a_bad_envelope_is_one_refusal_not_a_crash(world, attack, match):
    env, stmt = envelope(world, "site-02", round=2)
    item, site = relay(env, stmt), "site-02"
    if attack == "forged":  # signed by another site's key
        fake = (
            world["sites"]["site-01"]
            ._key.sign(messages.statement_message("run-1", 2, "site-02", "secure_shares", stmt["payload_sha256"]))
            .hex()
        )
        item["statement"] = {**stmt, "signature": fake}
    elif attack == "replayed":  # round 1's envelope relayed into round 2
        old, old_stmt = envelope(world, "site-02", round=1)
        item = relay(old, old_stmt)
    elif attack == "other-run":
        _, item["statement"] = envelope(world, "site-02", round=2, run_id="run-0")
    elif attack == "truncated":
        item["blob"] = item["blob"][:-7]
    elif attack == "mislabelled":  # the site signs a header labelled as another site's
        head, item["statement"] = _resign(world, "site-02", env, {**env.header, "site": "site-03"})
        item["header"] = head
    elif attack == "header-swapped":  # the coordinator rewrites the weight in the header
        item["header"] = json.dumps({**env.header, "num_examples": 999}, sort_keys=True, separators=(",", ":")).encode()
    elif attack == "over-cap":  # the site claims 2^40 examples to dominate (and wrap) the sum
        head, item["statement"] = _resign(world, "site-02", env, {**env.header, "num_examples": 2**40})
        item["header"] = head
    elif attack == "missing-field":
        header = dict(env.header)
        del header["commitment"]
        head, item["statement"] = _resign(world, "site-02", env, {**header, "commitment": "0" * 64})
        item["header"] = json.dumps(header).encode()
        item["statement"] = _resign(world, "site-02", env, {**header, "commitment": "0" * 64})[1]
        item["statement"] = world["sites"]["site-02"].sign_statement(
            "run-1",
            2,
            "secure_shares",
            {**item["statement"]["payload"], "header_sha256": hashlib.sha256(item["header"]).hexdigest()},
        )
    elif attack == "unknown-site":
        site = "site-99"
    elif attack == "no-statement":
        item["statement"] = None
    with pytest.raises(ShareError, match=match):
        open_(world, site, item, round=2)


@given(st.binary(max_size=300), st.sampled_from(["header", "blob"]))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_fuzzed_envelope_parts_are_refused_as_share_errors(world, junk, part):
    env, stmt = envelope(world, "site-03")
    item = relay(env, stmt)
    item[part] = junk
    with pytest.raises(ShareError):
        open_(world, "site-03", item)


@given(st.binary(max_size=200))
@settings(max_examples=150, deadline=None)
def test_fuzzed_envelope_bytes_parse_or_fail_with_a_share_error(junk):
    data = b"PFLSA2\n" + junk
    try:
        parse_envelope(data)
    except ShareError:
        pass
