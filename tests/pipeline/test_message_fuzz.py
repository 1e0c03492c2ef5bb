"""Every message a site or an aggregation party sends, fuzzed: a malformed one is a value the
coordinator records as that sender's failure for the round (a problem string, a refusal, the
wire format's one error type), never another exception that ends the coordinator or a party.

Covered: the NVFlare result a site sends (:func:`result_from_model`, :func:`witness_answer`), the
update bytes (:func:`sites.update.decode`), the secure envelope (:func:`parse_envelope`,
:func:`open_share`, HPKE :func:`unseal`), the party channel's frames (:mod:`secure_agg.wire`),
the coordinator's checks of a site's metrics and privacy report, a site's signed statements
(:func:`check_statements`), the validation loss quality weighting divides by, the parties'
replies to the coordinator (:mod:`secure_agg.client`) and a party's round when opening one
envelope fails unexpectedly (:class:`secure_agg.service.Session`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import socket
import struct
import threading
import types

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import array_shapes, arrays
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

from pharmafl.audit import messages
from pharmafl.pipeline import coordinator as coord, events as ev
from pharmafl.pipeline.events import EventBus
from pharmafl.pipeline.nvflare_wire import (
    UPDATE_KEY,
    WITNESS_KEY,
    model_from_declined,
    model_from_result,
    result_from_model,
    witness_answer,
)
from pharmafl.pipeline.secure_agg import (
    client as party_client,
    party_home,
    service as party_service,
    wire as party_wire,
)
from pharmafl.pipeline.secure_agg.client import OTHER_PARTY, AggregationService, SecureAggregationError
from pharmafl.pipeline.statements import check_statements, statement_problem
from pharmafl.pipeline.strategies.base import Strategy
from pharmafl.sites import secret_sharing as ss, update as upd
from pharmafl.sites.signed_site import statement_payloads
from pharmafl.sites.site import Declined, FitResult

FUZZ = settings(max_examples=150, deadline=None)

# --- values a site may send -----------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
odd_scalars = st.sampled_from(
    [
        math.nan,
        math.inf,
        -math.inf,
        True,
        False,
        2**64,
        10**400,
        -(2**1023),
        b"bytes",
        (1, 2),
        frozenset({1}),
        1 + 2j,
        np.float32(0.5),
        np.int64(3),
        np.array([1.0, 2.0]),
        object(),
    ]
)
odd_values = st.recursive(
    json_values | odd_scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.one_of(st.text(max_size=6), st.integers(), st.none(), st.tuples(st.integers())), inner, max_size=3
        )
    ),
    max_leaves=8,
)
hex64 = st.text("0123456789abcdef", min_size=64, max_size=64)


# --- the NVFlare result: result_from_model --------------------------------------------------------


def _model(meta, params=None) -> FLModel:
    m = FLModel(params_type=ParamsType.FULL, params={"x": np.zeros(1, np.uint8)}, meta={})
    m.meta, m.params = meta, params  # as a deserialised message may hold them, past FLModel's own checks
    return m


statements = st.lists(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["site_update", "clip", "privacy_spent"])}, optional={"x": json_values}
    ),
    max_size=3,
)
fit_results = st.builds(
    FitResult,
    site=st.just("site-01"),
    round=st.integers(1, 50),
    payload=st.binary(max_size=200),
    update_hash=hex64,
    num_examples=st.integers(1, 2**40),
    metrics=st.dictionaries(st.text(max_size=8), st.floats(allow_nan=False), max_size=4),
    privacy=st.none() | st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    statements=statements.map(tuple),
)


@given(fit_results)
@FUZZ
def test_a_well_formed_result_round_trips(res):
    assert result_from_model(res.site, res.round, model_from_result(res)) == res


@given(st.text(max_size=20), st.dictionaries(st.text(max_size=8), json_values, max_size=3), statements)
@FUZZ
def test_a_well_formed_decline_round_trips(reason, details, stmts):
    d = Declined("site-02", 4, reason, details, tuple(stmts))
    assert result_from_model("site-02", 4, model_from_declined(d)) == d


def _payloads():
    dtypes = st.sampled_from([np.uint8, np.int8, np.int64, np.uint16, np.float32, np.float64, np.bool_, "<U2"])
    return st.one_of(
        arrays(dtypes, array_shapes(min_dims=0, max_dims=2, max_side=6)),
        st.lists(st.integers(-300, 300), max_size=8),
        st.lists(st.lists(st.integers(0, 3), max_size=3), max_size=3),  # ragged or 2-D
        odd_values,
    )


metas = st.fixed_dictionaries(
    {},
    optional={
        "round": st.one_of(st.just(3), odd_values),
        "update_hash": st.one_of(hex64, odd_values),
        "num_examples": st.one_of(st.integers(-2, 100), odd_values),
        "site_metrics": odd_values,
        "privacy": odd_values,
        "statements": st.one_of(statements, odd_values),
        "declined": st.one_of(
            st.fixed_dictionaries({"reason": st.one_of(st.text(max_size=5), odd_values), "details": odd_values}),
            odd_values,
        ),
        "error": odd_values,
        "pharmafl_witness": odd_values,
    },
)
params = st.one_of(
    st.fixed_dictionaries({UPDATE_KEY: _payloads()}),
    st.dictionaries(st.one_of(st.text(max_size=6), st.integers()), odd_values, max_size=3),
    odd_values,
)


@given(st.one_of(metas, odd_values), params)
@settings(max_examples=300, deadline=None)
def test_any_message_is_a_result_a_decline_or_the_sites_failure(meta, prm):
    """Whatever a site puts into meta and params: a value, never an exception; and what is
    accepted has the types the coordinator relies on."""
    got = result_from_model("site-01", 3, _model(meta, prm))
    assert isinstance(got, (str, FitResult, Declined)), got
    if isinstance(got, FitResult):
        assert type(got.payload) is bytes and type(got.num_examples) is int and got.num_examples >= 1
        assert type(got.update_hash) is str and len(got.update_hash) == 64 and got.round == 3
        assert isinstance(got.metrics, dict) and (got.privacy is None or isinstance(got.privacy, dict))
        assert all(isinstance(s, dict) and type(s["type"]) is str for s in got.statements)
    elif isinstance(got, Declined):
        assert type(got.reason) is str and isinstance(got.details, dict) and got.round == 3
        assert all(isinstance(s, dict) and type(s["type"]) is str for s in got.statements)


_GOOD = {
    "round": 3,
    "update_hash": "ab" * 32,
    "num_examples": 17,
    "site_metrics": {"train_loss": 0.5},
    "privacy": None,
    "statements": [],
}
_BYTES = {UPDATE_KEY: np.frombuffer(b"update", np.uint8).copy()}
_DECLINE = {"round": 3, "declined": {"reason": "budget spent", "details": {"epsilon_total": 1.0}}}


@pytest.mark.parametrize(
    "meta, prm, needle",
    [
        ({**_GOOD, "num_examples": "17"}, _BYTES, "num_examples"),  # int("17") was accepted
        ({**_GOOD, "num_examples": [17]}, _BYTES, "num_examples"),  # int([17]) raised TypeError
        ({**_GOOD, "num_examples": None}, _BYTES, "num_examples"),
        ({**_GOOD, "num_examples": True}, _BYTES, "num_examples"),
        ({**_GOOD, "num_examples": 2.5}, _BYTES, "num_examples"),  # silently truncated to 2
        ({**_GOOD, "num_examples": math.inf}, _BYTES, "num_examples"),  # OverflowError
        ({**_GOOD, "round": "3"}, _BYTES, "round"),
        ({**_GOOD, "round": None}, _BYTES, "round"),  # int(None) raised TypeError
        ({**_GOOD, "round": [3]}, _BYTES, "round"),
        ({**_GOOD, "update_hash": 123}, _BYTES, "update_hash"),  # str(123) was accepted
        ({**_GOOD, "update_hash": "AB" * 32}, _BYTES, "update_hash"),
        ({**_GOOD, "update_hash": "ab" * 31}, _BYTES, "update_hash"),
        ({**_GOOD, "site_metrics": [("loss", 1.0)]}, _BYTES, "site_metrics"),  # dict() of pairs was accepted
        ({**_GOOD, "site_metrics": 0.5}, _BYTES, "site_metrics"),  # dict(0.5) raised TypeError
        ({**_GOOD, "privacy": [1, 2]}, _BYTES, "privacy"),
        ({**_GOOD, "statements": "signed"}, _BYTES, "statements"),  # tuple("signed") = characters
        ({**_GOOD, "statements": [1, 2]}, _BYTES, "statements"),
        ({**_GOOD, "statements": [{"type": ["site_update"]}]}, _BYTES, "statements"),  # unhashable type
        ({**_GOOD, "statements": 5}, _BYTES, "statements"),  # tuple(5) raised TypeError
        (_GOOD, {UPDATE_KEY: np.array([1.5, 2.5])}, "update"),  # floats were cast to bytes
        (_GOOD, {UPDATE_KEY: np.zeros((2, 2), np.uint8)}, "update"),
        (_GOOD, {UPDATE_KEY: [1, 300]}, "update"),  # OverflowError
        (_GOOD, {UPDATE_KEY: [[1], [2, 3]]}, "update"),  # ragged: ValueError
        (_GOOD, {UPDATE_KEY: {"a": 1}}, "update"),
        (_GOOD, [UPDATE_KEY], "params"),  # .get on a list raised AttributeError
        ([("round", 3)], _BYTES, "meta"),
        ({**_DECLINE, "round": "3"}, None, "round"),  # int("3") was accepted
        ({**_DECLINE, "declined": {"reason": "x", "details": [1]}}, None, "decline"),  # dict([1]) raised
        ({**_DECLINE, "declined": {"reason": 7, "details": {}}}, None, "decline"),  # str(7) was accepted
        ({**_DECLINE, "declined": ["budget"]}, None, "decline"),  # list indices raised TypeError
        ({**_DECLINE, "declined": {"reason": "x"}}, None, "decline"),  # KeyError
        ({**_DECLINE, "statements": {"type": "site_declined"}}, None, "statements"),  # tuple of the keys
    ],
)
def test_a_field_of_the_wrong_type_is_named_not_raised_or_coerced(meta, prm, needle):
    """The issue's case: a meta whose fields have the wrong types is that site's failure."""
    got = result_from_model("site-01", 3, _model(meta, prm))
    assert isinstance(got, str) and needle in got, got


def test_a_decline_for_another_round_says_so():
    got = result_from_model("site-01", 4, _model(_DECLINE, None))
    assert got == "decline for round 3 arrived in round 4"


def test_byte_values_of_any_integer_dtype_are_the_same_bytes():
    res = result_from_model("site-01", 3, _model(_GOOD, {UPDATE_KEY: np.array([0, 7, 255], np.int64)}))
    assert isinstance(res, FitResult) and res.payload == bytes([0, 7, 255])


def test_a_long_error_text_is_bounded():
    got = result_from_model("site-01", 3, _model({"round": 3, "error": "x" * 10**6}, None))
    assert got.startswith("local training failed: xxx") and len(got) < 3000 and "1000000 characters" in got


@given(st.one_of(st.none(), st.fixed_dictionaries({}, optional={WITNESS_KEY: odd_values}), odd_values))
@FUZZ
def test_any_witness_answer_is_a_cosignature_a_reason_or_none(meta):
    got = witness_answer(_model(meta))
    assert got is None or isinstance(got, (str, dict)), got


@pytest.mark.parametrize(
    "meta, expected",
    [
        ({}, None),
        ({WITNESS_KEY: {"refused": "no key"}}, "no key"),
        ({WITNESS_KEY: {"witness": "site-01"}}, {"witness": "site-01"}),
        ({WITNESS_KEY: [1, 2]}, "witness answer malformed: a list, not a cosignature or a reason"),
        ([WITNESS_KEY], "witness answer malformed: the result's meta is a list"),  # .get raised AttributeError
    ],
)
def test_witness_answers(meta, expected):
    assert witness_answer(_model(meta)) == expected


# --- the update bytes: sites.update.decode --------------------------------------------------------

_UPDATE = upd.encode(
    upd.Update("site-01", 3, 10, {"delta": {"a": np.ones((2, 3)), "b": np.zeros(4)}, "control": {"a": np.ones((2, 3))}})
)


def _with_meta(data: bytes, meta) -> bytes:
    """``data`` with its safetensors header's ``pharmafl`` metadata replaced by ``meta`` (any JSON
    text, or a value that is dumped)."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header["__metadata__"]["pharmafl"] = meta if isinstance(meta, str) else json.dumps(meta)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + data[8 + n :]


