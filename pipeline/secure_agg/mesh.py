"""A full mesh of mutually authenticated TLS 1.3 connections among ranks ``0..W-1``.

The aggregation parties (ranks ``0..N-1``) and CrypTen's trusted third party, the dealer
(rank ``N``), belong to different organisations. torch.distributed's gloo transport is
plaintext and unauthenticated, so instead every pair of ranks holds one TLS 1.3 connection
(RFC 8446) in which *both* sides present a certificate:

* identities are self-signed Ed25519 X.509 certificates (RFC 8410), exchanged out of band
  and **pinned**: the trust anchors of a rank are exactly its peers' certificates, and after
  the handshake each side checks that the peer's SHA-256 certificate fingerprint is the one
  pinned for the rank it dialled or the rank the peer claims;
* rank ``i`` dials every rank ``< i`` and accepts every rank ``> i`` (rank 0 never waits on
  anyone, so by induction no rank waits forever); the dialler names itself and the rank it
  meant to reach in a first frame, and the acceptor answers with an acknowledgement once it
  has checked both;
* frames are ``<u64 length><u8 kind><u8 channel>`` + payload inside the TLS stream. A tensor
  is its dtype, shape and little-endian raw bytes; an object is tagged JSON (tuples,
  ``torch.Size``, str-keyed dicts, lists, scalars) -- nothing is ever unpickled;
* one thread drives every connection through non-blocking sockets and memory BIOs: while a
  rank sends, it keeps reading from every peer, so two ranks sending large tensors to each
  other at once cannot deadlock. A ``Mesh`` is not thread-safe.

This module is the transport only and knows nothing of CrypTen; :mod:`.crypten_link` puts
CrypTen's communicator on a :class:`Mesh`. In each rank's process::

    listener = bind_listener(host)                     # publish listener.getsockname()[1]
    mesh = Mesh.connect(rank, addresses, listener, cert_pem, key_pem, peer_certs, timeout=60)
    mesh.send(peer, tensor, channel); mesh.recv(peer, channel); mesh.close()
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import selectors
import socket
import ssl
import struct
import tempfile
import time
from collections import defaultdict, deque
from contextlib import contextmanager

import numpy as np
import torch

from pharmafl.errors import RefusedError


class MeshError(RefusedError):
    """A mesh connection was refused or broke, or a peer sent what it must not."""


# --- identities -----------------------------------------------------------------------------


def make_tls_identity(name: str, *, days: int = 3650) -> tuple[bytes, bytes]:
    """A fresh self-signed Ed25519 certificate ``CN=name`` and its PKCS#8 key, both PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not 1 <= len(name) <= 64:
        raise MeshError(f"a certificate name must have 1 to 64 characters (X.509 CN), got {name!r}")
    key = ed25519.Ed25519PrivateKey.generate()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    usage = dict.fromkeys(
        (
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, **usage), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(key, None)
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def cert_fingerprint(cert_pem: bytes | str) -> str:
    """SHA-256 (hex) of the certificate's DER encoding."""
    try:
        der = ssl.PEM_cert_to_DER_cert(cert_pem.decode() if isinstance(cert_pem, bytes) else cert_pem)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MeshError(f"not a PEM certificate ({exc}): pass the bytes make_tls_identity returned") from None
    return hashlib.sha256(der).hexdigest()


def bind_listener(host: str, port: int = 0, backlog: int = 16) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port=0``: any free one; read it back with
    ``getsockname()[1]`` before handing the addresses out)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise MeshError(f"cannot listen on {host}:{port}: {exc}") from None
    return sock


# --- wire format ----------------------------------------------------------------------------

