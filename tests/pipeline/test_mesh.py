"""The TLS mesh as a transport: pinned certificates, impostors refused, ciphertext only on the
wire, tampering detected, and codecs that never unpickle. Ranks run as threads."""

from __future__ import annotations

import os
import pickle
import socket
import threading
import time

import pytest
import torch

from pharmafl.pipeline.secure_agg.mesh import (
    Mesh,
    MeshError,
    bind_listener,
    cert_fingerprint,
    decode_object,
    encode_object,
    encode_tensor,
    make_tls_identity,
)

# --- ranks as threads (transport only) ------------------------------------------------------


def _connect_all(identities, peer_certs, addresses, listeners, ranks, timeout=10.0) -> dict:
    out = {}

    def go(r):
        cert, key = identities[r]
        try:
            out[r] = Mesh.connect(r, addresses, listeners[r], cert, key, peer_certs[r], timeout=timeout, io_timeout=10)
        except Exception as exc:  # noqa: BLE001 - inspected by the test
            out[r] = exc

    threads = [threading.Thread(target=go, args=(r,)) for r in ranks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def _world(w: int):
    identities = {r: make_tls_identity(f"rank{r}") for r in range(w)}
    listeners = {r: bind_listener("127.0.0.1") for r in range(w)}
    addresses = {r: listeners[r].getsockname() for r in range(w)}
    pins = {r: {j: identities[j][0] for j in range(w) if j != r} for r in range(w)}
    return identities, listeners, addresses, pins


def _close(meshes) -> None:
    threads = [threading.Thread(target=m.close) for m in meshes.values() if isinstance(m, Mesh)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@pytest.mark.parametrize("impostor", [0, 1])
def test_certificate_not_pinned_for_the_rank_is_refused(impostor):
    identities, listeners, addresses, pins = _world(2)
    honest = 1 - impostor
    expected = cert_fingerprint(identities[impostor][0])
    identities[impostor] = make_tls_identity(f"rank{impostor}")  # a fresh key nobody pinned
    out = _connect_all(identities, pins, addresses, listeners, [0, 1])
    assert isinstance(out[honest], MeshError), out
    assert expected in str(out[honest])
    assert isinstance(out[impostor], MeshError)


def test_peer_claiming_another_ranks_slot_is_refused():
    identities, listeners, addresses, pins = _world(3)
    identities[1] = identities[2]  # rank 2's genuine certificate, presented for rank 1's slot
    out = _connect_all(identities, pins, addresses, listeners, [0, 1])
    listeners[2].close()
    message = str(out[0])
    assert isinstance(out[0], MeshError) and "claims rank 1" in message
    assert cert_fingerprint(identities[2][0]) in message  # actual
    assert cert_fingerprint(pins[0][1]) in message  # expected
    assert isinstance(out[1], MeshError)


def test_acceptor_presenting_another_ranks_certificate_is_refused():
    identities, listeners, addresses, pins = _world(3)
    identities[0] = identities[2]  # rank 0's slot served with rank 2's genuine certificate
    out = _connect_all(identities, pins, addresses, listeners, [0, 1])
    listeners[2].close()
    message = str(out[1])
    assert isinstance(out[1], MeshError) and "rank 0 at" in message
    assert cert_fingerprint(identities[2][0]) in message and cert_fingerprint(pins[1][0]) in message
    assert isinstance(out[0], MeshError)


def test_dialler_retries_until_the_listener_is_up():
    identities, listeners, addresses, pins = _world(2)
    listeners[0].close()
    late = socket.socket()
    late.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    late.bind(addresses[0])  # bound, not listening: connections are refused
    listeners[0] = late
    result = {}
    dialler = threading.Thread(target=lambda: result.update(_connect_all(identities, pins, addresses, listeners, [1])))
    dialler.start()
    time.sleep(0.5)
    late.listen()
    result.update(_connect_all(identities, pins, addresses, listeners, [0]))
    dialler.join()
    assert all(isinstance(m, Mesh) for m in result.values()), result
    _close(result)


class _Relay:
    """A TCP relay between a dialler and ``target`` that records (and may corrupt) the bytes."""

    def __init__(self, target, flip_at: int | None = None):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address, self.target, self.flip_at = self.listener.getsockname(), target, flip_at
        self.seen = {"up": bytearray(), "down": bytearray()}
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        a, _ = self.listener.accept()
        b = socket.create_connection(self.target)
        threading.Thread(target=self._pump, args=(a, b, "up"), daemon=True).start()
        self._pump(b, a, "down")

    def _pump(self, src, dst, direction):
        seen = self.seen[direction]
        try:
            while data := src.recv(1 << 16):
                data = bytearray(data)
                if direction == "up" and self.flip_at is not None and len(seen) <= self.flip_at < len(seen) + len(data):
                    data[self.flip_at - len(seen)] ^= 0x01
                seen += data
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:  # an end closed on a corrupted stream
            dst.close()


def _relayed_pair(flip_at=None):
    identities, listeners, addresses, pins = _world(2)
    relay = _Relay(addresses[0], flip_at)
    dialler_view = dict(addresses)
    dialler_view[0] = relay.address  # rank 1 reaches rank 0 through the relay
    out = {}
    t = threading.Thread(target=lambda: out.update(_connect_all(identities, pins, dialler_view, listeners, [1])))
    t.start()
    out.update(_connect_all(identities, pins, addresses, listeners, [0]))
    t.join()
    return out, relay


def test_share_bytes_never_travel_in_the_clear():
    out, relay = _relayed_pair()
    share = torch.arange(64, dtype=torch.int64) * 0x0101_0101_0101 + 0x5EC2E75EC2E7
    got = {}
    t = threading.Thread(target=lambda: got.update(up=out[0].recv(1)) or out[0].send(1, share * 3))
    t.start()
    out[1].send(0, share)
    got["down"] = out[1].recv(0)
    t.join()
    assert torch.equal(got["up"], share) and torch.equal(got["down"], share * 3)
    assert out[0].tls_version(1) == out[1].tls_version(0) == "TLSv1.3"
    _close(out)
    assert share.numpy().tobytes() in encode_tensor(share)  # the frame carries them verbatim ...
    for direction, needle in (("up", share), ("down", share * 3)):
        wire = bytes(relay.seen[direction])
        assert wire[:1] == b"\x16" and len(wire) > 512  # a TLS handshake record opens each direction
        assert needle.numpy().tobytes() not in wire  # ... but the wire never does
        assert needle.numpy().tobytes()[:16] not in wire


def test_flipped_ciphertext_bit_is_detected():
    out, relay = _relayed_pair(flip_at=100_000)  # well past the ~2 KB handshake, inside the tensor
    errors = []

    def sender():
        try:
            out[1].send(0, torch.zeros(1 << 15, dtype=torch.int64))
        except MeshError:
            pass  # rank 0 may hang up before the last bytes are out

    t = threading.Thread(target=sender)
    t.start()
    try:
        out[0].recv(1)
    except MeshError as exc:
        errors.append(str(exc))
    out[0].close()
    t.join()
    out[1].close()
    assert errors and "tampered" in errors[0] and "rank 1" in errors[0]


# --- the restricted codecs ------------------------------------------------------------------


class _Opaque:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_object_codec_round_trips_what_crypten_sends():
    request = {
        "function": "additive",
        "device": None,
        "args": (torch.Size([3, 2]), torch.Size([3, 2]), "mul"),
        "kwargs": {"stride": (1, 1)},
    }
    for obj in (request, "terminate", torch.Size([4, 8]), [1, (2, 3)], None, 1.5):
        back = decode_object(encode_object(obj))
        assert back == obj and type(back) is type(obj)
    back = decode_object(encode_object(request))
    assert type(back["args"]) is tuple and type(back["args"][0]) is torch.Size


@pytest.mark.parametrize(
    "obj",
    [_Opaque(), {1, 2}, b"raw", torch.zeros(2), {1: "int key"}, float("nan")],
    ids=["reduce", "set", "bytes", "tensor", "int-key", "nan"],
)
def test_object_codec_refuses_to_encode_pickle_only_objects(obj):
    with pytest.raises(MeshError, match="over the mesh"):
        encode_object(obj)


@pytest.mark.parametrize(
    "payload",
    [
        pickle.dumps(_Opaque()),
        pickle.dumps({"function": "square"}),
        b'{"__reduce__": ["os.system", "id"]}',
        b"NaN",
        b'{"size": [-1]}',
    ],
    ids=["pickle-reduce", "pickle-dict", "unknown-tag", "nan", "negative-size"],
)
def test_object_codec_refuses_to_decode_anything_else(payload):
    with pytest.raises(MeshError):
        decode_object(payload)