@st.composite
def mangled(draw, valid: bytes) -> bytes:
    """``valid`` cut short, with bytes flipped, with its length prefix rewritten, or random bytes."""
    data = bytearray(valid)
    how = draw(st.sampled_from(["cut", "flip", "length", "raw"]))
    if how == "cut":
        del data[draw(st.integers(0, len(data) - 1)) :]
    elif how == "flip":
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
    elif how == "length":
        at = draw(st.sampled_from([0, len(ss.MAGIC)]))
        data[at : at + 8] = struct.pack("<Q", draw(st.integers(0, 2**64 - 1)))
    else:
        data = bytearray(draw(st.binary(max_size=600)))
    return bytes(data)


update_metas = st.fixed_dictionaries(
    {"format": st.one_of(st.just(upd.FORMAT), json_values)},
    optional={"site": json_values, "round": json_values, "num_examples": json_values},
)


def _decoded_or_update_error(data) -> upd.Update | None:
    try:
        u = upd.decode(data)
    except upd.UpdateError:
        return None
    assert type(u.site) is str and type(u.round) is int and type(u.num_examples) is int
    assert all(a.dtype == np.float32 for arrays_ in u.parts.values() for a in arrays_.values())
    return u


@given(st.one_of(mangled(_UPDATE), st.binary(max_size=300)))
@FUZZ
def test_any_update_bytes_decode_or_raise_update_error(data):
    _decoded_or_update_error(data)