_HEADER = struct.Struct("<QBB")  # payload length, kind, channel
HELLO, ACK, TENSOR, OBJECT, TOKEN = 1, 2, 3, 4, 5
_KINDS = {HELLO: "hello", ACK: "ack", TENSOR: "tensor", OBJECT: "object", TOKEN: "token"}
_CONTROL = 255  # the channel of HELLO / ACK
_HELLO = struct.Struct("<II")  # claimed rank, rank it meant to reach
MAX_FRAME_BYTES = 1 << 34
MAX_OBJECT_BYTES = 1 << 20
_DTYPES = {
    1: torch.int64,
    2: torch.int32,
    3: torch.int16,
    4: torch.int8,
    5: torch.uint8,
    6: torch.bool,
    7: torch.float64,
    8: torch.float32,
    9: torch.float16,
}
_CODES = {v: k for k, v in _DTYPES.items()}
_NUMPY = {
    torch.int64: "<i8",
    torch.int32: "<i4",
    torch.int16: "<i2",
    torch.int8: "i1",
    torch.uint8: "u1",
    torch.bool: "?",
    torch.float64: "<f8",
    torch.float32: "<f4",
    torch.float16: "<f2",
}


def encode_tensor(tensor: torch.Tensor) -> bytes:
    """``<u8 dtype><u8 ndim><i64 dims...>`` then the elements, little-endian, row-major."""
    t = tensor.detach().cpu().contiguous()
    if t.dtype not in _CODES:
        raise MeshError(f"cannot send a {t.dtype} tensor over the mesh; supported: {sorted(map(str, _CODES))}")
    if t.dim() > 255:
        raise MeshError(f"cannot send a tensor of {t.dim()} dimensions (at most 255)")
    raw = t.numpy().astype(_NUMPY[t.dtype], copy=False).tobytes()
    return struct.pack(f"<BB{t.dim()}q", _CODES[t.dtype], t.dim(), *t.shape) + raw


def decode_tensor(payload: bytes | bytearray) -> torch.Tensor:
    """The inverse of :func:`encode_tensor`; refuses a frame whose size does not add up."""
    if len(payload) < 2 or payload[0] not in _DTYPES:
        raise MeshError(
            f"malformed tensor frame: dtype code {payload[:1].hex() or 'missing'}, expected one of {sorted(_DTYPES)}"
        )
    dtype, ndim = _DTYPES[payload[0]], payload[1]
    start = 2 + 8 * ndim
    if len(payload) < start:
        raise MeshError(f"malformed tensor frame: {ndim} dimensions announced, frame has {len(payload)} bytes")
    shape = struct.unpack_from(f"<{ndim}q", payload, 2)
    item = np.dtype(_NUMPY[dtype]).itemsize
    if any(d < 0 for d in shape) or len(payload) - start != math.prod(shape) * item:
        raise MeshError(
            f"malformed tensor frame: shape {shape} of {dtype} needs {math.prod(shape) * item} bytes, "
            f"frame carries {len(payload) - start}"
        )
    buffer = payload if isinstance(payload, bytearray) else bytearray(payload)  # writable, for torch
    arr = np.frombuffer(buffer, dtype=_NUMPY[dtype], offset=start).reshape(shape)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return torch.from_numpy(arr)


_ALLOWED_OBJECTS = "None, bool, int, float, str, list, tuple, torch.Size and dicts with str keys"


def encode_object(obj) -> bytes:
    """Tagged JSON: ``{"tuple": [...]}``, ``{"size": [...]}``, ``{"dict": {...}}``; lists and
    scalars as themselves. Anything else (a tensor, a class instance, bytes) is refused."""
    try:
        return json.dumps(_tag(obj, 0), separators=(",", ":"), allow_nan=False).encode()
    except ValueError as exc:  # NaN / infinity
        raise MeshError(f"cannot send {obj!r} over the mesh: {exc}") from None


def _tag(obj, depth: int):
    if depth > 32:
        raise MeshError("cannot send an object nested more than 32 levels deep over the mesh")
    if obj is None or type(obj) in (bool, int, float, str):
        return obj
    if type(obj) is torch.Size:
        return {"size": list(obj)}
    if type(obj) in (tuple, list):
        items = [_tag(x, depth + 1) for x in obj]
        return {"tuple": items} if type(obj) is tuple else items
    if type(obj) is dict and all(type(k) is str for k in obj):
        return {"dict": {k: _tag(v, depth + 1) for k, v in obj.items()}}
    raise MeshError(
        f"cannot send an object of type {type(obj).__qualname__} over the mesh (no pickle): "
        f"only {_ALLOWED_OBJECTS} are allowed"
    )


