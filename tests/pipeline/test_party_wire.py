"""The party channel under attack: fuzzed frames fail as one ``WireError``, and a party service
answers every malformed request with one refusal (or hangs up) and keeps serving.

The service runs in a thread of this process (``serve_forever``); each session's outcome is
recorded by the remote address of its connection, so a test can tell that a session ended
without an exception rather than only that the socket closed.
"""

from __future__ import annotations

import hashlib
import json
import socket
import struct
import threading
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from pharmafl.audit.messages import canonical
from pharmafl.errors import PharmaflError
from pharmafl.pipeline.consortium import init_consortium, load_consortium
from pharmafl.pipeline.secure_agg import wire
from pharmafl.pipeline.secure_agg.mesh import make_tls_identity
from pharmafl.pipeline.secure_agg.party_home import PartyHome
from pharmafl.pipeline.secure_agg.service import PartyService
from pharmafl.pipeline.statements import statement_problem
from pharmafl.sites.home import SiteHome, check_id
from pharmafl.sites.party_card import ranked
from pharmafl.sites.tables import load_dataset

ASSETS = Path(__file__).parents[1] / "sites" / "assets"
ME, DEALER, RUN = "server-party", "helper-1", "wire-run"

# --- the frame format over a socketpair -------------------------------------------------------


class _Buffer:
    """A socket stand-in for :func:`wire.send` that keeps what it is given."""

    def __init__(self):
        self.data = bytearray()

    def sendall(self, data: bytes) -> None:
        self.data += data


def _frame(doc: dict, blobs=()) -> bytes:
    out = _Buffer()
    wire.send(out, doc, blobs)
    return bytes(out.data)


def _recv_bytes(data: bytes, *, close: bool = True, timeout: float = 5.0):
    """:func:`wire.recv` of ``data`` through a socketpair; also what it left unread."""
    a, b = socket.socketpair()
    try:
        b.settimeout(timeout)
        a.sendall(data)
        if close:
            a.shutdown(socket.SHUT_WR)
        try:
            return wire.recv(b), None
        except wire.WireError as exc:
            b.setblocking(False)
            try:
                rest = b.recv(1 << 16)
            except BlockingIOError:
                rest = b""
            return exc, rest
    finally:
        a.close()
        b.close()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
docs = st.dictionaries(st.text(max_size=8), json_values, max_size=5)
blob_lists = st.lists(st.binary(max_size=300), max_size=4)


@st.composite
def mangled_frames(draw) -> bytes:
    """A well-formed frame cut short, with bytes flipped, or with its length fields rewritten."""
    frame = bytearray(_frame(draw(docs), draw(blob_lists)))
    how = draw(st.sampled_from(["cut", "flip", "length", "raw"]))
    if how == "cut":
        del frame[draw(st.integers(0, len(frame) - 1)) :]
    elif how == "flip":
        for _ in range(draw(st.integers(1, 4))):
            frame[draw(st.integers(0, len(frame) - 1))] ^= draw(st.integers(1, 255))
    elif how == "length":
        frame[0:4] = struct.pack("<I", draw(st.integers(0, 2**32 - 1)))
    else:
        frame = bytearray(draw(st.binary(max_size=2000)))
    return bytes(frame)


@given(st.one_of(st.binary(max_size=2000), mangled_frames()))
@settings(max_examples=300, deadline=None)
def test_any_bytes_parse_or_raise_wire_error(data):
    got, _ = _recv_bytes(data)
    if not isinstance(got, wire.WireError):
        doc, blobs = got
        assert type(doc) is dict and all(type(b) is bytes for b in blobs)


@given(docs, blob_lists)
@settings(max_examples=100, deadline=None)
def test_send_and_recv_round_trip(doc, blobs):
    a, b = socket.socketpair()
    try:
        sender = threading.Thread(target=wire.send, args=(a, doc, blobs))
        sender.start()
        b.settimeout(5)
        got_doc, got_blobs = wire.recv(b)
        sender.join()
    finally:
        a.close()
        b.close()
    assert got_doc == doc and json.dumps(got_doc, sort_keys=True) == json.dumps(doc, sort_keys=True)
    assert got_blobs == [bytes(x) for x in blobs]


_OBJECT = struct.pack("<I", 2) + b"{}"