@given(st.one_of(update_metas, json_values))
@FUZZ
def test_any_update_metadata_decodes_or_raises_update_error(meta):
    _decoded_or_update_error(_with_meta(_UPDATE, meta))


@pytest.mark.parametrize(
    "meta",
    [
        '{"format": "pharmafl-update/1", "site": "s", "round": Infinity, "num_examples": 1}',  # OverflowError
        '{"format": "pharmafl-update/1", "site": "s", "round": 1, "num_examples": 1e999}',  # OverflowError
        {"format": upd.FORMAT, "site": "s", "round": 1.5, "num_examples": 1},  # was truncated to 1
        {"format": upd.FORMAT, "site": "s", "round": "3", "num_examples": 1},  # int("3") was accepted
        {"format": upd.FORMAT, "site": "s", "round": 3, "num_examples": True},  # int(True) was accepted
        {"format": upd.FORMAT, "site": ["s"], "round": 3, "num_examples": 1},  # str(["s"]) was accepted
        {"format": upd.FORMAT, "site": "s", "round": 3},  # KeyError (was already an UpdateError)
    ],
    ids=["round-inf", "examples-1e999", "round-1.5", "round-str", "examples-bool", "site-list", "missing"],
)
def test_update_metadata_of_the_wrong_type_is_an_update_error(meta):
    with pytest.raises(upd.UpdateError):
        upd.decode(_with_meta(_UPDATE, meta))


def test_an_update_array_that_is_not_float32_is_an_update_error():
    from safetensors.numpy import save

    meta = {"format": upd.FORMAT, "site": "s", "round": 1, "num_examples": 1}
    data = save({"delta/a": np.ones(3, np.int64)}, metadata={"pharmafl": json.dumps(meta)})
    with pytest.raises(upd.UpdateError, match="int64, expected float32"):
        upd.decode(data)


# --- the secure envelope: parse_envelope, open_share, unseal ---------------------------------------

_PARTIES = [ss.PartyKey.generate("server"), ss.PartyKey.generate("helper1")]
_PARTS = {"delta": {"a": np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)}}
_ENVELOPE = ss.seal_update(
    site="site-01", round=1, num_examples=10, parts=_PARTS, update_hash="ab" * 32, parties=_PARTIES, context="run-1"
).envelope
_N = struct.unpack("<Q", _ENVELOPE[len(ss.MAGIC) : len(ss.MAGIC) + 8])[0]
_HEAD = json.loads(_ENVELOPE[len(ss.MAGIC) + 8 : len(ss.MAGIC) + 8 + _N])
_BODY = _ENVELOPE[len(ss.MAGIC) + 8 + _N :]


@st.composite
def rewritten_headers(draw):
    """The valid header with one field (at any depth) replaced, removed, or one added."""
    header = json.loads(json.dumps(_HEAD))
    node, path = header, []
    while isinstance(node, (dict, list)) and node and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
        if not isinstance(node[key], (dict, list)):
            break
        node, path = node[key], [*path, key]
    keys = sorted(node) if isinstance(node, dict) else list(range(len(node)))
    how = draw(st.sampled_from(["set", "drop", "add"]))
    if how == "add" and isinstance(node, dict):
        node[draw(st.text(max_size=6))] = draw(json_values)
    elif keys:
        key = draw(st.sampled_from(keys))
        if how == "drop":
            del node[key]
        else:
            node[key] = draw(st.one_of(json_values, st.sampled_from([2**70, -1, 0, "ab" * 32, 1e308])))
    head = json.dumps(header).encode()
    return ss.MAGIC + struct.pack("<Q", len(head)) + head + _BODY


def _parsed_or_share_error(data) -> None:
    try:
        env = ss.parse_envelope(data)
    except ss.ShareError:
        return
    for party in _PARTIES:
        try:
            share = ss.open_share(env, party, 6, context="run-1", round=1)
        except ss.ShareError:
            continue
        assert share.dtype == np.dtype("<i8") and share.shape == (6,)


@given(st.one_of(mangled(_ENVELOPE), rewritten_headers(), st.binary(max_size=300)))
@settings(max_examples=200, deadline=None)
def test_any_envelope_bytes_parse_and_open_or_raise_share_error(data):
    _parsed_or_share_error(data)


@given(st.binary(max_size=120), st.sampled_from(_PARTIES), st.binary(max_size=40))
@FUZZ
def test_any_ciphertext_unseals_only_as_share_error(ct, party, info_):
    with pytest.raises(ss.ShareError, match="does not open"):
        ss.unseal(ct, party, info_)


