"""CrypTen's communicator on a TLS :class:`~.mesh.Mesh`, and a dealer that serves only generators.

CrypTen 0.4.1 reaches its peers through ``crypten.communicator`` (a ``DistributedCommunicator``
over gloo) and, in ``crypten.mpc.provider.ttp_provider``, through three raw
``torch.distributed`` calls. :func:`tls_communicator` puts the communicator interface on a
mesh whose ranks ``0..N-1`` are the parties and rank ``N`` the dealer (CrypTen's trusted
third party); collectives are point-to-point sends, combined in rank order. :func:`install`
makes CrypTen use it, shims the ``dist`` of ``ttp_provider`` (isend, irecv, barrier) and
restricts the dealer to CrypTen's generator functions (:func:`check_ttp_request`): a request
for any other method, for a huge or malformed shape, or with unexpected keywords is refused,
and the dealer never calls what a request names otherwise. In each rank's process::

    mesh = Mesh.connect(rank, addresses, listener, cert_pem, key_pem, peer_certs, timeout=60)
    crypten = load_crypten(); crypten.cfg.mpc.provider = "TTP"
    install(crypten, tls_communicator(crypten, mesh))
    crypten.init() ... crypten.uninit()                # a party (rank < N)
    ttp_provider.TTPServer()                           # the dealer (rank N): returns on terminate

What a colleague found running CrypTen this way (each is handled here or by the callers):

* **Two-party ``eq`` at precision 0 reveals 65536, not 1.** CrypTen's ``_eqz_2PC`` returns a
  pass as ``2**16`` when the tensor's precision is 0, as it does over gloo: read an
  equality bit as ``!= 0``, as ``tests/pipeline/test_crypten_link.py`` does.
* **Seed shape mismatch at init.** ``crypten.init()``'s ``_sync_seeds`` sends a ``()`` seed
  into a ``(1,)`` buffer; gloo matches the element count only, so the communicator's
  receive checks dtype and element count and reshapes to the buffer.
* **Stale TTPClient singleton on re-init.** ``TTPClient`` keeps generators seeded by the
  dealer of the last ``crypten.init()``; :func:`install`'s ``uninit`` drops it, else a second
  run would draw Beaver triples from the old dealer's seeds.
* **The dealer must join before the parties finish ``crypten.init()``.** A party's init
  receives its generator seed from the dealer and waits on a barrier of every rank, so a
  party's ``crypten.init()`` returns only once the dealer runs ``TTPServer()``: start the
  dealer alongside the parties; waiting for their init to return before starting it deadlocks.
"""

from __future__ import annotations

import math

import torch

from pharmafl.pipeline.secure_agg.mesh import Mesh, MeshError

# --- the dealer's allow-list ----------------------------------------------------------------

#: CrypTen 0.4.1's TTPServer generators (``ttp_provider.TTP_FUNCTIONS``) and their arity.
TTP_GENERATORS = {"additive": 3, "square": 1, "binary": 2, "wraps": 1, "B2A": 1}
#: The ``op`` of an ``additive`` (Beaver) request, as ``crypten.mpc.primitives.beaver`` asserts.
BEAVER_OPS = frozenset({"mul", "matmul", "conv1d", "conv2d", "conv_transpose1d", "conv_transpose2d"})
_CONV_KWARGS = frozenset({"stride", "padding", "dilation", "groups", "output_padding"})
MAX_REQUEST_ELEMENTS = 1 << 27