def decode_object(payload: bytes | bytearray):
    """The inverse of :func:`encode_object`; refuses anything it would not have produced."""
    if len(payload) > MAX_OBJECT_BYTES:
        raise MeshError(f"object frame of {len(payload)} bytes exceeds {MAX_OBJECT_BYTES}")
    try:
        tree = json.loads(bytes(payload).decode(), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MeshError(f"object frame is not the mesh's tagged JSON ({exc}); was it pickled?") from None
    return _untag(tree)


def _refuse_constant(name: str):
    raise MeshError(f"object frame holds {name}, which the mesh never sends")


def _untag(tree):
    if tree is None or type(tree) in (bool, int, float, str):
        return tree
    if type(tree) is list:
        return [_untag(x) for x in tree]
    if type(tree) is dict and len(tree) == 1:
        ((tag, value),) = tree.items()
        if tag == "tuple" and type(value) is list:
            return tuple(_untag(x) for x in value)
        if tag == "size" and type(value) is list and all(type(d) is int and d >= 0 for d in value):
            return torch.Size(value)
        if tag == "dict" and type(value) is dict:
            return {k: _untag(v) for k, v in value.items()}
    raise MeshError(f"object frame holds {json.dumps(tree)[:80]}, which is not a tagged tuple, size or dict")


# --- one connection -------------------------------------------------------------------------


class _Peer:
    """One TLS connection: the raw socket, the TLS state, and frames received per channel."""

    def __init__(self, rank: int | None, sock: socket.socket, context: ssl.SSLContext, server_side: bool):
        self.rank, self.sock = rank, sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=server_side)
        self.plain = bytearray()
        self.pending: deque[memoryview] = deque()  # ciphertext not yet handed to the kernel
        self.frames: dict[int, deque] = defaultdict(deque)
        self.closed = False  # the peer sent close_notify or EOF, or the connection broke
        self.fingerprint = ""
        self.mask = 0  # selector events registered

    def where(self) -> str:
        return f"rank {self.rank}" if self.rank is not None else "an unidentified peer"

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[self.tls.write(view) :]
        self._take_outgoing()

    def _take_outgoing(self) -> None:
        if self.outgoing.pending:
            self.pending.append(memoryview(self.outgoing.read()))

    def feed(self, data: bytes) -> None:
        """Decrypt ``data`` from the socket; complete frames go to their channel's queue."""
        if not data:
            self.closed = True
            return
        self.incoming.write(data)
        self.decrypt()

    def decrypt(self) -> None:
        """Read whatever plaintext the TLS state holds and split it into frames."""
        try:
            while chunk := self.tls.read(1 << 20):
                self.plain += chunk
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            self.closed = True
        except ssl.SSLError as exc:
            self.closed = True
            if _is_alert(exc):
                raise MeshError(f"{self.where()} ended TLS with alert {exc.reason}") from None
            reason = exc.reason or exc
            raise MeshError(f"TLS from {self.where()} failed: {reason} (tampered or broken connection)") from None
        self._take_outgoing()  # post-handshake messages (session tickets, key updates)
        while len(self.plain) >= _HEADER.size:
            length, kind, channel = _HEADER.unpack_from(self.plain)
            if length > MAX_FRAME_BYTES or kind not in _KINDS:
                raise MeshError(f"{self.where()} sent a malformed frame header (kind {kind}, {length} bytes)")
            end = _HEADER.size + length
            if len(self.plain) < end:
                break
            self.frames[channel].append((kind, self.plain[_HEADER.size : end]))
            del self.plain[:end]

    def send_some(self) -> None:
        while self.pending:
            try:
                n = self.sock.send(self.pending[0])
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.closed = True
                raise MeshError(f"connection to {self.where()} broke: {exc}") from None
            if n < len(self.pending[0]):
                self.pending[0] = self.pending[0][n:]
                return
            self.pending.popleft()


def _is_alert(exc: ssl.SSLError) -> bool:
    """Whether the *peer* sent the TLS alert (it refused us), rather than we refused it."""
    return "ALERT" in str(exc.reason or "").upper()