def test_a_party_key_without_its_private_half_cannot_open_and_says_so_as_share_error():
    env = ss.parse_envelope(_ENVELOPE)
    with pytest.raises(ss.ShareError, match="does not open"):
        ss.open_share(env, _PARTIES[1].public_only(), 6, context="run-1", round=1)


@pytest.mark.parametrize("data", [None, "PFLSA2\n", bytearray(_ENVELOPE), memoryview(_ENVELOPE), 7])
def test_an_envelope_that_is_not_bytes_is_a_share_error(data):
    with pytest.raises(ss.ShareError, match="not a pharmafl-secagg"):
        ss.parse_envelope(data)


# --- the party channel: secure_agg.wire -----------------------------------------------------------


def _recv(data: bytes):
    """:func:`party_wire.recv` of ``data`` sent through a socketpair and closed."""
    a, b = socket.socketpair()
    try:
        b.settimeout(5)
        sender = threading.Thread(target=lambda: (a.sendall(data), a.shutdown(socket.SHUT_WR)))
        sender.start()
        try:
            return party_wire.recv(b)
        finally:
            sender.join()
    finally:
        a.close()
        b.close()


def _frame(json_text: bytes, blobs=()) -> bytes:
    out = struct.pack("<I", len(json_text)) + json_text + struct.pack("<I", len(blobs))
    return out + b"".join(struct.pack("<Q", len(x)) + x for x in blobs)


json_texts = st.one_of(
    json_values.map(lambda v: json.dumps({"v": v}).encode()),
    st.text(max_size=60).map(str.encode),
    st.sampled_from([b'{"a": 1e999}', b'{"a": -1e400}', b'{"a": NaN}', b'{"a": 1, "a": 2}', b"[" * 5000]),
)


@given(json_texts, st.lists(st.binary(max_size=20), max_size=3))
@FUZZ
def test_what_a_party_channel_accepts_it_can_send_on(text, blobs):
    """A received document is JSON the sender could have written: :func:`send` takes it back."""
    try:
        doc, got = _recv(_frame(text, blobs))
    except party_wire.WireError:
        return
    assert got == blobs
    out = bytearray()
    party_wire.send(type("Sink", (), {"sendall": lambda self, b: out.extend(b)})(), doc, got)
    assert _recv(bytes(out)) == (doc, got)


@pytest.mark.parametrize("text", [b'{"a": 1e999}', b'{"round": -1e400}', b'{"x": [1E+309]}'])
def test_a_number_beyond_the_doubles_is_a_wire_error_not_infinity(text):
    """``json.loads`` reads 1e999 as ``inf``: a document :func:`send` could never have written."""
    with pytest.raises(party_wire.WireError, match="not finite"):
        _recv(_frame(text))


@pytest.mark.parametrize(
    "doc",
    [{"a": math.nan}, {"a": math.inf}, {"a": object()}, {1j: 1}, {"a": b"bytes"}, ["op"], None],
    ids=["nan", "inf", "object", "complex-key", "bytes", "list", "none"],
)
def test_a_document_json_cannot_carry_is_a_wire_error_before_sending(doc):
    sent = bytearray()
    sink = type("Sink", (), {"sendall": lambda self, b: sent.extend(b)})()
    with pytest.raises(party_wire.WireError):
        party_wire.send(sink, doc)
    assert not sent


# --- the coordinator's checks of a site's report ---------------------------------------------------

reports = st.one_of(
    st.dictionaries(st.one_of(st.text(max_size=8), st.integers(), st.none()), odd_values, max_size=6),
    st.fixed_dictionaries(
        {
            k: st.one_of(st.floats(0, 10), odd_values)
            for k in ("clip_norm", "clipped", "total", "max_norm", "mean_norm")
        },
        optional={k: st.one_of(st.floats(0, 10), odd_values) for k in ("epsilon_round", "epsilon_total", "delta")},
    ),
    odd_values,
)


def _result(metrics, privacy=None) -> FitResult:
    return FitResult("site-01", 1, b"", "ab" * 32, 10, metrics, privacy)


def _finite_number(v) -> bool:
    return type(v) in (int, float) and abs(v) < 2**1024 and math.isfinite(v)


@given(reports, st.one_of(st.none(), reports))
@settings(max_examples=200, deadline=None)
def test_any_metrics_and_privacy_report_are_accepted_or_refused_never_raised(metrics, privacy):
    problem = coord._report_problem(_result(metrics, privacy))
    assert problem is None or isinstance(problem, str)
    metrics_ok = isinstance(metrics, dict) and all(type(k) is str and _finite_number(v) for k, v in metrics.items())
    if not metrics_ok:
        assert problem is not None  # anything but finite numbers under text keys is refused
    if problem is None and privacy is not None:
        assert all(type(k) is str and k not in coord.RESERVED_KEYS for k in privacy)
        assert all(_finite_number(privacy[k]) for k in ("clipped", "total"))


@given(reports)
@FUZZ
def test_any_privacy_report_or_decline_details_are_checked_never_raised(values):
    for problem in (coord._privacy_problem(values), coord._fields_problem("decline", values, numbers=("a",))):
        assert problem is None or isinstance(problem, str)


_CLIP = {"clip_norm": 1.0, "clipped": 1, "total": 4, "max_norm": 1.0, "mean_norm": 0.5}


@pytest.mark.parametrize(
    "metrics, privacy, refused",
    [
        ({"train_loss": 2**64}, None, False),  # a finite number np.isfinite could not take: TypeError
        ({"train_loss": 10**400}, None, True),  # TypeError; a double cannot hold it
        ({1: 0.5}, None, True),  # a key the ledger cannot write
        ([("train_loss", 0.5)], None, True),  # .items() of a list raised AttributeError
        ({}, {**_CLIP, "clipped": 2**70}, False),  # TypeError
        ({}, {**_CLIP, "total": 10**400}, True),  # TypeError
        ({}, {**_CLIP, "epsilon_round": 0.1, "epsilon_total": -(10**400)}, True),  # TypeError
    ],
    ids=["int-2^64", "int-1e400", "int-key", "list", "privacy-2^70", "privacy-1e400", "epsilon-1e400"],
)
def test_a_large_integer_or_a_non_mapping_is_checked_not_raised(metrics, privacy, refused):
    problem = coord._report_problem(_result(metrics, privacy))
    assert (problem is not None) is refused, problem
    assert problem is None or "malformed" in problem or "not finite numbers" in problem, problem