def check_ttp_request(message, max_elements: int = MAX_REQUEST_ELEMENTS) -> tuple[str, str | None, tuple, dict]:
    """``(function, device, args, kwargs)`` of a well-formed TTP request, else :class:`MeshError`.

    ``function`` must be one of :data:`TTP_GENERATORS` with its arity, every size a shape of
    at most ``max_elements`` elements, an ``additive`` op one of :data:`BEAVER_OPS` with
    convolution keywords only: the dealer never calls anything a request names otherwise.
    """
    if type(message) is not dict or set(message) != {"function", "device", "args", "kwargs"}:
        raise MeshError(
            f"the dealer refuses {str(message)[:80]!r}: a request is a dict of function, device, args, kwargs"
        )
    function, device, args, kwargs = (message[k] for k in ("function", "device", "args", "kwargs"))
    if function not in TTP_GENERATORS:
        raise MeshError(
            f"the dealer refuses a request for {function!r}: only the TTP generators "
            f"{sorted(TTP_GENERATORS)} may be called"
        )
    if device is not None and (type(device) is not str or device.split(":")[0] not in ("cpu", "cuda")):
        raise MeshError(f"the dealer refuses device {device!r}: expected None, 'cpu' or 'cuda[:N]'")
    if type(args) not in (tuple, list) or type(kwargs) is not dict:
        raise MeshError(f"the dealer refuses {function!r}: args must be a tuple and kwargs a dict")
    if len(args) != TTP_GENERATORS[function]:
        raise MeshError(
            f"the dealer refuses {function!r} with {len(args)} arguments; it takes {TTP_GENERATORS[function]}"
        )
    sizes = list(args[:2]) if function == "additive" else list(args)
    sizes = [_check_size(function, s, max_elements) for s in sizes]
    if function == "additive":
        op = args[2]
        if op not in BEAVER_OPS:
            raise MeshError(f"the dealer refuses additive op {op!r}: expected one of {sorted(BEAVER_OPS)}")
        bad = {k: v for k, v in kwargs.items() if k not in _CONV_KWARGS or not _conv_value(v)}
        if bad or (kwargs and not op.startswith("conv")):
            raise MeshError(
                f"the dealer refuses additive keywords {bad or kwargs}: only {sorted(_CONV_KWARGS)} "
                f"(ints, tuples of ints, 'same' or 'valid') for a convolution"
            )
        return function, device, (*sizes, op), kwargs
    if kwargs:
        raise MeshError(f"the dealer refuses {function!r} with keywords {sorted(kwargs)}; it takes none")
    return function, device, tuple(sizes), {}


def _check_size(function: str, size, max_elements: int) -> torch.Size:
    if type(size) not in (torch.Size, tuple, list) or not all(type(d) is int and d >= 0 for d in size):
        raise MeshError(f"the dealer refuses {function!r} of size {size!r}: a size is a tuple of non-negative ints")
    if len(size) > 16 or math.prod(size) > max_elements:
        raise MeshError(
            f"the dealer refuses {function!r} of size {tuple(size)}: at most 16 dimensions and {max_elements} elements"
        )
    return torch.Size(size)


def _conv_value(v) -> bool:
    if type(v) is int or v in ("same", "valid"):
        return True
    return type(v) in (tuple, list) and all(type(x) is int for x in v)


# --- CrypTen on the mesh --------------------------------------------------------------------


class Group:
    """The ranks of a CrypTen process group and the mesh channel that carries it."""

    def __init__(self, name: str, ranks, channel: int):
        self.name, self.ranks, self.channel = name, tuple(ranks), channel

    def __repr__(self) -> str:
        return f"Group({self.name!r}, ranks={list(self.ranks)})"


class _Completed:
    """What isend / irecv return: the work is already done."""

    def wait(self, *args, **kwargs) -> bool:
        return True

    def is_completed(self) -> bool:
        return True


_CLASS = None