def _frame(kind: int, channel: int, payload: bytes) -> bytes:
    return _HEADER.pack(len(payload), kind, channel) + payload


@contextmanager
def _pem_path(data: bytes):
    """A path holding ``data`` that no other user can read (memfd on Linux, else a 0700 dir)."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("pharmafl-tls")
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "pem")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
            f.write(data)
        yield path


def _contexts(cert_pem: bytes, key_pem: bytes, anchors: list[bytes]) -> dict[bool, ssl.SSLContext]:
    """Server- and client-side contexts: TLS 1.3 only, certificate required, pinned anchors."""
    out = {}
    for server_side in (True, False):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            ctx.load_verify_locations(cadata="".join(a.decode() if isinstance(a, bytes) else a for a in anchors))
            with _pem_path(cert_pem) as cert, _pem_path(key_pem) as key:
                ctx.load_cert_chain(cert, key)
        except ssl.SSLError as exc:
            raise MeshError(f"cannot load the TLS identity or the pinned certificates: {exc}") from None
        out[server_side] = ctx
    return out


def _remaining(deadline: float, what: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise MeshError(f"timed out {what}")
    return left


def _blocking_frame(peer: _Peer, deadline: float, what: str) -> tuple[int, bytearray]:
    """During setup: read until a control frame arrives (later frames stay queued)."""
    while not peer.frames[_CONTROL]:
        if peer.closed:
            raise MeshError(f"{peer.where()} closed the connection {what}")
        peer.sock.settimeout(_remaining(deadline, what))
        _flush_blocking(peer, deadline, what)
        try:
            peer.feed(peer.sock.recv(1 << 16))
        except TimeoutError:
            raise MeshError(f"timed out {what}") from None
        except ssl.SSLError:
            raise
        except OSError as exc:
            raise MeshError(f"connection to {peer.where()} broke {what}: {exc}") from None
    return peer.frames[_CONTROL].popleft()


def _flush_blocking(peer: _Peer, deadline: float, what: str) -> None:
    peer._take_outgoing()
    while peer.pending:
        peer.sock.settimeout(_remaining(deadline, what))
        try:
            peer.sock.sendall(peer.pending.popleft())
        except OSError as exc:
            raise MeshError(f"connection to {peer.where()} broke {what}: {exc}") from None


def _handshake(peer: _Peer, deadline: float, what: str) -> None:
    while True:
        try:
            peer.tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            _flush_blocking(peer, deadline, what)
            peer.sock.settimeout(_remaining(deadline, what))
            try:
                data = peer.sock.recv(1 << 16)
            except TimeoutError:
                raise MeshError(f"timed out {what}") from None
            if not data:
                raise MeshError(f"the peer closed the connection {what}") from None
            peer.incoming.write(data)
        except ssl.SSLError:
            try:  # hand the peer our alert, so that it learns why
                _flush_blocking(peer, deadline, what)
            except MeshError:
                pass
            raise
    _flush_blocking(peer, deadline, what)
    peer.decrypt()  # records that came with the peer's last handshake flight
    if peer.tls.version() != "TLSv1.3":
        raise MeshError(f"{what}: negotiated {peer.tls.version()}, expected TLSv1.3")
    peer.fingerprint = hashlib.sha256(peer.tls.getpeercert(binary_form=True)).hexdigest()


# --- the mesh -------------------------------------------------------------------------------


class Mesh:
    """Authenticated, encrypted, ordered point-to-point frames among ranks ``0..W-1``.

    Frames between two ranks arrive in the order sent, separately per ``channel`` (0..254),
    as torch.distributed orders messages per process group.
    """

    def __init__(self, rank: int, world_size: int, peers: dict[int, _Peer], io_timeout: float | None):
        self.rank, self.world_size, self.io_timeout = rank, world_size, io_timeout
        self._peers, self.closed = peers, False
        self._selector = selectors.DefaultSelector()
        for peer in peers.values():
            peer.sock.setblocking(False)

    @classmethod
    def connect(
        cls,
        rank: int,
        addresses: dict[int, tuple[str, int]],
        listener: socket.socket,
        cert_pem: bytes,
        key_pem: bytes,
        peer_certs: dict[int, bytes],
        timeout: float = 60.0,
        io_timeout: float | None = None,
    ) -> Mesh:
        """Dial every rank below ``rank``, accept every rank above it on ``listener`` (closed
        afterwards), each within ``timeout`` seconds in all; refused connections are retried.

        ``addresses`` and ``peer_certs`` cover ranks ``0..W-1`` (``peer_certs`` may omit
        ``rank`` itself). ``io_timeout``: seconds to wait for a peer's frame later (``None``:
        until it arrives or the peer disconnects).
        """
        world = sorted(addresses)
        if world != list(range(len(world))) or rank not in addresses or len(world) < 2:
            raise MeshError(f"addresses must cover ranks 0..W-1 (W >= 2) including rank {rank}; got ranks {world}")
        missing = [r for r in world if r != rank and r not in peer_certs]
        if missing:
            raise MeshError(f"no pinned certificate for ranks {missing}: peer_certs must cover every rank but {rank}")
        pinned = {r: cert_fingerprint(peer_certs[r]) for r in world if r != rank}
        contexts = _contexts(cert_pem, key_pem, [peer_certs[r] for r in pinned])
        deadline = time.monotonic() + timeout
        peers: dict[int, _Peer] = {}
        try:
            for j in range(rank):
                peers[j] = _dial(rank, j, addresses[j], contexts[False], pinned[j], deadline, timeout)
            waiting = set(range(rank + 1, len(world)))
            while waiting:
                peer = _accept(rank, listener, contexts[True], pinned, waiting, deadline, timeout)
                peers[peer.rank] = peer
                waiting.discard(peer.rank)
        except BaseException:
            for peer in peers.values():
                peer.sock.close()
            raise
        finally:
            listener.close()
        return cls(rank, len(world), peers, io_timeout)

    # -- introspection
    def tls_version(self, peer: int) -> str:
        return self._peer(peer).tls.version()

    def peer_fingerprint(self, peer: int) -> str:
        return self._peer(peer).fingerprint

    def _peer(self, rank: int) -> _Peer:
        if self.closed:
            raise MeshError(f"rank {self.rank}'s mesh is closed; connect a new one")
        if rank not in self._peers:
            raise MeshError(
                f"rank {self.rank} has no connection to rank {rank}; ranks are "
                f"{sorted(self._peers)} (and {self.rank} itself)"
            )
        return self._peers[rank]

    # -- frames
    def send(self, dst: int, tensor: torch.Tensor, channel: int = 0) -> None:
        """Send ``tensor`` (dtype, shape, bytes) to ``dst``; returns once it is with the kernel."""
        self._send(dst, TENSOR, channel, encode_tensor(tensor))

    def recv(self, src: int, channel: int = 0) -> torch.Tensor:
        return decode_tensor(self._recv(src, TENSOR, channel))

    def send_obj(self, dst: int, obj, channel: int = 0) -> None:
        """Send ``obj`` in the restricted encoding of :func:`encode_object`."""
        self._send(dst, OBJECT, channel, encode_object(obj))

    def recv_obj(self, src: int, channel: int = 0):
        return decode_object(self._recv(src, OBJECT, channel))

    def send_token(self, dst: int, channel: int = 0) -> None:
        """An empty frame (barriers)."""
        self._send(dst, TOKEN, channel, b"")

    def recv_token(self, src: int, channel: int = 0) -> None:
        self._recv(src, TOKEN, channel)

    def _send(self, dst: int, kind: int, channel: int, payload: bytes) -> None:
        if not 0 <= channel < _CONTROL:
            raise MeshError(f"channel must be in 0..{_CONTROL - 1}, got {channel}")
        peer = self._peer(dst)
        if peer.closed:
            raise MeshError(f"rank {dst} has closed its connection; rank {self.rank} cannot send to it")
        peer.write(_frame(kind, channel, payload))
        self._progress(lambda: not peer.pending, f"sending a {_KINDS[kind]} to rank {dst}", dst)

    def _recv(self, src: int, kind: int, channel: int) -> bytearray:
        peer = self._peer(src)
        queue = peer.frames[channel]
        what = f"waiting for a {_KINDS[kind]} from rank {src} on channel {channel}"
        self._progress(lambda: bool(queue), what, src)
        got, payload = queue.popleft()
        if got != kind:
            raise MeshError(
                f"rank {src} sent a {_KINDS[got]} on channel {channel} where rank {self.rank} expected "
                f"a {_KINDS[kind]}: the two ranks are not running the same protocol"
            )
        return payload

    def _progress(self, done, what: str, needed: int | None, timeout: float | None = -1.0) -> None:
        """Move bytes on every connection until ``done()``; ``needed``'s closing is an error."""
        timeout = self.io_timeout if timeout == -1.0 else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done():
            if needed is not None and self._peers[needed].closed:
                raise MeshError(f"rank {needed} closed its connection while rank {self.rank} was {what}")
            live = [p for p in self._peers.values() if not p.closed]
            for peer in self._peers.values():
                mask = (selectors.EVENT_READ | (selectors.EVENT_WRITE if peer.pending else 0)) if not peer.closed else 0
                if mask != peer.mask:
                    if peer.mask == 0:
                        self._selector.register(peer.sock, mask, peer)
                    elif mask == 0:
                        self._selector.unregister(peer.sock)
                    else:
                        self._selector.modify(peer.sock, mask, peer)
                    peer.mask = mask
            if not live:
                return
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                raise MeshError(f"rank {self.rank} timed out after {timeout} s {what}")
            for key, events in self._selector.select(wait):
                peer = key.data
                if events & selectors.EVENT_WRITE:
                    peer.send_some()
                if events & selectors.EVENT_READ:
                    try:
                        data = peer.sock.recv(1 << 20)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        data = b""
                    peer.feed(data)

    def close(self, linger: float = 5.0) -> None:
        """Send close_notify to every peer, then wait up to ``linger`` s for theirs (so that no
        unread byte turns the close into a reset) and close the sockets. Idempotent."""
        if self.closed:
            return
        try:
            for peer in self._peers.values():
                if not peer.closed:
                    try:
                        peer.tls.unwrap()
                    except (ssl.SSLError, ValueError):  # want-read: the peer's close_notify is to come
                        pass
                    peer._take_outgoing()
            self._progress(
                lambda: all(not p.pending for p in self._peers.values() if not p.closed), "closing", None, linger
            )
            for peer in self._peers.values():
                if not peer.closed:
                    try:
                        peer.sock.shutdown(socket.SHUT_WR)
                    except OSError:
                        peer.closed = True
            self._progress(lambda: all(p.closed for p in self._peers.values()), "closing", None, linger)
        except MeshError:
            pass  # a peer that broke or lingers: close anyway
        finally:
            self.closed = True
            self._selector.close()
            for peer in self._peers.values():
                peer.sock.close()

    def __enter__(self) -> Mesh:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _dial(
    rank: int, j: int, address: tuple[str, int], context: ssl.SSLContext, expected: str, deadline: float, timeout: float
) -> _Peer:
    host, port = address
    delay = 0.02
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=min(5.0, _remaining(deadline, "")))
            break
        except MeshError:
            raise MeshError(
                f"rank {rank} could not reach rank {j} at {host}:{port} within {timeout} s; "
                f"is rank {j} running and listening there?"
            ) from None
        except OSError as exc:
            if time.monotonic() + delay >= deadline:
                raise MeshError(
                    f"rank {rank} could not reach rank {j} at {host}:{port} within {timeout} s "
                    f"({exc}); is rank {j} running and listening there?"
                ) from None
            time.sleep(delay)
            delay = min(2 * delay, 0.5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    peer = _Peer(j, sock, context, server_side=False)
    what = f"in rank {rank}'s TLS handshake with rank {j} at {host}:{port}"
    try:
        try:
            _handshake(peer, deadline, what)
        except ssl.SSLError as exc:
            if _is_alert(exc):
                raise MeshError(
                    f"rank {j} at {host}:{port} refused rank {rank}'s certificate ({exc.reason}): does "
                    f"rank {j} pin rank {rank}'s certificate?"
                ) from None
            raise MeshError(
                f"rank {j} at {host}:{port} failed TLS with rank {rank}: {exc.reason or exc}; "
                f"it presented no certificate pinned for rank {j} (expected sha256 {expected})"
            ) from None
        except OSError as exc:
            raise MeshError(f"connection to rank {j} at {host}:{port} broke {what}: {exc}") from None
        if peer.fingerprint != expected:
            raise MeshError(
                f"rank {j} at {host}:{port} presented certificate sha256 {peer.fingerprint}, but the "
                f"certificate pinned for rank {j} is sha256 {expected}"
            )
        peer.write(_frame(HELLO, _CONTROL, _HELLO.pack(rank, j)))
        try:
            kind, _ = _blocking_frame(peer, deadline, f"while rank {j} checked rank {rank}'s certificate")
        except MeshError as exc:
            raise MeshError(
                f"rank {j} at {host}:{port} refused rank {rank} ({exc}): does rank {j} pin rank {rank}'s certificate?"
            ) from None
        if kind != ACK:
            raise MeshError(f"rank {j} answered rank {rank}'s hello with a {_KINDS[kind]}, expected an ack")
        return peer
    except BaseException:
        sock.close()
        raise


def _accept(
    rank: int,
    listener: socket.socket,
    context: ssl.SSLContext,
    pinned: dict[int, str],
    waiting: set[int],
    deadline: float,
    timeout: float,
) -> _Peer:
    expected = ", ".join(f"rank {r}: sha256 {pinned[r]}" for r in sorted(waiting))
    try:
        listener.settimeout(_remaining(deadline, ""))
        sock, addr = listener.accept()
    except (MeshError, TimeoutError):
        raise MeshError(
            f"rank {rank} waited {timeout} s for ranks {sorted(waiting)} to connect; are they running, "
            f"and do they have rank {rank}'s address right?"
        ) from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    where = f"{addr[0]}:{addr[1]}"
    peer = _Peer(None, sock, context, server_side=True)
    what = f"in rank {rank}'s TLS handshake with a peer from {where}"
    try:
        try:
            _handshake(peer, deadline, what)
            kind, payload = _blocking_frame(peer, deadline, f"before naming its rank to rank {rank}")
        except ssl.SSLError as exc:
            if _is_alert(exc):
                raise MeshError(
                    f"a peer from {where} refused rank {rank}'s certificate ({exc.reason}): does it pin "
                    f"rank {rank}'s certificate?"
                ) from None
            raise MeshError(
                f"a peer from {where} failed TLS with rank {rank}: {exc.reason or exc}; it presented "
                f"no certificate pinned for any of ({expected})"
            ) from None
        except OSError as exc:
            raise MeshError(f"connection from {where} broke {what}: {exc}") from None
        if kind != HELLO or len(payload) != _HELLO.size:
            raise MeshError(
                f"a peer from {where} sent a {_KINDS[kind]} of {len(payload)} bytes where rank {rank} "
                f"expected its hello"
            )
        claimed, target = _HELLO.unpack(payload)
        if target != rank:
            raise MeshError(
                f"a peer from {where} claiming rank {claimed} meant to reach rank {target}, but this is "
                f"rank {rank}: its address table is wrong"
            )
        if claimed not in waiting:
            raise MeshError(
                f"a peer from {where} claims rank {claimed}, but rank {rank} expects connections only from "
                f"ranks {sorted(waiting)} (higher ranks not yet connected)"
            )
        if peer.fingerprint != pinned[claimed]:
            raise MeshError(
                f"a peer from {where} claims rank {claimed} but presented certificate sha256 "
                f"{peer.fingerprint}; the certificate pinned for rank {claimed} is sha256 "
                f"{pinned[claimed]}"
            )
        peer.rank = claimed
        peer.write(_frame(ACK, _CONTROL, b""))
        _flush_blocking(peer, deadline, f"acknowledging rank {claimed}")
        return peer
    except BaseException:
        sock.close()
        raise
