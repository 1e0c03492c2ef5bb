"""The aggregation parties as services (``pharmafl party serve``, TLS between all of them): exact
sums, drop-outs, the MPC bound check, and what every non-site party receives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from pharmafl.pipeline.consortium import init_consortium, load_consortium
from pharmafl.pipeline.secure_agg.bound import limits, plain_check, sketch, sketch_plan
from pharmafl.pipeline.secure_agg.client import AggregationService, LocalParties
from pharmafl.pipeline.secure_agg.party_home import PartyHome
from pharmafl.sites import update as wire
from pharmafl.sites.home import SiteHome
from pharmafl.sites.party_card import party_keys, ranked
from pharmafl.sites.secret_sharing import (
    PRECISION_BITS,
    encode_fixed,
    flatten,
    parse_envelope,
    seal_update,
)
from pharmafl.sites.tables import load_dataset

from ..uniformity import looks_uniform

N = 4006  # parameters of the synthetic model: delta/a (2, 3) and delta/b (4000,)
BOUND, SLACK, M, K = 2.0, 0.16, 4, 1024
SCALE = 2**PRECISION_BITS
ASSETS = Path(__file__).parents[1] / "sites" / "assets"
SITES = [f"site-{i:02d}" for i in range(1, 11)]
CONTEXT = "svc-run:test"


@pytest.fixture(scope="module")
def parties(tmp_path_factory):
    root, ds = tmp_path_factory.mktemp("consortium"), load_dataset(ASSETS)
    transcripts = tmp_path_factory.mktemp("transcripts")
    sites = {s: SiteHome.init(root / s, s, ds, passphrase=f"pw-{s}", scrypt_n=2**14) for s in SITES}
    homes = {
        "server-party": PartyHome.init(
            root / "server-party", "server-party", role="server", simulated=True, scrypt_n=2**14
        ),
        "helper-1": PartyHome.init(root / "helper-1", "helper-1", simulated=True, scrypt_n=2**14),
    }
    cons = load_consortium(
        init_consortium(
            [h.path / "site-card.json" for h in sites.values()],
            root / "coord",
            [p.path / "party-card.json" for p in homes.values()],
        )
    )
    for h in [*sites.values(), *homes.values()]:
        h.accept_consortium(cons)
    terms = {
        "run_id": "svc-run",
        "context": CONTEXT,
        "roster_sha256": cons["roster_sha256"],
        "parties": ranked(cons["parties"]),
        "dealer": "helper-1",
        "min_sites": 2,
        "weighting": "examples",
        "max_examples": 10_000,
        "max_update_norm": BOUND,
        "slack": SLACK,
        "sketches": M,
        "buckets": K,
        "layout": [["delta/a", [2, 3]], ["delta/b", [4000]]],
    }
    local = LocalParties({p: h.path for p, h in homes.items()}, transcript_dir=transcripts)
    service = AggregationService(cons["parties"], local.endpoints, terms)
    yield service, (sites, party_keys(cons)), transcripts
    service.close()
    local.close()


def update(seed: int, norm: float) -> dict:
    x = np.random.default_rng(seed).normal(size=N)
    x *= norm / np.linalg.norm(x)
    return {"delta": {"a": x[:6].reshape(2, 3).astype(np.float32), "b": x[6:].astype(np.float32)}}


def envelopes(updates: dict, keys, round: int, weights: dict | None = None) -> dict:
    """site -> (envelope, its signed secure_shares statement), as the coordinator relays them."""
    homes, parties = keys
    out = {}
    for site, parts in updates.items():
        n = (weights or {}).get(site, 10)
        payload = wire.encode(wire.Update(site, round, n, parts))
        sealed = seal_update(
            site=site,
            round=round,
            num_examples=n,
            parts=parts,
            update_hash=wire.sha256(payload),
            parties=parties,
            context=CONTEXT,
        )
        env = parse_envelope(sealed.envelope)
        stmt = homes[site].sign_statement(
            "svc-run",
            round,
            "secure_shares",
            {
                "commitment": env.header["commitment"],
                "share_hashes": env.share_hashes(),
                "header_sha256": env.header_sha256,
                "envelope_hash": wire.sha256(sealed.envelope),
                "num_examples": n,
            },
        )
        out[site] = (env, stmt)
    return out


def run(service, envs, round):
    return service.run_round(round, envs)


def test_ten_sites_sum_exactly_and_an_over_bound_update_is_excluded(parties):
    service, keys, _ = parties
    ups = {f"site-{i:02d}": update(i, norm=1.5) for i in range(1, 11)}
    ups["site-07"] = update(7, norm=40.0)  # a faulty site far outside the bound
    weights = {s: 10 + 7 * i for i, s in enumerate(sorted(ups))}
    res = run(service, envelopes(ups, keys, round=1, weights=weights), round=1)
    assert res.revealed and res.usable == sorted(ups) and set(res.excluded) == {"site-07"}
    assert res.passed == {s: s != "site-07" for s in sorted(ups)} and res.weights == weights
    ok = [s for s in sorted(ups) if s != "site-07"]
    want = sum(weights[s] * flatten(ups[s]) for s in ok) / sum(weights[s] for s in ok)
    got = res.total / sum(weights[s] for s in ok)
    assert np.max(np.abs(got - want)) <= 1e-4  # the tolerance; in fact ~1e-5
    assert np.max(np.abs(got - want)) <= 2.0**-16
    assert len(bytes.fromhex(res.sketch_seed)) == 32


def test_drop_outs_of_one_and_three_sites_mid_round(parties):
    service, keys, _ = parties
    ups = {f"site-{i:02d}": update(100 + i, norm=1.0) for i in range(1, 11)}
    envs = envelopes(ups, keys, round=2)
    # site-02 vanished before sending; site-05's helper share was cut off in transit
    del envs["site-02"]
    env, stmt = envs["site-05"]
    envs["site-05"] = (
        type(env)(env.header, {**env.blobs, "helper-1": env.blobs["helper-1"][:-7]}, env.header_bytes),
        stmt,
    )
    res = run(service, envs, round=2)
    assert set(res.excluded) == {"site-05"} and "does not match its header hash" in res.excluded["site-05"]
    assert "site-05" not in res.usable and len(res.usable) == 8
    want = 10 * sum(flatten(ups[s]) for s in res.usable)
    assert np.max(np.abs(res.total - want)) <= 10 * 8 * 2.0**-17  # each site's encoding rounds by <= 2^-17
    # three of ten drop out
    envs = envelopes(ups, keys, round=3)
    for gone in ("site-03", "site-06", "site-09"):
        del envs[gone]
    res = run(service, envs, round=3)
    assert res.usable == sorted(envs) and all(res.passed.values())
    assert np.max(np.abs(res.total - 10 * sum(flatten(ups[s]) for s in envs))) <= 1e-3


def test_a_crafted_update_whose_squares_wrap_the_ring_is_caught(parties):
    """One coordinate of 65536 encodes to 2^32: its square is 0 mod 2^64, so a plain sum of
    squares on shares would pass it. The sketch's range check does not."""
    service, keys, _ = parties
    ups = {"site-01": update(1, norm=1.0), "site-02": update(2, norm=1.0)}
    ups["site-02"]["delta"]["b"][17] = 65536.0
    x = encode_fixed(flatten(ups["site-02"]))
    with np.errstate(over="ignore"):
        assert int(np.sum(x * x)) < limits(BOUND, SLACK)[1]  # the naive check would accept it
    ups["site-03"] = update(3, norm=1.0)
    res = run(service, envelopes(ups, keys, round=4), round=4)
    assert res.passed == {"site-01": True, "site-02": False, "site-03": True}
    assert np.max(np.abs(res.total - 10 * (flatten(ups["site-01"]) + flatten(ups["site-03"])))) <= 1e-3