def _communicator_class(crypten):
    """``TLSCommunicator``, built once CrypTen is loaded (it subclasses CrypTen's class)."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    from crypten.communicator.communicator import _logging
    from crypten.communicator.distributed_communicator import DistributedCommunicator
    from torch.distributed import ReduceOp

    def combine(acc: torch.Tensor, other: torch.Tensor, op) -> None:
        if op == ReduceOp.SUM:
            acc.add_(other)
        elif op == ReduceOp.BXOR:
            acc.bitwise_xor_(other)
        else:
            raise MeshError(f"reduce op {op} is not supported over the mesh; CrypTen uses SUM and BXOR")

    class TLSCommunicator(DistributedCommunicator):
        """CrypTen's communicator over a :class:`Mesh`: ranks ``0..N-1`` are the parties
        (``main_group``), rank ``N`` the dealer; collectives are point-to-point sends."""

        BYTES_PER_ELEMENT = 8

        def __init__(self, mesh: Mesh, with_dealer: bool = True):  # no super(): nothing of gloo
            self.mesh, self.rank = mesh, mesh.rank
            self.world_size = mesh.world_size - 1 if with_dealer else mesh.world_size
            self.distributed_backend, self.rendezvous = "tls-mesh", None
            self.reset_communication_stats()
            self._name = f"rank{self.rank}"
            everyone = range(mesh.world_size)
            self.main_group = Group("main", range(self.world_size), 0)
            self.ttp_group = Group("ttp", everyone, 1)
            self.ttp_comm_group = Group("ttp_comm", (0, mesh.world_size - 1), 2)
            self.world_group = Group("world", everyone, 3)  # torch.distributed's default group
            self.ttp_initialized = with_dealer

        # -- classmethods of the base that would reach for torch.distributed
        @classmethod
        def is_initialized(cls):
            raise MeshError("use pharmafl.pipeline.secure_agg.crypten_link.install(crypten, comm), then crypten.init()")

        initialize = get = shutdown = is_initialized

        # -- helpers
        def _members(self, group) -> tuple[Group, list[int]]:
            group = self.main_group if group is None else group
            if not isinstance(group, Group) or self.rank not in group.ranks:
                raise MeshError(f"rank {self.rank} is not in process group {group!r}")
            return group, [r for r in group.ranks if r != self.rank]

        def _recv_like(self, template: torch.Tensor, src: int, group: Group) -> torch.Tensor:
            if src is None or src not in group.ranks:
                raise MeshError(f"rank {self.rank} cannot receive from {src!r} in {group!r}: name a source rank")
            got = self.mesh.recv(src, group.channel)
            # as gloo, match the element count only: CrypTen's _sync_seeds sends a () seed into a (1,) buffer
            if got.dtype != template.dtype or got.numel() != template.numel():
                raise MeshError(
                    f"rank {src} sent a {got.dtype} tensor of shape {tuple(got.shape)} where "
                    f"rank {self.rank} expected {template.dtype} {tuple(template.shape)} in {group!r}"
                )
            return got.reshape(template.shape).to(template.device)

        def _send(self, tensor: torch.Tensor, dst: int, group: Group) -> None:
            if dst not in group.ranks:
                raise MeshError(f"rank {self.rank} cannot send to {dst!r} in {group!r}")
            self.mesh.send(dst, tensor, group.channel)

        # -- point to point
        @_logging
        def send(self, tensor, dst):
            self._send(tensor, dst, self._members(None)[0])

        @_logging
        def recv(self, tensor, src=None):
            return self._recv_like(tensor, src, self._members(None)[0])

        @_logging
        def isend(self, tensor, dst):
            self._send(tensor, dst, self._members(None)[0])
            return _Completed()

        @_logging
        def irecv(self, tensor, src=None):
            tensor.data.copy_(self._recv_like(tensor, src, self._members(None)[0]))
            return _Completed()

        # -- collectives (deterministic: every party combines in rank order)
        @_logging
        def scatter(self, scatter_list, src, size=None, device=None):
            group, others = self._members(None)
            if self.rank == src:
                for r in others:
                    self._send(scatter_list[r], r, group)
                return scatter_list[self.rank]
            size = scatter_list[self.rank].size() if size is None else size
            return self._recv_like(torch.empty(size, dtype=torch.long, device=device), src, group)

        @_logging
        def reduce(self, input, dst, op=ReduceOp.SUM, batched=False):
            group, others = self._members(None)
            tensors = list(input) if batched else [input]
            if self.rank != dst:
                for t in tensors:
                    self._send(t, dst, group)
                return None
            result = [t.clone() for t in tensors]
            for r in others:
                for acc in result:
                    combine(acc, self._recv_like(acc, r, group), op)
            return result if batched else result[0]

        @_logging
        def all_reduce(self, input, op=ReduceOp.SUM, batched=False):
            group, others = self._members(None)
            tensors = list(input) if batched else [input]
            for r in others:
                for t in tensors:
                    self._send(t, r, group)
            parts = {self.rank: tensors}
            for r in others:
                parts[r] = [self._recv_like(t, r, group) for t in tensors]
            order = sorted(parts)
            result = [parts[order[0]][i].clone() for i in range(len(tensors))]
            for r in order[1:]:
                for acc, t in zip(result, parts[r]):
                    combine(acc, t, op)
            return result if batched else result[0]

        @_logging
        def gather(self, tensor, dst):
            group, others = self._members(None)
            if self.rank != dst:
                self._send(tensor, dst, group)
                return [None]
            return [tensor.clone() if r == self.rank else self._recv_like(tensor, r, group) for r in group.ranks]

        @_logging
        def all_gather(self, tensor):
            group, others = self._members(None)
            for r in others:
                self._send(tensor, r, group)
            return [tensor.clone() if r == self.rank else self._recv_like(tensor, r, group) for r in group.ranks]

        @_logging
        def broadcast(self, input, src, group=None, batched=False):
            group, others = self._members(group)
            tensors = list(input) if batched else [input]
            if self.rank == src:
                for r in others:
                    for t in tensors:
                        self._send(t, r, group)
            else:
                for t in tensors:
                    t.data.copy_(self._recv_like(t, src, group))
            return input

        @_logging
        def barrier(self, group=None):
            group, others = self._members(group)
            for r in others:
                self.mesh.send_token(r, group.channel)
            for r in others:
                self.mesh.recv_token(r, group.channel)

        # -- objects (restricted encoding, never pickle)
        @_logging
        def send_obj(self, obj, dst, group=None):
            group, _ = self._members(group)
            self.mesh.send_obj(dst, obj, group.channel)

        @_logging
        def recv_obj(self, src, group=None):
            group, _ = self._members(group)
            return self.mesh.recv_obj(src, group.channel)

        @_logging
        def broadcast_obj(self, obj, src, group=None):
            group, others = self._members(group)
            if self.rank != src:
                return self.mesh.recv_obj(src, group.channel)
            for r in others:
                self.mesh.send_obj(r, obj, group.channel)
            return obj

        def get_world_size(self):
            return self.world_size

        def get_rank(self):
            return self.rank

        def get_ttp_rank(self):
            return self.world_size

        def get_distributed_backend(self):
            return self.distributed_backend

    _CLASS = TLSCommunicator
    return _CLASS


def tls_communicator(crypten, mesh: Mesh, with_dealer: bool = True):
    """A ``TLSCommunicator`` on ``mesh`` (its last rank is the dealer when ``with_dealer``)."""
    return _communicator_class(crypten)(mesh, with_dealer)


class _DistShim:
    """The ``torch.distributed`` calls of ``ttp_provider`` (isend, irecv, barrier), on the mesh."""

    ReduceOp = torch.distributed.ReduceOp

    def __init__(self, comm):
        self._comm = comm

    def _group(self, group):
        return self._comm.world_group if group is None else group

    def isend(self, tensor, dst, group=None, tag=0):
        self._comm._send(tensor, dst, self._comm._members(self._group(group))[0])
        return _Completed()

    def irecv(self, tensor, src=None, group=None, tag=0):
        g = self._comm._members(self._group(group))[0]
        tensor.data.copy_(self._comm._recv_like(tensor, src, g))
        return _Completed()

    def barrier(self, group=None, async_op=False, device_ids=None):
        self._comm.barrier(self._group(group))

    def is_initialized(self) -> bool:
        return not self._comm.mesh.closed

    def __getattr__(self, name):
        raise MeshError(
            f"ttp_provider called torch.distributed.{name}, which the TLS mesh does not provide "
            f"(only isend, irecv, barrier): this module was written for CrypTen 0.4.1"
        )


def install(crypten, comm, max_request_elements: int = MAX_REQUEST_ELEMENTS) -> None:
    """Make CrypTen use ``comm`` (a :func:`tls_communicator`): ``crypten.init()`` on the parties
    and ``TTPServer()`` on the dealer then work unchanged (with ``cfg.mpc.provider = "TTP"``).

    Patches ``crypten.communicator.{get, is_initialized, _init, uninit}`` and the ``dist`` of
    ``ttp_provider``, and replaces ``TTPServer.__init__`` by the same serve loop that refuses
    any request :func:`check_ttp_request` refuses and closes the mesh when it ends.
    ``crypten.uninit()``: rank 0 tells the dealer to terminate, then every rank closes.
    """
    import crypten.communicator as cc
    from crypten.mpc.provider import ttp_provider

    if set(ttp_provider.TTP_FUNCTIONS) != set(TTP_GENERATORS):
        raise MeshError(
            f"CrypTen's TTP functions are {ttp_provider.TTP_FUNCTIONS}, this module allows "
            f"{sorted(TTP_GENERATORS)}: review check_ttp_request for this CrypTen version"
        )
    state = {"initialized": False}

    def get():
        if not state["initialized"]:
            raise RuntimeError("Crypten not initialized. Please call crypten.init() first.")
        return comm

    def is_initialized():
        return state["initialized"]

    def _init(use_threads, rank=0, world_size=1, init_ttp=False):
        if use_threads:
            raise MeshError("crypten.init_thread() is not for the TLS mesh: call crypten.init()")
        if comm.mesh.closed:
            raise MeshError("the mesh of this communicator is closed: connect a new Mesh and install it")
        if bool(init_ttp) != comm.ttp_initialized:
            raise MeshError(
                f"crypten.cfg.mpc.provider is {crypten.cfg.mpc.provider!r}; the mesh "
                f"{'has' if comm.ttp_initialized else 'has no'} dealer rank: set it to 'TTP'"
            )
        state["initialized"] = True

    def uninit():
        if not state["initialized"]:
            comm.mesh.close()
            return
        state["initialized"] = False
        ttp_provider.TTPClient.uninit()  # its generators were seeded by this dealer
        try:
            if comm.get_rank() == 0 and comm.ttp_initialized:
                comm.send_obj("terminate", comm.get_ttp_rank(), comm.ttp_group)
        finally:
            comm.mesh.close()

    def serve(self):
        """``TTPServer.__init__`` of CrypTen 0.4.1, with every request checked first."""
        crypten.init()
        try:
            me = cc.get()
            self.ttp_group, self.comm_group, self.device = me.ttp_group, me.ttp_comm_group, "cpu"
            self._setup_generators()
            while (message := me.recv_obj(0, self.ttp_group)) != "terminate":
                function, self.device, args, kwargs = check_ttp_request(message, max_request_elements)
                result = getattr(self, function)(*args, **kwargs)  # function is one of TTP_GENERATORS
                me.send_obj(result.size(), 0, self.ttp_group)
                me.broadcast(result, me.get_ttp_rank(), self.comm_group)
        finally:
            crypten.uninit()

    cc.get, cc.is_initialized, cc._init, cc.uninit = get, is_initialized, _init, uninit
    ttp_provider.dist = _DistShim(comm)
    ttp_provider.TTPServer.__init__ = serve