@pytest.mark.parametrize(
    "header, what",
    [
        (struct.pack("<I", wire.MAX_JSON + 1), "JSON"),
        (_OBJECT + struct.pack("<I", wire.MAX_BLOBS + 1), "binary parts"),
        (_OBJECT + struct.pack("<IQ", 1, wire.MAX_BLOB + 1), "binary part of"),
    ],
    ids=["json", "count", "blob"],
)
def test_a_frame_announcing_more_than_the_limits_is_refused_before_reading_on(header, what):
    """The writer keeps the channel open: a reader that waited for the announced bytes would
    time out instead, and the bytes after the header stay unread."""
    start = time.monotonic()
    got, rest = _recv_bytes(header + b"tail", close=False, timeout=5.0)
    assert isinstance(got, wire.WireError) and "more than" in str(got) and what in str(got), got
    assert time.monotonic() - start < 2.0
    assert rest == b"tail"


@pytest.mark.parametrize(
    "header", [struct.pack("<I", wire.MAX_JSON), _OBJECT + struct.pack("<IQ", 1, wire.MAX_BLOB)], ids=["json", "blob"]
)
def test_a_frame_announcing_the_limit_allocates_only_what_arrives(header):
    tracemalloc.start()
    try:
        got, _ = _recv_bytes(header + b"x" * 1000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(got, wire.WireError) and "closed after 1000 of" in str(got)
    assert peak < 8 << 20  # a reader that allocated the announced size would need 64 MiB or 16 GiB


@given(
    blob_lists,
    st.one_of(
        st.integers(-5, 8),
        st.booleans(),
        st.floats(),
        st.text(max_size=3),
        st.none(),
        st.lists(st.integers(0, 3), max_size=2),
    ),
)
def test_blob_references_are_indices_in_range(blobs, ref):
    if type(ref) is int and 0 <= ref < len(blobs):
        assert wire.blob(blobs, ref) is blobs[ref]
    else:
        with pytest.raises(wire.WireError, match="out of range"):
            wire.blob(blobs, ref)


# --- a real party service -----------------------------------------------------------------------


class _WatchedService(PartyService):
    """A party service that records how each session ended, keyed by the client's address."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.outcomes: dict[tuple, str] = {}

    def _session(self, raw) -> None:
        peer = raw.getpeername()
        try:
            super()._session(raw)
            self.outcomes[peer] = "ended"
        except BaseException as exc:  # noqa: BLE001 - what the test looks for
            self.outcomes[peer] = f"crashed: {type(exc).__name__}: {exc}"


@dataclass
class Party:
    service: _WatchedService
    card: dict  # the party's card, as the consortium pins it
    other: dict  # the other party's card
    terms: dict

    def dial(self, cert: str | None = None):
        return wire.connect("127.0.0.1", self.service.port, cert or self.card["tls_cert"], 10)

    def outcome(self, address, timeout: float = 20.0) -> str:
        """How the session of the client at ``address`` ended, once it has."""
        deadline = time.monotonic() + timeout
        while address not in self.service.outcomes:
            assert time.monotonic() < deadline, f"the session of {address} did not end"
            time.sleep(0.01)
        return self.service.outcomes[address]


@pytest.fixture(scope="module")
def party(tmp_path_factory):
    root, ds = tmp_path_factory.mktemp("wire"), load_dataset(ASSETS)
    sites = [SiteHome.init(root / s, s, ds, passphrase=f"pw-{s}", scrypt_n=2**14) for s in ("site-01", "site-02")]
    homes = {
        ME: PartyHome.init(root / ME, ME, role="server", simulated=True, scrypt_n=2**14),
        DEALER: PartyHome.init(root / DEALER, DEALER, simulated=True, scrypt_n=2**14),
    }
    cons = load_consortium(
        init_consortium(
            [h.path / "site-card.json" for h in sites],
            root / "coord",
            [p.path / "party-card.json" for p in homes.values()],
        )
    )
    homes[ME].accept_consortium(cons)
    terms = {
        "run_id": RUN,
        "context": f"{RUN}:test",
        "roster_sha256": cons["roster_sha256"],
        "parties": ranked(cons["parties"]),
        "dealer": DEALER,
        "min_sites": 2,
        "weighting": "examples",
        "max_examples": 10_000,
        "max_update_norm": 2.0,
        "slack": 0.16,
        "sketches": 4,
        "buckets": 1024,
        "layout": [["delta/a", [2, 3]]],
    }
    service = _WatchedService(homes[ME])
    thread = threading.Thread(target=service.serve_forever, daemon=True)
    thread.start()
    yield Party(service, cons["parties"][ME], cons["parties"][DEALER], terms)
    service.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone does not on Linux
    service.shutdown()
    thread.join(5)


def _ask(sock, doc: dict, blobs=()) -> dict:
    wire.send(sock, doc, blobs)
    reply, _ = wire.recv(sock)
    return reply


def _signable(party: Party, run_id, rnd) -> bool:
    """Whether the party signs a refusal for ``run_id`` (a valid id of a run registered there: a
    stranger cannot make it write) and ``rnd`` (JSON-exact)."""
    try:
        check_id(run_id, "run id")
    except PharmaflError:
        return False
    if not party.service.home.registered(run_id):
        return False
    try:
        canonical({"round": rnd})
    except ValueError:  # NotCanonical: an integer a double cannot carry exactly
        return False
    return True


def _assert_refused(party: Party, reply: dict, doc: dict, *, run_id: str | None = None, needle: str = "") -> None:
    """One refusal: ``ok`` false, an ``error``; signed (and verifiable) exactly when a run is known."""
    assert reply.get("ok") is False and type(reply.get("error")) is str and reply["error"], reply
    assert needle in reply["error"], reply["error"]
    rnd = doc.get("round") if type(doc.get("round")) is int else None
    if run_id is None or not _signable(party, run_id, rnd):
        assert reply["statement"] is None, reply
        return
    problem = statement_problem(
        reply["statement"],
        site=ME,
        round=rnd,
        run_id=run_id,
        type_="party_refused",
        payload={"request": str(doc.get("op")), "reason": reply["error"]},
        key=bytes.fromhex(party.card["public_key"]),
    )
    assert problem is None, problem


def _assert_still_serves(party: Party) -> None:
    sock = party.dial()
    try:
        reply = _ask(sock, {"op": "ping"})
        assert _ask(sock, {"op": "close"}) == {"ok": True}
    finally:
        sock.close()
    _assert_refused(party, reply, {"op": "ping"}, needle="unknown request 'ping'")


def _session(party: Party, docs_: list[dict]) -> tuple[list[dict], str]:
    """Send each doc on one connection, collect each reply, hang up; the session's outcome."""
    sock = party.dial()
    address, replies = sock.getsockname(), []
    try:
        for doc in docs_:
            replies.append(_ask(sock, doc))
    except wire.WireError as exc:
        sock.close()
        pytest.fail(f"no reply to {doc!r} ({exc}); the session {party.outcome(address)}")
    sock.close()
    return replies, party.outcome(address)


def _run_id(doc: dict):
    return doc["terms"].get("run_id") if type(doc.get("terms")) is dict else None


run_ids = st.one_of(st.sampled_from([RUN, "other-run", "../up"]), json_values)
ops = st.one_of(st.sampled_from(["register", "start", "round", "", "ping"]), json_values.filter(lambda v: v != "close"))
requests = st.fixed_dictionaries(
    {"op": ops},
    optional={
        "terms": st.one_of(
            json_values, st.fixed_dictionaries({"run_id": run_ids}, optional={"roster_sha256": st.text()})
        ),
        "round": st.one_of(st.integers(), st.just(2**60), json_values),
        "addresses": json_values,
        "sites": json_values,
    },
)


@given(requests)
@settings(max_examples=60, deadline=None)
def test_random_requests_each_get_one_refusal_and_the_session_survives(party, doc):
    replies, outcome = _session(party, [doc, {"op": "ping"}])  # the second: the session still answers
    assert outcome == "ended"
    _assert_refused(party, replies[0], doc, run_id=_run_id(doc))
    _assert_refused(party, replies[1], {"op": "ping"}, needle="unknown request")


@pytest.mark.parametrize("op", [["register"], {"op": "round"}, 7, None], ids=["list", "dict", "int", "missing"])
def test_an_op_that_is_not_a_name_is_refused(party, op):
    doc = {"op": op, "terms": {"run_id": RUN}} if op is not None else {"terms": {"run_id": RUN}}
    replies, outcome = _session(party, [doc])
    assert outcome == "ended"
    _assert_refused(party, replies[0], doc, run_id=RUN, needle="unknown request")


@pytest.mark.parametrize("rnd", [2**53 + 1, -(2**60), 10**40], ids=["2^53+1", "-2^60", "1e40"])
def test_a_round_number_no_statement_can_carry_is_still_refused(party, rnd):
    """A JSON integer beyond 2**53 has no canonical form: the refusal cannot be signed, but is sent."""
    docs_ = [{"op": op, "terms": {"run_id": RUN}, "round": rnd} for op in ("ping", "round")]
    replies, outcome = _session(party, docs_)
    assert outcome == "ended"
    for doc, reply in zip(docs_, replies):
        _assert_refused(party, reply, doc, run_id=RUN)


def test_round_and_start_before_register_are_refused(party):
    docs_ = [{"op": "round", "round": 1, "sites": {}}, {"op": "start", "addresses": {"0": ["127.0.0.1", 1]}}]
    replies, outcome = _session(party, docs_)
    assert outcome == "ended"
    _assert_refused(party, replies[0], docs_[0], needle="round before register")
    _assert_refused(party, replies[1], docs_[1], needle="start before register")
    _assert_still_serves(party)


def test_register_with_missing_garbage_or_foreign_terms_is_refused(party):
    good = party.terms
    foreign = hashlib.sha256(b"a roster nobody accepted").hexdigest()
    cases = [
        ({"op": "register"}, None, "needs the run's terms"),
        ({"op": "register", "terms": [RUN]}, None, "needs the run's terms"),
        ({"op": "register", "terms": {"run_id": RUN}}, RUN, "is not a SHA-256"),
        ({"op": "register", "terms": {**good, "roster_sha256": foreign}}, RUN, "did not accept roster"),
        ({"op": "register", "terms": {**good, "roster_sha256": "ab" * 31 + "zz"}}, RUN, "is not a SHA-256"),
        ({"op": "register", "terms": {k: v for k, v in good.items() if k != "layout"}}, RUN, "exactly the fields"),
        ({"op": "register", "terms": {**good, "extra": 1}}, RUN, "exactly the fields"),
        ({"op": "register", "terms": {**good, "dealer": ME}}, RUN, "must be a helper party"),
        ({"op": "register", "terms": {**good, "dealer": ["x"]}}, RUN, ""),  # unhashable: refused all the same
        ({"op": "register", "terms": {**good, "min_sites": 1}}, RUN, "below 2"),
        ({"op": "register", "terms": {**good, "max_update_norm": -1}}, RUN, "must be > 0"),
        ({"op": "register", "terms": {**good, "layout": "delta"}}, RUN, "layout must be"),
        ({"op": "register", "terms": {**good, "parties": [DEALER, ME]}}, RUN, "in rank order"),
        ({"op": "register", "terms": {**good, "run_id": "../escape", "context": "../escape:x"}}, "../escape", ""),
        ({"op": "register", "terms": {**good, "context": "other-run:x"}}, RUN, "must start with the run id"),
    ]
    replies, outcome = _session(party, [doc for doc, _, _ in cases])  # all on one connection
    assert outcome == "ended"
    for (doc, run_id, needle), reply in zip(cases, replies):
        _assert_refused(party, reply, doc, run_id=run_id, needle=needle)
    _assert_still_serves(party)


def test_a_registered_run_refuses_a_second_register_bad_starts_and_changed_terms(party):
    """One real registration (the party starts its MPC worker); everything after it is refused."""
    register = {"op": "register", "terms": party.terms}
    n = len(party.terms["parties"])  # ranks 0..n (the dealer is rank n)
    good = {str(i): ["127.0.0.1", 1] for i in range(n + 1)}
    bad_starts = [
        None,
        [],
        {"0": ["127.0.0.1", 1]},
        {**good, str(n + 1): ["127.0.0.1", 1]},
        {**good, "0": ["127.0.0.1", "1"]},
        {**good, "0": [1, 2]},
        {**good, "0": ["127.0.0.1"]},
        {**good, "0": "127.0.0.1:1"},
    ]
    sock = party.dial()
    address = sock.getsockname()
    try:
        reply = _ask(sock, register)
        assert reply["ok"] is True and reply["rank"] == party.terms["parties"].index(ME)
        payload = reply["statement"]["payload"]
        assert (
            statement_problem(
                reply["statement"],
                site=ME,
                round=None,
                run_id=RUN,
                type_="party_registered",
                payload=payload,
                key=bytes.fromhex(party.card["public_key"]),
            )
            is None
        )
        _assert_refused(party, _ask(sock, register), register, run_id=RUN, needle="already registered a run")
        for addresses in bad_starts:
            doc = {"op": "start", "addresses": addresses}
            _assert_refused(party, _ask(sock, doc), doc, run_id=RUN, needle="needs the mesh address")
        early = {"op": "round", "round": 1, "sites": {}}  # registered, but the mesh is not up: nothing recorded
        _assert_refused(party, _ask(sock, early), early, run_id=RUN, needle="round before register and start")
        assert not (party.service.home.run_dir(RUN) / "rounds.jsonl").exists()
        assert _ask(sock, {"op": "close"}) == {"ok": True}
    finally:
        sock.close()
    assert party.outcome(address) == "ended"
    changed = {"op": "register", "terms": {**party.terms, "min_sites": 3}}
    replies, outcome = _session(party, [changed])
    assert outcome == "ended"
    _assert_refused(party, replies[0], changed, run_id=RUN, needle="cannot change")
    _assert_still_serves(party)


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xff" * 64,
        struct.pack("<I", 5) + b"hello" + struct.pack("<I", 0),
        struct.pack("<I", 2) + b"[]" + struct.pack("<I", 0),
        struct.pack("<I", 10) + b'"a string"' + struct.pack("<I", 0),
        _OBJECT + struct.pack("<I", wire.MAX_BLOBS + 1),
        _OBJECT + struct.pack("<IQ", 1, wire.MAX_BLOB + 1),
        struct.pack("<I", 4) + b"\xc3\x28{}" + struct.pack("<I", 0),
    ],
    ids=["ff", "not-json", "array", "string", "blob-count", "blob-size", "bad-utf8"],
)
def test_garbage_after_the_handshake_closes_only_that_connection(party, garbage):
    sock = party.dial()
    address = sock.getsockname()
    try:
        sock.sendall(garbage)
        sock.settimeout(10)
        try:
            assert sock.recv(1 << 16) == b""  # no reply: the party hung up
        except (ConnectionError, OSError):
            pass  # or reset the connection
    finally:
        sock.close()
    assert party.outcome(address) == "ended"
    _assert_still_serves(party)


