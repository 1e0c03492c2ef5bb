"""Every message a site or an aggregation party sends, fuzzed: a malformed one is a value the
coordinator records as that sender's failure for the round (a problem string, a refusal, the
wire format's one error type), never another exception that ends the coordinator or a party.

Covered: the NVFlare result a site sends (:func:`result_from_model`, :func:`witness_answer`), the
update bytes (:func:`sites.update.decode`), the secure envelope (:func:`parse_envelope`,
:func:`open_share`, HPKE :func:`unseal`), the party channel's frames (:mod:`secure_agg.wire`) and
the coordinator's checks of a site's metrics and privacy report.
"""

from __future__ import annotations

import json
import math
import socket
import struct
import threading

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import array_shapes, arrays
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

from pharmafl.pipeline import coordinator as coord
from pharmafl.pipeline.nvflare_wire import (
    UPDATE_KEY,
    WITNESS_KEY,
    model_from_declined,
    model_from_result,
    result_from_model,
    witness_answer,
)
from pharmafl.pipeline.secure_agg import wire as party_wire
from pharmafl.sites import secret_sharing as ss, update as upd
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