def _valid_update(num_examples) -> bytes:
    return upd.encode(upd.Update("site-01", 1, num_examples, {"delta": {"w": np.zeros(2, np.float32)}}))


@pytest.mark.parametrize("n", [2**1023, 2**53 + 2, True, 0], ids=["2^1023", "2^53+2", "bool", "zero"])
def test_an_example_count_beyond_2_53_or_not_an_integer_is_refused(n):
    """2**1023 examples survived every check (the site signs it; canonical JSON holds it
    exactly), then a second such site or quality weighting made the weights infinite (a
    ValueError out of the round) or zero (an aggregate that ignored every site)."""
    payload = _valid_update(n)
    res = FitResult("site-01", 1, payload, upd.sha256(payload), n, {"train_loss": 0.5})
    problem = coord._validate("site-01", 1, res, {"w": np.zeros(2, np.float32)})
    assert problem is not None and "example" in problem, problem


def test_a_valid_update_is_accepted():
    payload = _valid_update(12)
    res = FitResult("site-01", 1, payload, upd.sha256(payload), 12, {"train_loss": 0.5})
    assert coord._validate("site-01", 1, res, {"w": np.zeros(2, np.float32)}) is None


# --- a site's signed statements: statement_problem, check_statements ------------------------------

_SITE_KEY = Ed25519PrivateKey.generate()
_SITE_PUB = _SITE_KEY.public_key().public_bytes_raw()
_SIGNED = {"update_hash": "ab" * 32, "num_examples": 10, "update_bytes": 6, "metrics": {"train_loss": 0.5}}
_STMT = messages.make_statement(
    _SITE_KEY.sign, run_id="run-1", round=3, site="site-01", type="site_update", payload=_SIGNED
)


def _statement_problem(stmt, payload=_SIGNED):
    return statement_problem(
        stmt, site="site-01", round=3, run_id="run-1", type_="site_update", payload=payload, key=_SITE_PUB
    )


def _check_statements(stmts):
    return check_statements(stmts, [("site_update", _SIGNED)], site="site-01", round=3, run_id="run-1", key=_SITE_PUB)


statement_likes = st.one_of(
    st.fixed_dictionaries({}, optional={k: st.one_of(st.just(v), odd_values) for k, v in _STMT.items()}),
    st.fixed_dictionaries({k: st.just(v) for k, v in _STMT.items()}).flatmap(  # the signed one, with fields added
        lambda s: st.dictionaries(st.one_of(st.text(max_size=6), st.integers(), st.none()), odd_values, max_size=2).map(
            lambda extra: {**s, **extra}
        )
    ),
    st.dictionaries(st.one_of(st.text(max_size=8), st.integers(), st.none(), st.tuples(st.integers())), odd_values),
    odd_values,
)


def test_the_signed_statement_is_accepted():
    assert _statement_problem(_STMT) is None
    assert _check_statements([_STMT]) == ({"site_update": _STMT}, None)


@given(statement_likes, st.one_of(st.just(_SIGNED), odd_values))
@settings(max_examples=300, deadline=None)
def test_any_statement_is_accepted_or_refused_never_raised(stmt, payload):
    """Whatever a site (or a party: the coordinator passes it the payload it sent) puts there."""
    problem = _statement_problem(stmt, payload)
    assert problem is None or isinstance(problem, str)
    if problem is None:
        assert messages.fits(stmt, messages.STATEMENT_SHAPE)


@given(st.sampled_from(sorted(_STMT)), st.one_of(odd_values, hex64, st.sampled_from([3, 3.0, True, None, "site-01"])))
@FUZZ
def test_a_statement_with_one_field_replaced_is_refused_unless_it_says_the_same(field, value):
    problem = _statement_problem({**_STMT, field: value})
    if field == "payload":
        try:
            same = type(value) is dict and messages.canonical(value) == messages.canonical(_SIGNED)
        except ValueError:
            same = False
    else:
        same = type(value) is type(_STMT[field]) and value == _STMT[field]
    assert (problem is None) is same, problem


@given(st.one_of(st.lists(statement_likes, max_size=3), odd_values))
@settings(max_examples=300, deadline=None)
def test_any_statements_of_a_result_are_checked_never_raised(stmts):
    by_type, problem = _check_statements(stmts)
    assert (by_type, problem) == ({"site_update": _STMT}, None) or (by_type == {} and isinstance(problem, str))


@pytest.mark.parametrize(
    "stmts, needle",
    [
        ([{**_STMT, "type": ["site_update"]}], "without a text type"),  # `t in by_type`: unhashable, TypeError
        ([{**_STMT, "type": {"a": 1}}], "without a text type"),
        (5, "not a list"),  # iterating an int: TypeError
        ("site_update", "not a list"),  # iterated as its characters
        ({"type": "site_update"}, "not a list"),  # iterated as its keys
        ([{**_STMT, 1: "x"}], "malformed"),  # sorted() of str and int keys: TypeError
        ([{**_STMT, "round": 3.0}], "malformed"),  # equal to 3: the statement was accepted
        ([{**_STMT, "run_id": ["run-1"]}], "malformed"),
        ([{**_STMT, "payload_sha256": np.array([1, 2])}], "malformed"),  # `!=` gave an array: ValueError
        ([{**_STMT, "payload": [["update_hash", "ab" * 32]]}], "malformed"),
        ([{**_STMT, "signature": 7}], "malformed"),
        ([_STMT, dict(_STMT)], "two site_update statements"),
    ],
    ids=[
        "type-list",
        "type-dict",
        "int",
        "str",
        "dict",
        "int-key",
        "round-float",
        "run-id-list",
        "hash-array",
        "payload-pairs",
        "signature-int",
        "twice",
    ],
)
def test_a_statement_field_of_the_wrong_type_is_a_problem_not_an_exception(stmts, needle):
    by_type, problem = _check_statements(stmts)
    assert by_type == {} and needle in problem, problem