def test_the_mpc_check_agrees_with_the_plain_check_near_the_bound(parties):
    service, keys, _ = parties
    norms = {"site-01": 0.5 * BOUND, "site-02": 0.95 * BOUND, "site-03": 1.5 * BOUND, "site-04": 3 * BOUND}
    ups = {s: update(i, norm=n) for i, (s, n) in enumerate(norms.items())}
    res = run(service, envelopes(ups, keys, round=5), round=5)
    plan = sketch_plan(bytes.fromhex(res.sketch_seed), N, M, K)
    for s in ups:
        assert res.passed[s] == plain_check(encode_fixed(flatten(ups[s])), plan, K, BOUND, SLACK)
    assert res.passed == {"site-01": True, "site-02": True, "site-03": False, "site-04": False}


def test_no_non_site_party_receives_a_plaintext_update(parties):
    """Every array each party received (its decrypted shares and all CrypTen traffic) is compared
    with every site's encoded update and sketches; only the revealed sum, at the server, matches."""
    service, keys, transcripts = parties
    ups = {f"site-{i:02d}": update(200 + i, norm=1.0) for i in range(1, 4)}
    res = run(service, envelopes(ups, keys, round=6, weights={s: 1 for s in ups}), round=6)
    plan = sketch_plan(bytes.fromhex(res.sketch_seed), N, M, K)
    secrets = {s: encode_fixed(flatten(p)) for s, p in ups.items()}
    sketches = {s: sketch(torch.from_numpy(x), plan, K).numpy().ravel() for s, x in secrets.items()}
    total = sum(secrets.values())
    seen_sum = 0
    for name in ("server-party", "helper-1"):
        received = np.load(transcripts / f"{name}-round0006.npz")
        shares = [received[k] for k in received.files if ":share." in k]
        assert len(shares) == 3 and all(looks_uniform(s) for s in shares)
        for key in received.files:
            arr = received[key].astype(np.int64).ravel()
            if arr.size == N and np.array_equal(arr, total):
                assert name == "server-party" and key.endswith("comm.reduce")  # the revealed sum, to the server only
                seen_sum += 1
                continue
            for s in ups:
                for secret in (secrets[s], sketches[s]):
                    if arr.size == secret.size:
                        assert not np.array_equal(arr, secret), f"{name} received {s}'s plaintext in {key}"
                        assert np.mean(arr == secret) < 0.01, f"{name}'s {key} matches {s} in many places"
    assert seen_sum == 1
    requests = [json.loads(r) for r in (transcripts / "dealer-requests.txt").read_text().splitlines()]
    asks = [r for r in requests if r != "terminate"]
    assert asks and all(r["function"] in ("additive", "square", "binary", "wraps", "B2A") for r in asks)
    args = [a for r in asks for a in r["args"]]  # shapes and the operation's name, never values
    assert all(a in ("mul", "matmul") if isinstance(a, str) else all(isinstance(d, int) for d in a) for a in args)


