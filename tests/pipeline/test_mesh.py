"""The TLS mesh under CrypTen: results equal the plaintext, impostors and forged requests refused.

CrypTen is process-global, so every MPC test runs each rank in its own ``spawn`` process
(parties ``0..N-1``, dealer ``N``); the transport-only tests run ranks as threads.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import socket
import threading
import time
import traceback

import numpy as np
import pytest
import torch
from pharmafl.pipeline.secure_agg.mesh import (
    Mesh,
    MeshError,
    bind_listener,
    cert_fingerprint,
    check_ttp_request,
    decode_object,
    encode_object,
    encode_tensor,
    make_tls_identity,
)

# --- ranks as processes ---------------------------------------------------------------------

LIMIT = 1 << 16  # T for max_norm=1, slack=0, in raw fixed-point units
SITES = np.array(
    [
        [[-65000, 1200, -3, 0, 17, -2000, 5, 999], [1, 2, 3, 4, -5, -6, -7, -8]],  # passes, near T^2
        [[70000, 0, 0, 0, 0, 0, 0, 0], [0] * 8],  # one coordinate beyond T
        [[30000] * 8, [-1] * 8],  # every coordinate within T, squared norm 7.2e9 > T^2
    ],
    dtype=np.int64,
)


def _split(secret: np.ndarray, n: int, seed: int) -> list[np.ndarray]:
    """Additive shares in Z_2^64 of ``secret`` (same at every rank: the seed is shared)."""
    rng = np.random.default_rng(seed)
    shares = [rng.integers(-(2**63), 2**63 - 1, size=secret.shape, dtype=np.int64) for _ in range(n - 1)]
    with np.errstate(over="ignore"):
        shares.append(secret - sum(shares, np.zeros_like(secret)))
    return shares


def _vector(seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).integers(-(2**63), 2**63 - 1, size=257, dtype=np.int64)


def _compute(crypten, rank: int, n: int) -> dict:
    """The operations of bound.check_sketches and party._round, on known shares."""
    from pharmafl.pipeline.secure_agg.bound import check_sketches
    from pharmafl.sites.secret_sharing import PRECISION_BITS

    crypten.cfg.communicator.verbose = True
    crypten.init()
    comm = crypten.communicator.get()
    mine = torch.from_numpy(_split(SITES, n, 1)[rank])
    p = crypten.mpc.MPCTensor.from_shares(mine, precision=0)
    inside = (p <= LIMIT) * (p >= -LIMIT)
    out = {
        "plain": p.get_plain_text().numpy(),
        "squares": (p * p).sum(dim=2).reveal().numpy(),
        "inside": inside.get_plain_text().numpy(),
        "inside_count": inside.sum(dim=(1, 2)).get_plain_text().numpy(),
        "bits": check_sketches(crypten, mine, 1.0, 0.0).numpy(),
    }
    acc = torch.from_numpy(_split(_vector(), n, 2)[rank])
    revealed = crypten.mpc.MPCTensor.from_shares(acc, precision=PRECISION_BITS).reveal(dst=0)
    out["revealed"] = None if revealed is None else revealed.numpy()
    out["tls"] = sorted({comm.mesh.tls_version(r) for r in range(n + 1) if r != rank})
    out["rounds"] = comm.get_communication_stats()["rounds"]
    out["collectives"] = _collectives(comm, rank, n)
    crypten.uninit()
    return out


def _collectives(comm, rank: int, n: int) -> dict:
    """The communicator methods the MPC above may not reach."""
    from torch.distributed import ReduceOp

    x = torch.tensor([rank + 1, 10 * (rank + 1)])
    gathered = comm.gather(x, 0)
    out = {
        "gather": [None if t is None else t.tolist() for t in gathered],
        "scatter": comm.scatter([torch.tensor([7 * i]) for i in range(n)], 1, size=torch.Size([1])).tolist(),
        "all_gather": [t.tolist() for t in comm.all_gather(x)],
        "reduce": [t.tolist() for t in comm.reduce([x, 2 * x], 0, batched=True) or []],
        "xor": comm.all_reduce(x, op=ReduceOp.BXOR).tolist(),
        "sum": [t.tolist() for t in comm.all_reduce([x], batched=True)],
        "obj": comm.broadcast_obj({"k": (1, torch.Size([2]))} if rank == 1 else None, 1),
    }
    comm.barrier()
    return out


def _assert_collectives(results: dict, n: int) -> None:
    xs = [[r + 1, 10 * (r + 1)] for r in range(n)]
    xor = [0, 0]
    for a, b in xs:
        xor = [xor[0] ^ a, xor[1] ^ b]
    total = [sum(x[0] for x in xs), sum(x[1] for x in xs)]
    for rank in range(n):
        got = results[rank][1]["collectives"]
        assert got["gather"] == (xs if rank == 0 else [None])
        assert got["scatter"] == [7 * rank] and got["all_gather"] == xs
        assert got["reduce"] == ([total, [2 * t for t in total]] if rank == 0 else [])
        assert got["xor"] == xor and got["sum"] == [total]
        assert got["obj"] == {"k": (1, torch.Size([2]))} and type(got["obj"]["k"][1]) is torch.Size


def _dealer(crypten, rank: int, n: int) -> str:
    from crypten.mpc.provider.ttp_provider import TTPServer

    TTPServer()  # returns on rank 0's "terminate"
    return "terminated"


def _forge_request(crypten, rank: int, n: int) -> str:
    """Rank 0 asks the dealer to run a method that is not a generator."""
    crypten.init()
    comm = crypten.communicator.get()
    forged = {"function": "_setup_generators", "device": None, "args": (), "kwargs": {}}
    comm.send_obj(forged, comm.get_ttp_rank(), comm.ttp_group)
    try:
        comm.recv_obj(comm.get_ttp_rank(), comm.ttp_group)
    except MeshError as exc:
        return f"no answer: {exc}"
    finally:
        comm.mesh.close()
    return "the dealer answered"


def _idle(crypten, rank: int, n: int) -> str:
    crypten.init()
    crypten.uninit()
    return "idle"


ROLES = {"compute": _compute, "dealer": _dealer, "forge": _forge_request, "idle": _idle}


def _member(rank, n, identities, role, delay, up, down) -> None:
    """One rank's process: load CrypTen, listen, learn the addresses, connect, run ``role``."""
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    try:
        from pharmafl.pipeline.secure_agg.mesh import install, tls_communicator
        from pharmafl.sites.crypten_compat import load_crypten

        crypten = load_crypten()
        crypten.cfg.mpc.provider = "TTP"
        listener = bind_listener("127.0.0.1")
        up.put(("port", rank, listener.getsockname()[1]))
        addresses = down.get(timeout=60)
        time.sleep(delay)
        cert, key = identities[rank]
        peer_certs = {r: c for r, (c, _) in identities.items() if r != rank}
        mesh = Mesh.connect(rank, addresses, listener, cert, key, peer_certs, timeout=30.0, io_timeout=30.0)
        install(crypten, tls_communicator(crypten, mesh))
        up.put(("done", rank, ROLES[role](crypten, rank, n)))
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        up.put(("error", rank, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


def _run_ranks(n: int, roles: list[str], delays: list[float] | None = None, timeout: float = 90.0) -> dict:
    """Start ``n`` parties and the dealer; ``{rank: ("done"|"error", value)}``."""
    ctx = mp.get_context("spawn")
    identities = {r: make_tls_identity(f"rank{r}") for r in range(n + 1)}
    up, downs = ctx.Queue(), [ctx.Queue() for _ in range(n + 1)]
    delays = delays or [0.0] * (n + 1)
    procs = [ctx.Process(target=_member, args=(r, n, identities, roles[r], delays[r], up, downs[r]), daemon=True)
             for r in range(n + 1)]  # fmt: skip
    for p in procs:
        p.start()
    ports, results = {}, {}
    deadline = time.monotonic() + timeout
    try:
        while len(results) < n + 1:
            kind, rank, value = up.get(timeout=max(deadline - time.monotonic(), 0.1))
            if kind == "port":
                ports[rank] = value
                if len(ports) == n + 1:
                    for q in downs:
                        q.put({r: ("127.0.0.1", port) for r, port in ports.items()})
            else:
                results[rank] = (kind, value)
    except queue.Empty:
        pytest.fail(f"ranks {sorted(set(range(n + 1)) - set(results))} did not finish in {timeout} s; got {results}")
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return results


def _assert_matches_plaintext(results: dict, n: int) -> None:
    errors = {r: v for r, (k, v) in results.items() if k == "error"}
    assert not errors, errors
    assert results[n] == ("done", "terminated")
    limit_sq = LIMIT**2
    inside = (SITES <= LIMIT) & (SITES >= -LIMIT)
    squares = (SITES**2).sum(axis=2)
    for rank in range(n):
        out = results[rank][1]
        np.testing.assert_array_equal(out["plain"], SITES.astype(np.float32))
        np.testing.assert_array_equal(out["squares"], squares)
        np.testing.assert_array_equal(out["inside"], inside.astype(np.float32))
        np.testing.assert_array_equal(out["inside_count"], inside.sum(axis=(1, 2)))
        expected_bits = inside.all(axis=(1, 2)) & (squares <= limit_sq).all(axis=1)
        # CrypTen's 2-party eq (_eqz_2PC) reveals a pass as 2**16 at precision 0, as it does over gloo
        np.testing.assert_array_equal(out["bits"] != 0, expected_bits)
        assert out["tls"] == ["TLSv1.3"] and out["rounds"] > 0
    assert list(expected_bits) == [True, False, False]  # the fixture exercises both outcomes
    np.testing.assert_array_equal(results[0][1]["revealed"], _vector())
    assert all(results[r][1]["revealed"] is None for r in range(1, n))
    _assert_collectives(results, n)


@pytest.mark.slow
def test_two_parties_and_dealer_compute_the_plaintext_results():
    results = _run_ranks(2, ["compute", "compute", "dealer"])
    _assert_matches_plaintext(results, 2)


@pytest.mark.slow
def test_three_parties_started_out_of_order_compute_the_plaintext_results():
    results = _run_ranks(3, ["compute"] * 3 + ["dealer"], delays=[0.8, 0.0, 0.4, 0.2])
    _assert_matches_plaintext(results, 3)


@pytest.mark.slow
def test_dealer_refuses_a_request_for_a_non_generator_method():
    results = _run_ranks(2, ["forge", "idle", "dealer"])
    kind, message = results[2]
    assert kind == "error" and "MeshError" in message
    assert "refuses a request for '_setup_generators'" in message and "additive" in message
    assert results[0][0] == "done" and results[0][1].startswith("no answer: rank 2 closed its connection")


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
    request = {"function": "additive", "device": None, "args": (torch.Size([3, 2]), torch.Size([3, 2]), "mul"),
               "kwargs": {"stride": (1, 1)}}  # fmt: skip
    for obj in (request, "terminate", torch.Size([4, 8]), [1, (2, 3)], None, 1.5):
        back = decode_object(encode_object(obj))
        assert back == obj and type(back) is type(obj)
    back = decode_object(encode_object(request))
    assert type(back["args"]) is tuple and type(back["args"][0]) is torch.Size


@pytest.mark.parametrize("obj", [_Opaque(), {1, 2}, b"raw", torch.zeros(2), {1: "int key"}, float("nan")],
                         ids=["reduce", "set", "bytes", "tensor", "int-key", "nan"])  # fmt: skip
def test_object_codec_refuses_to_encode_pickle_only_objects(obj):
    with pytest.raises(MeshError, match="over the mesh"):
        encode_object(obj)


@pytest.mark.parametrize("payload", [pickle.dumps(_Opaque()), pickle.dumps({"function": "square"}),
                                     b'{"__reduce__": ["os.system", "id"]}', b"NaN", b'{"size": [-1]}'],
                         ids=["pickle-reduce", "pickle-dict", "unknown-tag", "nan", "negative-size"])  # fmt: skip
def test_object_codec_refuses_to_decode_anything_else(payload):
    with pytest.raises(MeshError):
        decode_object(payload)


def _req(function, *args, **kwargs):
    return {"function": function, "device": None, "args": args, "kwargs": kwargs}


def test_ttp_request_check_accepts_crypten_requests():
    s = torch.Size([3, 2, 8])
    assert check_ttp_request(_req("additive", s, s, "mul"))[0] == "additive"
    assert check_ttp_request(_req("binary", s, s))[2] == (s, s)
    assert check_ttp_request(_req("B2A", s))[0] == "B2A"
    conv = check_ttp_request(_req("additive", torch.Size([1, 1, 5, 5]), torch.Size([1, 1, 3, 3]), "conv2d", padding=1))
    assert conv[3] == {"padding": 1}


@pytest.mark.parametrize("message", [
    _req("__init__"), _req("_get_additive_PRSS", torch.Size([2])), _req("generate_additive_triple"),
    _req("additive", torch.Size([2]), torch.Size([2]), "save"), _req("square", (-1,)),
    _req("square", torch.Size([1 << 20, 1 << 20])), _req("square", torch.Size([2]), bitlength=3),
    _req("additive", torch.Size([2]), torch.Size([2]), "mul", stride=2), "shutdown",
    {**_req("square", torch.Size([2])), "extra": 1},
], ids=["dunder", "private", "client-side", "torch-save", "negative", "huge", "kwargs", "mul-kwargs", "str",
        "extra"])  # fmt: skip
def test_ttp_request_check_refuses_forged_requests(message):
    with pytest.raises(MeshError, match="refuses"):
        check_ttp_request(message)