def test_a_round_that_compares_equal_is_not_the_round():
    """``True == 1``: a statement of round True passed for round 1."""
    stmt = messages.make_statement(_SITE_KEY.sign, run_id="run-1", round=1, site="site-01", type="clip", payload={})
    problem = statement_problem(
        {**stmt, "round": True}, site="site-01", round=1, run_id="run-1", type_="clip", payload={}, key=_SITE_PUB
    )
    assert problem is not None and "round" in problem, problem


@pytest.mark.parametrize("payload", [[1], "ab", 7, [["a", 1]]], ids=["list", "str", "int", "pairs"])
def test_a_payload_argument_that_is_no_mapping_is_a_problem(payload):
    """The coordinator checks a party's statement against the payload the party sent with it."""
    problem = _statement_problem(_STMT, payload)
    assert isinstance(problem, str), problem


# --- quality weighting: each site's validation loss, checked before it weighs ---------------------

_QUALITY_SITES = ("site-01", "site-02", "site-03")
_QUALITY_KEYS = {s: Ed25519PrivateKey.generate() for s in _QUALITY_SITES}


class _Events:
    def __init__(self):
        self.events = []

    def on_event(self, event):
        self.events.append(event)

    def close(self):
        pass


def _signed_result(site: str, metrics: dict, n: int = 10) -> FitResult:
    """A result of round 1 as a signed site sends it: its statements signed by its key."""
    payload = upd.encode(upd.Update(site, 1, n, {"delta": {"w": np.full(2, 0.1, np.float32)}}))
    res = FitResult(site, 1, payload, upd.sha256(payload), n, metrics)
    stmts = tuple(
        messages.make_statement(_QUALITY_KEYS[site].sign, run_id="run-q", round=1, site=site, type=t, payload=p)
        for t, p in statement_payloads(res, False)
    )
    return dataclasses.replace(res, statements=stmts)


def _quality_round(results: dict) -> tuple[coord.RoundOutcome, list]:
    events = _Events()
    c = coord.Coordinator(
        Strategy(n_sites=3),
        EventBus([events]),
        weighting="quality",
        run_id="run-q",
        site_keys={s: k.public_key().public_bytes_raw() for s, k in _QUALITY_KEYS.items()},
    )
    state = {"w": np.zeros(2, np.float32)}
    c.start_round(1, state, sorted(results))
    return c.finish_round(1, state, results), events.events


def test_quality_weighting_weighs_by_examples_over_validation_loss():
    out, events = _quality_round(
        {
            "site-01": _signed_result("site-01", {"global_val_mse": 0.25}),
            "site-02": _signed_result("site-02", {"global_val_mse": 0.5}, n=20),
            "site-03": _signed_result("site-03", {"global_val_mse": 1.0}),
        }
    )
    assert out.participants == list(_QUALITY_SITES) and not out.failed
    weights = next(e.payload["weights"] for e in events if e.type == ev.AGGREGATED)
    assert weights == pytest.approx({"site-01": 40 / 90, "site-02": 40 / 90, "site-03": 10 / 90})


@pytest.mark.parametrize(
    "metrics",
    [{"train_loss": 0.5}, {"global_val_mse": 0.0}, {"global_val_mse": -0.3}, {"global_val_mse": -5}],
    ids=["missing", "zero", "negative", "negative-int"],  # KeyError ended the round; <= 0 weighed 1e8 times
)
def test_quality_weighting_refuses_a_site_without_a_positive_validation_loss(metrics):
    results = {s: _signed_result(s, {"global_val_mse": 0.5}) for s in _QUALITY_SITES}
    results["site-02"] = _signed_result("site-02", metrics)
    out, events = _quality_round(results)
    assert out.participants == ["site-01", "site-03"], out.failed
    failed = [(e.payload["site"], e.payload["error"]) for e in events if e.type == ev.SITE_FAILED]
    assert [s for s, _ in failed] == ["site-02"] and "global_val_mse" in failed[0][1], failed
    aggregated = next(e.payload for e in events if e.type == ev.AGGREGATED)
    assert aggregated["weights"] == {"site-01": 0.5, "site-03": 0.5}


# --- the parties' replies to the coordinator: secure_agg.client ------------------------------------

_PARTY_NAMES = ["server-party", "helper-1"]
_PARTY_KEYS = {p: Ed25519PrivateKey.generate() for p in _PARTY_NAMES}
_TOTAL = np.array([1.0, -2.0, 0.5])
_LAYOUT = [["delta/w", [3]]]


def _party_round(party: str, **payload) -> dict:
    view = {
        "sites": ["site-01", "site-02", "site-03"],
        "excluded": {"site-03": OTHER_PARTY},
        "passed": {"site-01": True, "site-02": True},
        "weights": {"site-01": 10, "site-02": 20},
        "sketch_seed": "cd" * 32,
        "revealed": True,
        "aborted": None,
        "min_sites": 2,
        "sum_sha256": hashlib.sha256(_TOTAL.tobytes()).hexdigest() if party == _PARTY_NAMES[0] else None,
        **payload,
    }
    return messages.make_statement(
        _PARTY_KEYS[party].sign, run_id="run-s", round=4, site=party, type="party_round", payload=view
    )


def _round_replies() -> dict:
    """Each party's reply to round 4, as :meth:`AggregationService._all` returns it."""
    server, helper = _PARTY_NAMES
    return {
        server: {
            "ok": True,
            "statement": _party_round(server),
            "seconds": {"open": 0.2, "bound_check": 1.5, "checks": 0.1},
            "sum": 0,
            "_blobs": [_TOTAL.tobytes()],
        },
        helper: {
            "ok": True,
            "statement": _party_round(helper, excluded={"site-03": "helper-1: the share does not open"}),
            "seconds": {"open": 0.3, "bound_check": 1.4, "checks": 0.1},
            "sum": None,
            "_blobs": [],
        },
    }


def _service(replies: dict, terms: dict | None = None) -> AggregationService:
    """The coordinator's client of the parties, their replies stubbed (no party is started)."""
    svc = object.__new__(AggregationService)
    svc.names, svc.terms, svc.socks, svc.statements = list(_PARTY_NAMES), terms or {"layout": _LAYOUT}, {}, []
    svc._all = lambda doc, blobs_for=None, strict=True: replies
    return svc


