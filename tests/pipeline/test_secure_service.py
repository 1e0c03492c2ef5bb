"""The aggregation parties (CrypTen over TCP on 127.0.0.1): exact sums, drop-outs, the MPC bound
check, and what every non-site party receives."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pharmafl.pipeline.secure_agg.bound import limits, plain_check, sketch, sketch_plan
from pharmafl.pipeline.secure_agg.service import (
    AggregationService,
    party_names,
    provision,
    public_keys,
)
from pharmafl.sites import update as wire
from pharmafl.sites.secret_sharing import (
    PRECISION_BITS,
    encode_fixed,
    flatten,
    parse_envelope,
    seal_update,
)

from ..uniformity import looks_uniform

N = 4006  # parameters of the synthetic model: delta/a (2, 3) and delta/b (4000,)
BOUND, SLACK, M, K = 2.0, 0.16, 4, 1024
SCALE = 2**PRECISION_BITS


@pytest.fixture(scope="module")
def parties(tmp_path_factory):
    key_dir = tmp_path_factory.mktemp("party-keys")
    transcripts = tmp_path_factory.mktemp("transcripts")
    public = provision(key_dir, helpers=1, passphrase="party pass")
    service = AggregationService(key_dir, party_names(1), "party pass", transcript_dir=transcripts)
    yield service, public_keys(public), transcripts
    service.close()


def update(seed: int, norm: float) -> dict:
    x = np.random.default_rng(seed).normal(size=N)
    x *= norm / np.linalg.norm(x)
    return {"delta": {"a": x[:6].reshape(2, 3).astype(np.float32), "b": x[6:].astype(np.float32)}}


def envelopes(updates: dict, keys, round: int) -> dict:
    out = {}
    for site, parts in updates.items():
        payload = wire.encode(wire.Update(site, round, 10, parts))
        data = seal_update(site=site, round=round, num_examples=10, parts=parts, update_hash=wire.sha256(payload),
                           salt=os.urandom(32), parties=keys, context="test")  # fmt: skip
        out[site] = parse_envelope(data)
    return out


def run(service, envs, weights, round):
    return service.run_round(round, envs, weights, context="test", length=N, max_norm=BOUND, slack=SLACK,
                             sketches=M, buckets=K)  # fmt: skip


def test_ten_sites_sum_exactly_and_an_over_bound_update_is_excluded(parties):
    service, keys, _ = parties
    ups = {f"site-{i:02d}": update(i, norm=1.5) for i in range(1, 11)}
    ups["site-07"] = update(7, norm=40.0)  # a faulty site far outside the bound
    weights = {s: 10 + 7 * i for i, s in enumerate(sorted(ups))}
    res = run(service, envelopes(ups, keys, round=1), weights, round=1)
    assert res.usable == sorted(ups) and res.unopened == {}
    assert res.passed == {s: s != "site-07" for s in sorted(ups)}
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
    env = envs["site-05"]
    envs["site-05"] = type(env)(env.header, {**env.blobs, "helper1": env.blobs["helper1"][:-7]})
    res = run(service, envs, {s: 1 for s in envs}, round=2)
    assert set(res.unopened) == {"site-05"} and "fails authentication" in res.unopened["site-05"]
    assert "site-05" not in res.usable and len(res.usable) == 8
    want = sum(flatten(ups[s]) for s in res.usable)
    assert np.max(np.abs(res.total - want)) <= 1e-4
    # three of ten drop out
    envs = envelopes(ups, keys, round=3)
    for gone in ("site-03", "site-06", "site-09"):
        del envs[gone]
    res = run(service, envs, {s: 1 for s in envs}, round=3)
    assert res.usable == sorted(envs) and all(res.passed.values())
    assert np.max(np.abs(res.total - sum(flatten(ups[s]) for s in envs))) <= 1e-4


def test_a_crafted_update_whose_squares_wrap_the_ring_is_caught(parties):
    """One coordinate of 65536 encodes to 2^32: its square is 0 mod 2^64, so a plain sum of
    squares on shares would pass it. The sketch's range check does not."""
    service, keys, _ = parties
    ups = {"site-01": update(1, norm=1.0), "site-02": update(2, norm=1.0)}
    ups["site-02"]["delta"]["b"][17] = 65536.0
    x = encode_fixed(flatten(ups["site-02"]))
    with np.errstate(over="ignore"):
        assert int(np.sum(x * x)) < limits(BOUND, SLACK)[1]  # the naive check would accept it
    res = run(service, envelopes(ups, keys, round=4), {"site-01": 1, "site-02": 1}, round=4)
    assert res.passed == {"site-01": True, "site-02": False}
    assert np.max(np.abs(res.total - flatten(ups["site-01"]))) <= 1e-4


def test_the_mpc_check_agrees_with_the_plain_check_near_the_bound(parties):
    service, keys, _ = parties
    norms = {"site-01": 0.5 * BOUND, "site-02": 0.95 * BOUND, "site-03": 1.5 * BOUND, "site-04": 3 * BOUND}
    ups = {s: update(i, norm=n) for i, (s, n) in enumerate(norms.items())}
    res = run(service, envelopes(ups, keys, round=5), {s: 1 for s in ups}, round=5)
    plan = sketch_plan(bytes.fromhex(res.sketch_seed), N, M, K)
    for s in ups:
        assert res.passed[s] == plain_check(encode_fixed(flatten(ups[s])), plan, K, BOUND, SLACK)
    assert res.passed == {"site-01": True, "site-02": True, "site-03": False, "site-04": False}


def test_no_non_site_party_receives_a_plaintext_update(parties):
    """Every array each party received (its decrypted shares and all CrypTen traffic) is compared
    with every site's encoded update and sketches; only the revealed sum, at the server, matches."""
    service, keys, transcripts = parties
    ups = {f"site-{i:02d}": update(200 + i, norm=1.0) for i in range(1, 4)}
    weights = {s: 1 for s in ups}
    res = run(service, envelopes(ups, keys, round=6), weights, round=6)
    plan = sketch_plan(bytes.fromhex(res.sketch_seed), N, M, K)
    secrets = {s: encode_fixed(flatten(p)) for s, p in ups.items()}
    sketches = {s: sketch(torch.from_numpy(x), plan, K).numpy().ravel() for s, x in secrets.items()}
    total = sum(secrets.values())
    seen_sum = 0
    for name in ("server", "helper1"):
        received = np.load(transcripts / f"{name}-round0006.npz")
        shares = [received[k] for k in received.files if ":share." in k]
        assert len(shares) == 3 and all(looks_uniform(s) for s in shares)
        for key in received.files:
            arr = received[key].astype(np.int64).ravel()
            if arr.size == N and np.array_equal(arr, total):
                assert name == "server" and key.endswith("comm.reduce")  # the revealed sum, to the server only
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
