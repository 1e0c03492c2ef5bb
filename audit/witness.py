"""A C2SP ``tlog-witness`` of the run's ledger, run at a site (or an aggregation party).

The coordinator keeps the ledger; the witnesses keep it honest. For each log (its
*origin*, ``pharmafl/<run_id>``) a witness remembers the last checkpoint it cosigned and
cosigns a new one only if the coordinator proves it extends that one (`tlog-witness
<https://c2sp.org/tlog-witness>`_, `tlog-cosignature <https://c2sp.org/tlog-cosignature>`_):

* first contact with an origin: ``old_size`` 0, an empty proof and an ``anchor`` — the
  ``run_started`` entry, whose ``entry_hash`` the witness recomputes and whose inclusion
  it checks at its ``seq`` under the new root (leaf ``SHA-256(0x00 || entry_hash ||
  signature)``). That entry must name this origin's run, pin a roster whose cards hash to
  its ``roster_sha256``, a roster the site accepted, in which this witness's own card
  carries this witness's own key. The witness then pins the origin's log key;
* the checkpoint's signature verifies under the log key (pinned after first contact);
* ``old_size`` equals the size it last cosigned (else the error carries ``current_size``,
  C2SP's 409), the tree never shrinks, an equal size has the same root, and a larger
  one comes with an RFC 9162 consistency proof from the stored head.

The check and the new head are one atomic step (an exclusive lock per origin), and the
head is on disk (temporary file, fsync, rename, fsync of the directory) before the
cosignature is returned, so a crash can never make the witness forget what it signed.

The cosignature is Ed25519 over ``cosignature/v1`` of the C2SP checkpoint body
(:func:`pharmafl.audit.messages.cosignature_message`); the answer is
``{"witness", "tree_size", "timestamp", "signature"}`` with the signature in hex.

Any malformed or refused request raises :class:`WitnessError`, and nothing else.
Imports: the standard library, ``cryptography``, :mod:`.messages` and :mod:`.rfc9162`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from pharmafl.audit import messages, rfc9162

STATE_FORMAT = "pharmafl-witness-state-v1"
MAX_CONSISTENCY = 63  # proof lines C2SP allows
MAX_INCLUSION = 64
MAX_SIZE = 2**63 - 1
_HEX = {n: re.compile(f"[0-9a-f]{{{n}}}") for n in (64, 128)}
_TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
_REQUEST = {"origin", "checkpoint", "log_key", "old_size", "proof"}
_CHECKPOINT = {"root_hash", "signature", "signer", "tree_size", "ts"}
_ENTRY = {"actor", "entry_hash", "payload", "prev_hash", "seq", "signature", "ts", "type"}


class WitnessError(Exception):
    """The witness refused a request; ``current_size`` is set when ``old_size`` was not the
    size it last cosigned (the C2SP 409 answer: send a proof from that size)."""

    def __init__(self, reason: str, *, current_size: int | None = None):
        super().__init__(reason)
        self.reason, self.current_size = reason, current_size


class Witness:
    """A witness of pharmafl ledgers, keeping one state file per origin in ``directory``.

    Args:
        directory: where the heads live (created 0700); file name = SHA-256 of the origin.
        name: the witness's name, the site id (also its key's name in ``cosignature/v1``).
        sign: signs bytes with the witness's Ed25519 key (the key itself stays with the caller).
        public_key: the raw 32-byte public key ``sign`` signs for.
        accepted_rosters: the roster hashes the site agreed to (or a callable returning them,
            read at every first contact).
        clock: seconds since the epoch, for the cosignature's timestamp.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        name: str,
        sign: Callable[[bytes], bytes],
        public_key: bytes,
        *,
        accepted_rosters: Callable[[], set[str]] | set[str] | frozenset[str],
        clock: Callable[[], float] = time.time,
    ):
        if not isinstance(name, str) or not name or not name.isprintable() or " " in name:
            raise WitnessError(f"witness name {name!r} must be a non-empty printable string without spaces")
        if not isinstance(public_key, bytes) or len(public_key) != 32:
            raise WitnessError("public_key must be the raw 32-byte Ed25519 public key")
        self.directory = Path(directory)
        self.name, self.public_key, self._sign, self.clock = name, public_key, sign, clock
        self._accepted = accepted_rosters
        self._verifier = Ed25519PublicKey.from_public_bytes(public_key)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def state_file(self, origin: str) -> Path:
        return self.directory / (hashlib.sha256(origin.encode()).hexdigest() + ".json")

    def head(self, origin: str) -> dict[str, Any] | None:
        """The state kept for ``origin`` (``tree_size``, ``root_hash``, ``log_key``, ...), or None."""
        return self._load(origin)

    def add_checkpoint(self, request: Any) -> dict[str, Any]:
        """Verify ``request`` (docs/trust-domains.md, "Witness request"), persist the new
        head, and return the cosignature ``{"witness", "tree_size", "timestamp", "signature"}``."""
        origin, cp, log_key, old_size, proof, anchor = _parse(request)
        size, root = cp["tree_size"], bytes.fromhex(cp["root_hash"])
        _check_log_signature(cp, log_key)
        with self._locked(origin):
            state = self._load(origin)
            if state is not None and state["tree_size"] != old_size:  # the log lost our last answer
                alt = _alternatives(request, size).get(state["tree_size"])
                old_size, proof = (state["tree_size"], alt) if alt is not None else (old_size, proof)
            if state is None:
                if old_size != 0:
                    raise WitnessError(
                        f"{self.name} has cosigned nothing for {origin}, not size {old_size}: "
                        "send old_size 0 with the run_started anchor",
                        current_size=0,
                    )
                if proof:
                    raise WitnessError("the consistency proof must be empty when old_size is 0")
                if anchor is None:
                    raise WitnessError(
                        f"{self.name} does not know origin {origin}: the first request needs "
                        "the run_started entry as anchor"
                    )
                pinned = self._check_anchor(origin, anchor, size, root)
                state = {"format": STATE_FORMAT, "origin": origin, "log_key": log_key.hex(), **pinned}
            else:
                self._extend(state, origin, log_key, old_size, size, root, proof)
            stamp = max(int(self.clock()), state.get("timestamp", 0))
            signature = self._cosign(
                messages.cosignature_message(messages.checkpoint_body(origin, size, cp["root_hash"]), stamp)
            )
            state.update(tree_size=size, root_hash=cp["root_hash"], timestamp=stamp, checkpoint=cp)
            self._store(origin, state)
        return {"witness": self.name, "tree_size": size, "timestamp": stamp, "signature": signature.hex()}

    # -- the checks ------------------------------------------------------------------------

    def _extend(
        self, state: dict, origin: str, log_key: bytes, old_size: int, size: int, root: bytes, proof: list[bytes]
    ) -> None:
        have, have_root = state["tree_size"], bytes.fromhex(state["root_hash"])
        if log_key.hex() != state["log_key"]:
            raise WitnessError(
                f"log key {log_key.hex()[:16]}... is not the key {self.name} pinned for {origin} "
                f"({state['log_key'][:16]}...)"
            )
        if size < have:
            raise WitnessError(
                f"tree size {size} is smaller than the head {have} {self.name} cosigned for "
                f"{origin}: a log never shrinks (rollback refused)",
                current_size=have,
            )
        if old_size != have:
            raise WitnessError(
                f"old_size {old_size} is not the size {self.name} last cosigned for {origin}: "
                f"{have}; send a consistency proof from {have}",
                current_size=have,
            )
        if size == have:
            if root != have_root or proof:
                raise WitnessError(
                    f"a different root (or a proof) for tree size {size}, which {self.name} "
                    f"cosigned with root {state['root_hash']}: split view refused",
                    current_size=have,
                )
            return
        if not _safe(rfc9162.verify_consistency, have, size, have_root, root, proof):
            raise WitnessError(
                f"the consistency proof from {have} to {size} does not verify against the head "
                f"{self.name} cosigned for {origin}: the log is not an extension of it"
            )

    def _check_anchor(self, origin: str, anchor: dict, size: int, root: bytes) -> dict[str, Any]:
        entry, proof = anchor["entry"], anchor["proof"]
        try:
            message = messages.entry_message(
                entry["seq"],
                entry["ts"],
                entry["actor"],
                entry["type"],
                messages.canonical(entry["payload"]),
                entry["prev_hash"],
            )
        except Exception as err:  # noqa: BLE001 - a payload with no canonical form, said as one error
            raise WitnessError(f"anchor entry payload has no canonical JSON form ({err})") from None
        if hashlib.sha256(message).hexdigest() != entry["entry_hash"]:
            raise WitnessError("anchor entry_hash does not match its contents")
        if entry["seq"] >= size:
            raise WitnessError(f"anchor seq {entry['seq']} is not under the checkpoint of size {size}")
        leaf = hashlib.sha256(b"\x00" + bytes.fromhex(entry["entry_hash"]) + bytes.fromhex(entry["signature"]))
        if not _safe(rfc9162.verify_inclusion, entry["seq"], size, leaf.digest(), proof, root):
            raise WitnessError(f"anchor entry {entry['seq']} is not included in the checkpoint of size {size}")
        payload = entry["payload"]
        if entry["type"] != "run_started":
            raise WitnessError(f"the anchor must be the run_started entry, not {entry['type']!r}")
        run_id = payload.get("run_id")
        if not isinstance(run_id, str) or _safe(messages.origin_of, run_id) != origin:
            raise WitnessError(f"run_started names run {run_id!r}, whose log is not {origin}")
        consortium = payload.get("consortium")
        if not isinstance(consortium, dict) or not isinstance(consortium.get("cards"), dict):
            raise WitnessError("run_started pins no consortium (consortium.cards): nothing for this witness to check")
        cards, roster = consortium["cards"], consortium.get("roster_sha256")
        try:
            computed = messages.roster_sha256(cards, consortium.get("parties"))
        except Exception as err:  # noqa: BLE001 - as above
            raise WitnessError(f"the pinned cards have no canonical JSON form ({err})") from None
        if roster != computed:
            raise WitnessError(f"roster_sha256 {roster!r} is not the hash of the pinned cards ({computed})")
        own = cards.get(self.name)
        if not isinstance(own, dict):
            raise WitnessError(f"the pinned roster has no card for {self.name}")
        if own.get("public_key") != self.public_key.hex():
            raise WitnessError(
                f"the pinned roster carries another key for {self.name} "
                f"({str(own.get('public_key'))[:16]}...), not its own ({self.public_key.hex()[:16]}...)"
            )
        accepted = self._accepted() if callable(self._accepted) else self._accepted
        if roster not in accepted:
            raise WitnessError(
                f"{self.name} did not accept roster {roster}: the run pins a consortium this site never agreed to"
            )
        return {"run_id": run_id, "roster_sha256": roster, "anchor_seq": entry["seq"]}

    def _cosign(self, message: bytes) -> bytes:
        signature = self._sign(message)
        try:
            self._verifier.verify(signature, message)
        except (InvalidSignature, TypeError, ValueError):
            raise WitnessError(
                f"the signing key of {self.name} does not match its public key; check the site's key store"
            ) from None
        return signature

    # -- state on disk -------------------------------------------------------------------

    def _locked(self, origin: str) -> _Lock:
        return _Lock(self.state_file(origin).with_suffix(".lock"))

    def _load(self, origin: str) -> dict[str, Any] | None:
        file = self.state_file(origin)
        try:
            state = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise WitnessError(
                f"{file}: unreadable witness state ({err}); a witness that lost its state must "
                "not cosign again for this origin: restore it from backup"
            ) from None
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or state.get("origin") != origin:
            raise WitnessError(f"{file}: not a {STATE_FORMAT} state for {origin}; restore it from backup")
        return state

    def _store(self, origin: str, state: dict[str, Any]) -> None:
        """Write the new head atomically: temporary file, fsync, rename, fsync the directory."""
        target = self.state_file(origin)
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".json")
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(state, out, sort_keys=True, indent=1)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
            tmp = None
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as err:
            raise WitnessError(
                f"could not persist the new head of {origin} in {self.directory} ({err}); no cosignature given"
            ) from None
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)