def _run_round(replies: dict):
    return _service(replies).run_round(4, {s: (None, None) for s in ("site-01", "site-02", "site-03")})


def test_the_parties_agreeing_replies_are_the_round():
    res = _run_round(_round_replies())
    assert res.revealed and res.usable == ["site-01", "site-02"] and res.weights == {"site-01": 10, "site-02": 20}
    assert res.excluded == {"site-03": "helper-1: the share does not open"} and res.aborted is None
    assert np.array_equal(res.total, _TOTAL) and res.seconds == {"open": 0.3, "bound_check": 1.5, "checks": 0.1}
    assert [s["site"] for s in res.statements] == _PARTY_NAMES


def _resigned(party: str, **payload):
    return lambda r: r[party].__setitem__("statement", _party_round(party, **payload))


_SERVER, _HELPER = _PARTY_NAMES
MALFORMED_REPLIES = {  # what one party got wrong -> (the change, what the error must name); was:
    "no statement": (lambda r: r[_HELPER].pop("statement"), "helper-1.*statement"),  # KeyError
    "statement text": (lambda r: r[_HELPER].__setitem__("statement", "signed"), "helper-1.*statement"),  # TypeError
    "payload a list": (
        lambda r: r[_HELPER]["statement"].__setitem__("payload", [1]),
        "helper-1.*statement",
    ),  # TypeError
    "no excluded": (lambda r: r[_HELPER]["statement"]["payload"].pop("excluded"), "helper-1.*excluded"),  # KeyError
    "excluded a list": (_resigned(_HELPER, excluded=["site-03"]), "helper-1.*excluded"),  # AttributeError
    "passed as text": (_resigned(_SERVER, passed={"site-01": "yes"}), "server-party.*passed"),
    "weight as text": (_resigned(_HELPER, weights={"site-01": "10", "site-02": 20}), "helper-1.*weights"),
    "weight zero": (_resigned(_HELPER, weights={"site-01": 0, "site-02": 20}), "helper-1.*weights"),
    "weight missing": (  # both agree, so it passed; then a KeyError in the coordinator
        lambda r: [_resigned(p, weights={"site-01": 10})(r) for p in _PARTY_NAMES],
        "server-party.*weights",
    ),
    "another party's statement": (  # a replay of the server's party's: passed as the helper's
        lambda r: r[_HELPER].__setitem__("statement", r[_SERVER]["statement"]),
        "helper-1.*statement.*server-party",
    ),
    "another round's statement": (
        lambda r: r[_HELPER]["statement"].__setitem__("round", 3),
        "helper-1.*statement.*round 4",
    ),
    "no seconds": (lambda r: r[_HELPER].pop("seconds"), "helper-1.*seconds"),  # KeyError
    "seconds as text": (lambda r: r[_HELPER]["seconds"].__setitem__("open", "fast"), "helper-1.*seconds"),  # TypeError
    "seconds a list": (lambda r: r[_SERVER].__setitem__("seconds", [0.1]), "server-party.*seconds"),  # TypeError
    "sum out of range": (lambda r: r[_SERVER].__setitem__("sum", 3), "server-party.*sum"),  # WireError
    "sum of odd length": (lambda r: r[_SERVER].__setitem__("_blobs", [b"12345"]), "server-party.*sum"),  # ValueError
    "sum too short": (  # was accepted; the coordinator's unflatten then raised ShareError
        lambda r: r[_SERVER].__setitem__("_blobs", [_TOTAL[:2].tobytes()]),
        "server-party.*sum.*3 doubles",
    ),
    "sum not signed": (  # was accepted: nothing compared the sum with the hash the party signed
        lambda r: r[_SERVER].__setitem__("_blobs", [(_TOTAL * 2).tobytes()]),
        "server-party.*sum_sha256",
    ),
    "sum NaN": (
        lambda r: (
            r[_SERVER].__setitem__("_blobs", [np.full(3, np.nan).tobytes()]),
            _resigned(_SERVER, sum_sha256=hashlib.sha256(np.full(3, np.nan).tobytes()).hexdigest())(r),
        ),
        "server-party.*sum.*finite",
    ),
    "refusal, statement malformed": (  # taken; the coordinator's `site in party_keys` raised TypeError
        lambda r: r[_HELPER].update(ok=False, error="no", statement={"site": ["helper-1"]}),
        "helper-1.*statement",
    ),
    "disagree on passed": (_resigned(_HELPER, passed={"site-01": True, "site-02": False}), "disagree on passed"),
}


@pytest.mark.parametrize("case", MALFORMED_REPLIES)
def test_a_malformed_party_reply_is_a_secure_aggregation_error_naming_party_and_field(case):
    change, needle = MALFORMED_REPLIES[case]
    replies = _round_replies()
    change(replies)
    with pytest.raises(SecureAggregationError, match=needle):
        _run_round(replies)


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_a_refusal_is_an_aborted_round(signed):
    """A party that refuses answers with its signed party_refused statement, or unsigned (a run
    it does not know)."""
    refused = messages.make_statement(
        _PARTY_KEYS[_HELPER].sign, run_id="run-s", round=4, site=_HELPER, type="party_refused", payload={}
    )
    replies = _round_replies()
    replies[_HELPER] = {"ok": False, "error": "round 4 was begun before", "statement": refused if signed else None}
    res = _run_round(replies)
    assert res.aborted == "refused by helper-1: round 4 was begun before" and not res.revealed
    assert res.statements == [replies[_SERVER]["statement"], *([refused] if signed else [])]


@given(st.sampled_from(_PARTY_NAMES), st.sampled_from(["statement", "payload", "seconds", "sum", "reply"]), odd_values)
@settings(max_examples=200, deadline=None)
def test_any_party_reply_is_a_round_or_a_secure_aggregation_error(party, where, value):
    replies = _round_replies()
    if where == "payload":
        replies[party]["statement"]["payload"] = value
    elif where == "reply":
        replies[party] = {"ok": True, "_blobs": [], **(value if isinstance(value, dict) else {"x": value})}
    else:
        replies[party][where] = value
    try:
        res = _run_round(replies)
    except SecureAggregationError as exc:
        assert party in str(exc) or "disagree" in str(exc), exc
        return
    assert res.total is None or (res.total.shape == (3,) and np.all(np.isfinite(res.total)))


