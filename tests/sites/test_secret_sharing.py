"""Site-side secret sharing: exact ring arithmetic, uniform shares, sealed envelopes, commitments."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from pharmafl.sites import update as wire
from pharmafl.sites.secret_sharing import (
    PartyKey,
    ShareError,
    check_header,
    commitment,
    decode_fixed,
    encode_fixed,
    expand_seed,
    flatten,
    open_commitment,
    open_share,
    parse_envelope,
    seal_update,
    split,
    unflatten,
)

from ..uniformity import looks_uniform

PARTIES = [PartyKey.generate("server"), PartyKey.generate("helper1")]


@given(arrays(np.float64, st.integers(1, 300), elements=st.floats(-1e6, 1e6)), st.integers(1, 3))
@settings(max_examples=60, deadline=None)
def test_shares_sum_to_the_encoded_update_in_the_ring(x, helpers):
    enc = encode_fixed(x)
    s0, seeds = split(enc, helpers)
    with np.errstate(over="ignore"):
        total = s0 + sum(expand_seed(seed, len(x)) for seed in seeds)
    assert np.array_equal(total, enc)
    assert np.max(np.abs(decode_fixed(enc) - x)) <= 2.0**-17 + 1e-9  # rounding to the nearest 2^-16


def test_encoding_refuses_non_finite_and_out_of_range_values():
    with pytest.raises(ShareError, match="position 2 is not finite"):
        encode_fixed(np.array([0.1, 0.2, np.nan]))
    with pytest.raises(ShareError, match="exceeds"):
        encode_fixed(np.array([2.0**41]))


def test_a_server_share_is_uniform_whatever_the_update():
    x = np.random.default_rng(0).normal(0, 1e-3, 200_000)  # a typical, small update
    s0, _ = split(encode_fixed(x), helpers=1)
    assert looks_uniform(s0)
    assert not looks_uniform(encode_fixed(x))  # the test can fail: the plaintext encoding is not uniform
    constant = np.zeros(200_000)  # even an all-zero update gives a uniform share
    assert looks_uniform(split(encode_fixed(constant), helpers=1)[0])
    assert abs(np.corrcoef(s0.astype(np.float64), x)[0, 1]) < 0.02


def _envelope(x: np.ndarray, round: int = 1, parties=PARTIES):
    parts = {"delta": {"a": x[:6].reshape(2, 3).astype(np.float32), "b": x[6:].astype(np.float32)}}
    payload = wire.encode(wire.Update("site-01", round, 10, parts))
    sealed = seal_update(
        site="site-01",
        round=round,
        num_examples=10,
        parts=parts,
        update_hash=wire.sha256(payload),
        parties=parties,
        context="run-1",
    )
    return parts, payload, sealed.envelope, sealed.opening


def test_each_party_opens_only_its_share_and_the_shares_sum_to_the_update():
    x = np.random.default_rng(1).normal(0, 0.1, 1000)
    parts, _, data, _ = _envelope(x)
    env = parse_envelope(data)
    n = len(x)
    shares = [open_share(env, p, n, context="run-1", round=1) for p in PARTIES]
    with np.errstate(over="ignore"):
        total = shares[0] + shares[1]
    assert np.allclose(unflatten(decode_fixed(total), env.layout)["delta"]["b"], parts["delta"]["b"], atol=1e-5)
    assert np.array_equal(flatten(parts), flatten(unflatten(flatten(parts), env.layout)))
    stranger = PartyKey.generate("helper1")  # the right name, the wrong key
    with pytest.raises(ShareError, match="encrypted to key"):
        open_share(env, stranger, n, context="run-1", round=1)
    assert set(env.share_hashes()) == {"server", "helper1"}
    for p, blob in env.blobs.items():
        assert env.share_hashes()[p] == hashlib.sha256(blob).hexdigest()


def test_the_envelope_holds_no_plaintext():
    x = np.random.default_rng(2).normal(0, 0.1, 4006)
    parts, payload, data, _ = _envelope(x)
    raw = parts["delta"]["b"].tobytes()
    for start in range(0, len(raw) - 32, 997):  # no 32-byte run of the float32 update appears
        assert raw[start : start + 32] not in data
    assert raw[:32] in payload  # ...while the plaintext update bytes do contain it


def test_tampered_truncated_or_replayed_envelopes_are_refused():
    x = np.random.default_rng(3).normal(0, 0.1, 500)
    _, _, data, _ = _envelope(x)
    with pytest.raises(ShareError, match="truncated or altered"):
        parse_envelope(data[:-10])
    flipped = bytearray(data)
    flipped[-5] ^= 1
    with pytest.raises(ShareError, match="truncated or altered"):
        parse_envelope(bytes(flipped))
    with pytest.raises(ShareError, match="not a pharmafl-secagg"):
        parse_envelope(b"junk" * 10)
    env = parse_envelope(data)
    with pytest.raises(ShareError, match="expected 'run-2' round 1"):  # another run's shares
        open_share(env, PARTIES[0], 500, context="run-2", round=1)
    replay = type(env)({**env.header, "round": 2}, env.blobs)  # the same shares relabelled for another round
    with pytest.raises(ShareError, match="does not open"):
        open_share(replay, PARTIES[0], 500, context="run-1", round=2)
    forged = type(env)({**env.header, "context": "run-2"}, env.blobs)  # ...or for another run
    with pytest.raises(ShareError, match="does not open"):
        open_share(forged, PARTIES[0], 500, context="run-2", round=1)
    moved = type(env)({**env.header, "site": "site-02"}, env.blobs)  # ...or as another site's
    with pytest.raises(ShareError, match="does not open"):
        open_share(moved, PARTIES[0], 500, context="run-1", round=1)


@pytest.mark.parametrize("enc", [bytes(32), b"\xff" * 32, bytes([1] + [0] * 31)])
def test_a_bad_encapsulated_key_is_one_share_error(enc):
    """HPKE's ephemeral key leads the ciphertext: all-zero, all-ones or a low-order point
    never escapes as anything but ShareError (it used to be a ValueError past the handler)."""
    x = np.random.default_rng(5).normal(0, 0.1, 50)
    _, _, data, _ = _envelope(x)
    env = parse_envelope(data)
    blob = enc + env.blobs["helper1"][32:]
    header = {
        **env.header,
        "parties": {
            **env.header["parties"],
            "helper1": {**env.header["parties"]["helper1"], "sha256": hashlib.sha256(blob).hexdigest()},
        },
    }
    with pytest.raises(ShareError, match="does not open"):
        open_share(type(env)(header, {"helper1": blob}), PARTIES[1], 50, context="run-1", round=1)


def test_the_commitment_binds_the_update_and_the_shares_and_hides_them():
    x = np.random.default_rng(4).normal(0, 0.1, 100)
    parts, payload, data, opening = _envelope(x)
    header = parse_envelope(data).header
    x_enc = encode_fixed(flatten(parts))
    assert header["commitment"] == open_commitment(opening, wire.sha256(payload), x_enc, site="site-01", round=1)
    assert header["commitment"] != open_commitment(
        {**opening, "salt": os.urandom(32).hex()}, wire.sha256(payload), x_enc, site="site-01", round=1
    )  # salted: not guessable
    other = x_enc.copy()
    other[0] += 1  # another update under the same seeds: the server's share would differ
    assert header["commitment"] != open_commitment(opening, wire.sha256(payload), other, site="site-01", round=1)
    seeds = {"helper1": os.urandom(32).hex()}  # the same update, claimed to be shared under other seeds
    assert header["commitment"] != open_commitment(
        {**opening, "seeds": seeds}, wire.sha256(payload), x_enc, site="site-01", round=1
    )
    pieces = {p: d["piece"] for p, d in header["parties"].items()}
    assert header["commitment"] == commitment(bytes.fromhex(opening["salt"]), wire.sha256(payload), pieces)


def test_a_party_detects_a_share_that_is_not_the_committed_piece():
    x = np.random.default_rng(6).normal(0, 0.1, 40)
    _, _, data, _ = _envelope(x)
    env = parse_envelope(data)
    entry = {**env.header["parties"]["helper1"], "piece": "0" * 64}
    lying = type(env)({**env.header, "parties": {**env.header["parties"], "helper1": entry}}, env.blobs)
    with pytest.raises(ShareError, match="not to the piece its header commits to"):
        open_share(lying, PARTIES[1], 40, context="run-1", round=1)


def test_sealing_needs_the_server_party_and_a_helper():
    x = np.zeros(10)
    with pytest.raises(ShareError, match="at least one helper"):
        _envelope(x, parties=[PARTIES[0]])


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda h: h.pop("round"), "header fields"),
        (lambda h: h.update(round="1"), "wrong type"),
        (lambda h: h["parties"]["helper1"].update(recipient="zz" * 32), "malformed"),
        (lambda h: h["parties"]["helper1"].pop("piece"), "malformed"),
        (lambda h: h.update(format="pharmafl-secagg/1"), "format"),
        (lambda h: h.update(layout=[["delta/a", [-1]]]), "wrong type"),
    ],
)
def test_a_malformed_header_is_one_share_error(change, match):
    _, _, data, _ = _envelope(np.zeros(10))
    header = json.loads(parse_envelope(data).header_bytes)
    change(header)
    with pytest.raises(ShareError, match=match):
        check_header(header)


def test_party_keys_roundtrip_encrypted_at_rest():
    key = PartyKey.generate("helper1")
    pem = key.private_pem("pass phrase")
    assert b"ENCRYPTED" in pem
    assert PartyKey.from_pem("helper1", pem, "pass phrase").public == key.public
    with pytest.raises(ShareError, match="wrong passphrase"):
        PartyKey.from_pem("helper1", pem, "another")
