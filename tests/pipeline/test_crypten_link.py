"""CrypTen on the TLS mesh: results equal the plaintext, forged dealer requests refused.

CrypTen is process-global, so every MPC test runs each rank in its own ``spawn`` process
(parties ``0..N-1``, dealer ``N``).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import time
import traceback

import numpy as np
import pytest
import torch

from pharmafl.pipeline.secure_agg.crypten_link import check_ttp_request
from pharmafl.pipeline.secure_agg.mesh import Mesh, MeshError, bind_listener, make_tls_identity

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
        from pharmafl.pipeline.secure_agg.crypten_link import install, tls_communicator
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
    procs = [
        ctx.Process(target=_member, args=(r, n, identities, roles[r], delays[r], up, downs[r]), daemon=True)
        for r in range(n + 1)
    ]
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


# --- the dealer's allow-list ----------------------------------------------------------------


def _req(function, *args, **kwargs):
    return {"function": function, "device": None, "args": args, "kwargs": kwargs}


def test_ttp_request_check_accepts_crypten_requests():
    s = torch.Size([3, 2, 8])
    assert check_ttp_request(_req("additive", s, s, "mul"))[0] == "additive"
    assert check_ttp_request(_req("binary", s, s))[2] == (s, s)
    assert check_ttp_request(_req("B2A", s))[0] == "B2A"
    conv = check_ttp_request(_req("additive", torch.Size([1, 1, 5, 5]), torch.Size([1, 1, 3, 3]), "conv2d", padding=1))
    assert conv[3] == {"padding": 1}


@pytest.mark.parametrize(
    "message",
    [
        _req("__init__"),
        _req("_get_additive_PRSS", torch.Size([2])),
        _req("generate_additive_triple"),
        _req("additive", torch.Size([2]), torch.Size([2]), "save"),
        _req("square", (-1,)),
        _req("square", torch.Size([1 << 20, 1 << 20])),
        _req("square", torch.Size([2]), bitlength=3),
        _req("additive", torch.Size([2]), torch.Size([2]), "mul", stride=2),
        "shutdown",
        {**_req("square", torch.Size([2])), "extra": 1},
    ],
    ids=["dunder", "private", "client-side", "torch-save", "negative", "huge", "kwargs", "mul-kwargs", "str", "extra"],
)
def test_ttp_request_check_refuses_forged_requests(message):
    with pytest.raises(MeshError, match="refuses"):
        check_ttp_request(message)