class _Lock:
    """An exclusive ``flock`` on a file: one check-and-persist per origin at a time."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _safe(check: Callable[..., Any], *args: Any) -> Any:
    """A pure check's result, or False if the inputs made it raise."""
    try:
        return check(*args)
    except Exception:  # noqa: BLE001 - the request is refused instead
        return False


def _check_log_signature(cp: dict, log_key: bytes) -> None:
    message = messages.checkpoint_message(cp["tree_size"], cp["root_hash"], cp["ts"], cp["signer"])
    try:
        Ed25519PublicKey.from_public_bytes(log_key).verify(bytes.fromhex(cp["signature"]), message)
    except (InvalidSignature, ValueError):
        raise WitnessError(
            f"the checkpoint of size {cp['tree_size']} is not signed by log key {log_key.hex()[:16]}..."
        ) from None


# -- the request format, checked field by field --------------------------------------------


def _alternatives(request: Mapping, size: int) -> dict[int, list[bytes]]:
    """A request's ``alternatives``: old size -> consistency proof to ``size`` (checked as the main one is)."""
    alts = request.get("alternatives", [])
    if not isinstance(alts, list) or len(alts) > 64:
        raise WitnessError("alternatives must be a list of at most 64 {old_size, proof}")
    out = {}
    for j, alt in enumerate(alts):
        _fields(alt, {"old_size", "proof"}, set(), f"alternatives[{j}]")
        n = _size(alt["old_size"], f"alternatives[{j}].old_size")
        if n > size:
            raise WitnessError(f"alternatives[{j}].old_size {n} is larger than the checkpoint's tree size {size}")
        out[n] = _hashes(alt["proof"], MAX_CONSISTENCY, f"alternatives[{j}].proof")
    return out


