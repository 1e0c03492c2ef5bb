"""The control channel between the coordinator and an aggregation party: TLS 1.3, pinned.

The party listens with its own certificate (the one on its card); the coordinator connects
trusting exactly that certificate (:func:`client_context`), so nothing but the party whose
card the consortium pins can answer. A message is one frame::

    u32 length of the JSON document || JSON (UTF-8) || u32 count || (u64 length || bytes) * count

the binary parts (envelope headers, ciphertexts, the revealed sum) travel beside the JSON,
referenced by index. Sizes are bounded before anything is allocated; a malformed frame is
one :class:`WireError`. No pickle crosses a trust boundary.
"""

from __future__ import annotations

import json
import math
import socket
import ssl
import struct
import tempfile
from collections.abc import Sequence

from pharmafl.errors import RefusedError

MAX_JSON = 64 << 20
MAX_BLOB = 1 << 34
MAX_BLOBS = 1 << 16
MAX_FRAME = 1 << 35  # all binary parts of one frame together


class WireError(RefusedError):
    """A frame on a party channel is malformed, too large, or the channel broke."""


def _exact(sock, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise WireError(f"the channel closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def send(sock, doc: dict, blobs: Sequence[bytes] = ()) -> None:
    """One frame of ``doc`` (a JSON object) and ``blobs``; a document JSON cannot carry is one
    :class:`WireError` before anything is sent."""
    if type(doc) is not dict:
        raise WireError(f"a frame's document must be a JSON object, got {type(doc).__name__}")
    try:
        head = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    except (ValueError, TypeError, RecursionError) as exc:  # NaN, infinities, non-JSON values or keys
        raise WireError(f"the frame's document is not JSON: {type(exc).__name__}: {exc}") from None
    parts = [struct.pack("<I", len(head)), head, struct.pack("<I", len(blobs))]
    for b in blobs:
        parts += [struct.pack("<Q", len(b)), bytes(b)]
    sock.sendall(b"".join(parts))


def recv(sock) -> tuple[dict, list[bytes]]:
    try:
        (n,) = struct.unpack("<I", _exact(sock, 4))
        if n > MAX_JSON:
            raise WireError(f"frame announces {n} bytes of JSON, more than {MAX_JSON}")
        try:
            doc = json.loads(
                _exact(sock, n).decode("utf-8"),
                parse_constant=_no_constant,
                parse_float=_finite,
                object_pairs_hook=_unique,
            )
        except (ValueError, RecursionError) as exc:
            raise WireError(f"frame JSON is malformed: {exc}") from None
        if type(doc) is not dict:
            raise WireError(f"frame JSON must be an object, got {type(doc).__name__}")
        (count,) = struct.unpack("<I", _exact(sock, 4))
        if count > MAX_BLOBS:
            raise WireError(f"frame announces {count} binary parts, more than {MAX_BLOBS}")
        blobs, total = [], 0
        for _ in range(count):
            (size,) = struct.unpack("<Q", _exact(sock, 8))
            total += size
            if size > MAX_BLOB or total > MAX_FRAME:
                raise WireError(
                    f"frame announces a binary part of {size} bytes ({total} in all), more than "
                    f"{MAX_BLOB} ({MAX_FRAME} per frame)"
                )
            blobs.append(_exact(sock, size))
        return doc, blobs
    except (OSError, ssl.SSLError) as exc:
        raise WireError(f"the channel broke: {type(exc).__name__}: {exc}") from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    """A JSON number as a float; one too large for a double (``1e999``) is refused, not read as
    infinity (which :func:`send` could never have written)."""
    x = float(text)
    if not math.isfinite(x):
        raise ValueError(f"number {text[:40]} is not finite as a double")
    return x


def _unique(pairs):
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("a JSON object repeats a key")
    return out


def blob(blobs: list[bytes], ref) -> bytes:
    """The binary part a JSON field refers to by index, or :class:`WireError`."""
    if type(ref) is not int or not 0 <= ref < len(blobs):
        raise WireError(f"reference {ref!r} to a binary part is out of range (frame has {len(blobs)})")
    return blobs[ref]


def server_context(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """The party's side: TLS 1.3 with its card's certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    with tempfile.NamedTemporaryFile("wb") as c, tempfile.NamedTemporaryFile("wb") as k:  # mode 0600
        c.write(cert_pem)
        k.write(key_pem)
        c.flush()
        k.flush()
        ctx.load_cert_chain(c.name, k.name)
    return ctx


def client_context(pinned_cert_pem: str) -> ssl.SSLContext:
    """The coordinator's side: trust exactly the party's pinned (self-signed) certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # the pinned certificate is the identity, not a DNS name
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=pinned_cert_pem)
    return ctx


def connect(host: str, port: int, pinned_cert_pem: str, timeout: float) -> ssl.SSLSocket:
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise WireError(
            f"cannot reach the party at {host}:{port}: {exc} (is pharmafl party serve running there?)"
        ) from None
    try:
        return client_context(pinned_cert_pem).wrap_socket(raw)
    except (OSError, ssl.SSLError) as exc:
        raw.close()
        raise WireError(
            f"TLS to the party at {host}:{port} failed: {exc} (is the card's certificate the one the party serves?)"
        ) from None