@given(st.lists(st.integers(-(2**62), 2**62), min_size=1, max_size=200), st.binary(min_size=32, max_size=32))
@settings(max_examples=40, deadline=None)
def test_sketches_are_linear_in_the_ring(values, seed):
    a = np.array(values, dtype=np.int64)
    b = np.random.default_rng(len(values)).integers(-(2**62), 2**62, len(values))
    plan = sketch_plan(seed, len(values), 3, 64)
    with np.errstate(over="ignore"):
        both = sketch(torch.from_numpy(a + b), plan, 64)
    assert torch.equal(both, sketch(torch.from_numpy(a), plan, 64) + sketch(torch.from_numpy(b), plan, 64))


def test_the_sketch_estimates_the_norm():
    x = np.random.default_rng(5).normal(size=200_000)
    plan = sketch_plan(b"k" * 32, x.size, 4, 1024)
    p = sketch(torch.from_numpy(encode_fixed(x)), plan, 1024).double() / SCALE
    ratio = (p**2).sum(dim=1) / np.sum(x**2)
    assert torch.all((ratio > 0.85) & (ratio < 1.15))  # std ~ sqrt(2/1024) = 4.4%


def test_a_round_in_which_one_site_passes_reveals_nothing(parties):
    """min_sites is the parties' own rule: one passing site's 'sum' would be its update."""
    service, keys, _ = parties
    ups = {"site-01": update(301, norm=1.0), "site-02": update(302, norm=50.0), "site-03": update(303, norm=60.0)}
    res = run(service, envelopes(ups, keys, round=7), round=7)
    assert res.passed == {"site-01": True, "site-02": False, "site-03": False}
    assert not res.revealed and res.total is None
    assert all(s["payload"]["revealed"] is False and s["payload"]["sum_sha256"] is None for s in res.statements)


def test_a_second_request_for_a_round_is_refused_and_signed(parties):
    """The coordinator cannot rerun a round on a subset and subtract: every party refuses."""
    service, keys, _ = parties
    ups = {s: update(400 + i, norm=1.0) for i, s in enumerate(SITES[:4])}
    envs = envelopes(ups, keys, round=8)
    first = run(service, envs, round=8)
    assert first.revealed
    again = run(service, {s: envs[s] for s in SITES[:3]}, round=8)
    assert not again.revealed and again.total is None and "already aggregated round 8" in again.aborted
    refusals = [s for s in again.statements if s["type"] == "party_refused"]
    assert {s["site"] for s in refusals} == {"server-party", "helper-1"}
    assert all(s["round"] == 8 and "already aggregated" in s["payload"]["reason"] for s in refusals)
    older = run(service, envelopes({s: ups[s] for s in SITES[:3]}, keys, round=5), round=5)
    assert not older.revealed and "already aggregated" in older.aborted
    later = run(service, envelopes(ups, keys, round=9), round=9)  # the service is still up and serves on
    assert later.revealed and later.usable == SITES[:4]