def _parse(request: Any) -> tuple[str, dict, bytes, int, list[bytes], dict | None]:
    _fields(request, _REQUEST, {"anchor", "alternatives"}, "request")
    origin = request["origin"]
    if not isinstance(origin, str) or not 0 < len(origin) <= 512 or not origin.isprintable():
        raise WitnessError(f"origin must be a printable string of 1-512 characters, got {origin!r:.80}")
    cp = request["checkpoint"]
    _fields(cp, _CHECKPOINT, set(), "checkpoint")
    size = _size(cp["tree_size"], "checkpoint.tree_size")
    _hex(cp["root_hash"], 64, "checkpoint.root_hash")
    _hex(cp["signature"], 128, "checkpoint.signature")
    _text(cp["signer"], "checkpoint.signer")
    if not isinstance(cp["ts"], str) or not _TS.fullmatch(cp["ts"]):
        raise WitnessError(f"checkpoint.ts must be RFC 3339 UTC with microseconds, got {cp['ts']!r:.80}")
    log_key = bytes.fromhex(_hex(request["log_key"], 64, "log_key"))
    old_size = _size(request["old_size"], "old_size")
    if old_size > size:
        raise WitnessError(f"old_size {old_size} is larger than the checkpoint's tree size {size}")
    proof = _hashes(request["proof"], MAX_CONSISTENCY, "proof")
    anchor = request.get("anchor")
    if anchor is not None:
        _fields(anchor, {"entry", "proof"}, set(), "anchor")
        entry = anchor["entry"]
        _fields(entry, _ENTRY, set(), "anchor.entry")
        _size(entry["seq"], "anchor.entry.seq")
        for name in ("actor", "type", "ts"):
            _text(entry[name], f"anchor.entry.{name}")
        for name, length in (("prev_hash", 64), ("entry_hash", 64), ("signature", 128)):
            _hex(entry[name], length, f"anchor.entry.{name}")
        if not isinstance(entry["payload"], dict):
            raise WitnessError("anchor.entry.payload must be a JSON object")
        anchor = {"entry": dict(entry), "proof": _hashes(anchor["proof"], MAX_INCLUSION, "anchor.proof")}
    return origin, dict(cp), log_key, old_size, proof, anchor