_PING = {"op": "ping", "pad": "x" * 16}
_JSON_END = 4 + len(json.dumps(_PING, separators=(",", ":")))


@pytest.mark.parametrize(
    "cut",
    [2, 4, _JSON_END - 5, _JSON_END + 2, _JSON_END + 4 + 3, _JSON_END + 12 + 10],
    ids=["in-length", "after-length", "in-json", "in-count", "in-size", "in-blob"],
)
def test_a_frame_that_stops_mid_way_ends_the_session(party, cut):
    frame = _frame(_PING, [b"0123456789" * 3])
    assert frame[4:_JSON_END] == json.dumps(_PING, separators=(",", ":")).encode() and cut < len(frame)
    sock = party.dial()
    address = sock.getsockname()
    sock.sendall(frame[:cut])
    sock.close()
    assert party.outcome(address) == "ended"
    _assert_still_serves(party)


def test_plain_tcp_garbage_instead_of_a_handshake_is_dropped(party):
    raw = socket.create_connection(("127.0.0.1", party.service.port), timeout=10)
    address = raw.getsockname()
    try:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: party\r\n\r\n" + bytes(range(256)))
        try:
            data = raw.recv(1 << 16)  # at most a TLS alert, then the close
            assert not data or data[:1] == b"\x15", data[:16]
        except ConnectionError:
            pass
    finally:
        raw.close()
    assert party.outcome(address) == "ended"
    _assert_still_serves(party)


def test_a_client_pinning_another_certificate_cannot_connect(party):
    for cert in (party.other["tls_cert"], make_tls_identity(ME)[0].decode()):  # the other party's; an impostor's
        with pytest.raises(wire.WireError, match="TLS to the party at 127.0.0.1"):
            party.dial(cert)
    _assert_still_serves(party)


def test_a_stranger_cannot_make_the_party_write(party):
    """Refusals about runs the party never registered are answered unsigned: nothing lands on its disk."""
    before = sorted(p.name for p in (party.service.home.path / "runs").glob("*"))
    docs_ = [{"op": "round", "round": 1, "terms": {"run_id": f"junk-{i}"}} for i in range(5)]
    replies, outcome = _session(party, docs_)
    assert outcome == "ended" and all(r["ok"] is False and r["statement"] is None for r in replies)
    assert sorted(p.name for p in (party.service.home.path / "runs").glob("*")) == before