def _registration(party: str, **change) -> dict:
    stmt = messages.make_statement(
        _PARTY_KEYS[party].sign,
        run_id="run-s",
        round=None,
        site=party,
        type="party_registered",
        payload={"terms_sha256": "ee" * 32, "rank": _PARTY_NAMES.index(party), "dealer": party == _HELPER},
    )
    ports = {"party": 40001 + _PARTY_NAMES.index(party), **({"dealer": 40009} if party == _HELPER else {})}
    return {"ok": True, "statement": stmt, "rank": 0, "host": "127.0.0.1", "ports": ports, "_blobs": [], **change}


class _Sock:
    closed = False

    def settimeout(self, _):
        pass

    def sendall(self, _):
        raise OSError("not connected")

    def close(self):
        self.closed = True


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"statement": None}, "helper-1.*statement"),  # taken; the first round refused it, naming no field
        ({"ports": 40001}, "helper-1.*ports.party"),  # TypeError
        ({"ports": {"dealer": 40009}}, "helper-1.*ports.party"),  # KeyError
        ({"ports": {"party": "40001", "dealer": 40009}}, "helper-1.*ports.party"),
        ({"ports": {"party": 40001, "dealer": 70000}}, "helper-1.*ports.dealer"),
        ({"host": ["127.0.0.1"]}, "helper-1.*host"),
        ({"ports": {"party": 40002}}, "did not start a dealer"),
    ],
    ids=["no-statement", "ports-int", "no-party-port", "port-text", "port-range", "host-list", "no-dealer"],
)
def test_a_malformed_registration_is_a_secure_aggregation_error_and_closes_the_channels(monkeypatch, change, needle):
    socks = []
    monkeypatch.setattr(party_client.wire, "connect", lambda *a: socks.append(_Sock()) or socks[-1])
    replies = {_SERVER: _registration(_SERVER), _HELPER: _registration(_HELPER, **change)}
    monkeypatch.setattr(
        AggregationService, "_all", lambda self, doc, *a, **k: replies if doc["op"] == "register" else {}
    )
    parties = {_SERVER: {"tls_cert": "", "role": "server"}, _HELPER: {"tls_cert": "", "role": "helper"}}
    with pytest.raises(SecureAggregationError, match=needle):
        AggregationService(parties, {p: ("127.0.0.1", 1) for p in _PARTY_NAMES}, {"dealer": _HELPER, "layout": _LAYOUT})
    assert len(socks) == 2 and all(s.closed for s in socks)


# --- an aggregation party's round: secure_agg.service.Session.round --------------------------------


class _PartyHome:
    party, hpke = "helper-1", None

    def __init__(self, begin=None):
        self.begin, self.signed = begin, []

    def begin_round(self, run_id, round):
        if self.begin is not None:
            raise self.begin

    def registered(self, run_id):
        return True

    def sign_statement(self, run_id, round, type, payload):
        self.signed.append((type, payload))
        return {"type": type, "round": round, "payload": payload}


class _Worker:
    """This party's MPC worker, as its pipe: records the task, answers as the parties' agreement
    step does when it begins (no site opened by every party)."""

    def __init__(self):
        self.tasks = []

    def send(self, task):
        self.tasks.append(task)

    def poll(self, timeout):
        return True

    def recv(self):
        task = self.tasks[-1]
        aborted = None if task["accepted"] else "parties of rank [1] refused round 2"
        seconds = {"open": 0.0, "bound_check": 0.0, "sum": 0.0}
        return {"round": 2, "aborted": aborted, "usable": [], "passed": {}, "revealed": False, "sum": None} | {
            "sketch_seed": None,
            "seconds": seconds,
        }


def _session(home) -> tuple[party_service.Session, _Worker]:
    worker = _Worker()
    session = party_service.Session(types.SimpleNamespace(home=home), sock=None)
    session.terms = {
        "run_id": "run-s",
        "layout": _LAYOUT,
        "min_sites": 1,
        "max_update_norm": 1.0,
        "slack": 0.1,
        "sketches": 1,
        "buckets": 4,
    }
    session.consortium, session.workers, session.started = {"cards": {}}, [(None, worker)], True
    return session, worker


_ROUND_DOC = {
    "op": "round",
    "round": 2,
    "sites": {
        "site-01": {"statement": {}, "header": 0, "blob": 1},
        "site-02": {"statement": {}, "header": 2, "blob": 3},
    },
}


@pytest.mark.parametrize("error", [KeyError("parties"), ValueError("bad seed"), OverflowError("too big")])
def test_any_error_opening_one_envelope_is_that_sites_exclusion_and_the_party_still_joins(monkeypatch, error):
    """An exception other than the four caught skipped the agreement step: the other parties
    waited there ROUND_TIMEOUT_S (1800 s) for this one."""

    def open_site(site, item, **kw):
        if site == "site-02":
            raise error
        return np.zeros(3, np.int64), 10

    monkeypatch.setattr(party_service, "open_site", open_site)
    session, worker = _session(_PartyHome())
    reply, _ = session.round(_ROUND_DOC, [b"h1", b"b1", b"h2", b"b2"])
    assert [t["round"] for t in worker.tasks] == [2] and worker.tasks[0]["accepted"]
    assert sorted(worker.tasks[0]["shares"]) == ["site-01"]
    excluded = reply["statement"]["payload"]["excluded"]
    assert excluded["site-02"] == f"helper-1: internal error: {type(error).__name__}: {error}"


def test_a_failure_to_record_the_round_is_a_refusal_that_still_joins(monkeypatch):
    """The disk failing in begin_round (an OSError) skipped the agreement step as well."""
    session, worker = _session(_PartyHome(begin=OSError(28, "No space left on device")))
    with pytest.raises(party_home.PartyRefusal, match="No space left"):
        session.round(_ROUND_DOC, [b"h1", b"b1", b"h2", b"b2"])
    assert [t["accepted"] for t in worker.tasks] == [False]