def _fields(value: Any, required: set[str], optional: set[str], what: str) -> None:
    if not isinstance(value, Mapping):
        raise WitnessError(f"{what} must be a JSON object, got {type(value).__name__}")
    keys = set(value)
    if not required <= keys or not keys <= required | optional:
        raise WitnessError(
            f"{what} must have the fields {sorted(required)}"
            + (f" (optional: {sorted(optional)})" if optional else "")
            + f", got {sorted(map(str, keys))}"
        )


def _size(value: Any, what: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_SIZE:
        raise WitnessError(f"{what} must be an integer within 0..2**63-1, got {value!r:.40}")
    return value


def _hex(value: Any, length: int, what: str) -> str:
    if not isinstance(value, str) or not _HEX[length].fullmatch(value):
        raise WitnessError(f"{what} must be {length} lowercase hex digits, got {value!r:.80}")
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 128 or not value.isprintable():
        raise WitnessError(f"{what} must be a printable string of 1-128 characters, got {value!r:.80}")
    return value


def _hashes(value: Any, limit: int, what: str) -> list[bytes]:
    if not isinstance(value, list) or len(value) > limit:
        raise WitnessError(f"{what} must be a list of at most {limit} hashes")
    return [bytes.fromhex(_hex(h, 64, f"{what}[{i}]")) for i, h in enumerate(value)]
