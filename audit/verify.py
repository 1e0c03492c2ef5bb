"""Standalone verifier for pharmafl audit ledgers: ``python -m pharmafl.audit.verify PATH``.

Imports only the standard library and ``cryptography`` (``psycopg`` lazily for a
PostgreSQL URL, ``pyarrow`` lazily to cross-check a bundle's Parquet copy), so it runs
without the rest of pharmafl. PATH is a SQLite file, a run directory holding
``ledger.db``, a ``postgresql://`` URL, or an exported bundle directory.

For every entry, in order, it checks: ``seq`` is 0, 1, 2, ...; ``ts`` is RFC 3339 UTC
(µs, ``Z``) and never decreases; ``prev_hash`` is the previous ``entry_hash``; the payload
is RFC 8785 canonical JSON; ``entry_hash`` = SHA-256(b"pharmafl-ledger-entry-v1\\0" ||
JCS({actor, payload, prev_hash, seq, ts, type})); the actor registered a key earlier
(``actor_key``: entry 0 is the registrar registering itself, later ones are written by the
registrar, each actor once, with a proof of possession); the Ed25519 signature (RFC 8032)
over ``entry_hash`` (in parallel). For every checkpoint: RFC 9162 Merkle root over the
first ``tree_size`` leaves (leaf = ``entry_hash || signature``), signer registered within
that prefix, signature, order. ``--trusted-head`` (a checkpoint received out of band) also
catches truncation and a chain rewritten under new keys; so does ``--trusted-keys``
(a ``keys.json``, or the bundle holding one) for the latter.

Prints ``OK: N entries, M checkpoints, head <Merkle root>`` and exits 0, or
``FAIL: seq S: why`` for the first bad sequence number and exits 1 (a checkpoint names the
last entry it covers); exit 2 when PATH cannot be read at all.
"""

from __future__ import annotations

import argparse, hashlib, itertools, json, math, multiprocessing, os, re, sqlite3, sys  # noqa: E401
from collections.abc import Iterable, Iterator
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

ENTRY, CHECKPOINT, KEY_PROOF = (b"pharmafl-ledger-%s-v1\x00" % k for k in (b"entry", b"checkpoint", b"key"))
GENESIS = "0" * 64
ENTRY_FIELDS = ("actor", "entry_hash", "payload", "prev_hash", "seq", "signature", "ts", "type")
ENTRY_ORDER = ("seq", "ts", "actor", "type", "payload", "prev_hash", "entry_hash", "signature")  # columns
CHECKPOINT_FIELDS = ("root_hash", "signature", "signer", "tree_size", "ts")
BUNDLE_FILES = {"entries.jsonl", "checkpoints.jsonl", "keys.json"}  # + optional entries.parquet
HEX = {64: re.compile(r"[0-9a-f]{64}"), 128: re.compile(r"[0-9a-f]{128}")}
_escape = json.encoder.encode_basestring  # the escapes RFC 8785 §3.2.2.2 prescribes
TS = re.compile(r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\d\.\d{6}Z")


class VerificationError(Exception):
    """The ledger failed a check; ``seq`` is the first bad sequence number (None: not an entry)."""

    def __init__(self, reason: str, seq: int | None = None, *, unreadable: bool = False):
        super().__init__(reason if seq is None else f"seq {seq}: {reason}")
        self.seq, self.reason, self.unreadable = seq, reason, unreadable


def canonical(v) -> str:
    """RFC 8785 (JCS) text of a parsed JSON value; refuses what has no canonical form."""
    t = type(v)
    if t is str:
        return _escape(v)
    if t is dict:  # members in UTF-16 code-unit order (RFC 8785 §3.2.3); for ASCII names, plain order
        names = sorted(v)
        if not "".join(names).isascii():
            names.sort(key=lambda s: s.encode("utf-16-be", "surrogatepass"))
        return "{" + ",".join([_escape(k) + ":" + canonical(v[k]) for k in names]) + "}"
    if t is list:
        return "[" + ",".join([canonical(x) for x in v]) + "]"
    if t is int:
        if abs(v) < 2**53:
            return str(v)
        if abs(v) >= 2**1024 or canonical(float(v)) != str(v):  # digits must be the double's own
            raise ValueError(f"integer {v} is not an IEEE-754 double written canonically")
        return str(v)
    if t is float:
        if not math.isfinite(v):
            raise ValueError(f"{v} is not a JSON number")
        if v == 0:
            return "0"
        mant, _, exp = repr(abs(v)).partition("e")  # shortest round-trip digits, as ECMAScript
        whole, _, frac = mant.partition(".")
        digits = whole + ("" if frac == "0" else frac)
        n, stripped = len(whole) + int(exp or 0), digits.lstrip("0")
        n, digits = n - (len(digits) - len(stripped)), stripped.rstrip("0")
        k, sign = len(digits), "-" if v < 0 else ""
        if k <= n <= 21:
            return sign + digits + "0" * (n - k)
        if 0 < n <= 21:
            return sign + digits[:n] + "." + digits[n:]
        if -6 < n <= 0:
            return sign + "0." + "0" * -n + digits
        return f"{sign}{digits[0]}{'.' + digits[1:] if k > 1 else ''}e{'+' if n > 1 else '-'}{abs(n - 1)}"
    if v is None or t is bool:
        return "null" if v is None else "true" if v else "false"
    raise ValueError(f"{t.__name__} is not a JSON value")


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def verify_inclusion(index: int, size: int, leaf: bytes, proof: list[bytes], root: bytes) -> bool:
    """RFC 9162 §2.1.3.2: is ``leaf`` (a leaf hash) at ``index`` in the tree of ``size`` with ``root``?"""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = _node(p, r)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = _node(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


def verify_consistency(old: int, new: int, old_root: bytes, new_root: bytes, proof: list[bytes]) -> bool:
    """RFC 9162 §2.1.4.2: is the tree of size ``old`` a prefix of the tree of size ``new``?"""
    if not 0 <= old <= new:
        return False
    if old == new or old == 0:
        return not proof and (old == 0 or old_root == new_root)
    path = [old_root, *proof] if old & (old - 1) == 0 else list(proof)
    if not path:
        return False
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = _node(c, fr), _node(c, sr)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = _node(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == old_root and sr == new_root


def _sig_ok(raw_key: bytes, sig: bytes, msg: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(raw_key).verify(sig, msg)
        return True
    except (InvalidSignature, ValueError):
        return False


def _first_bad_signature(chunk: list[tuple[int, bytes, bytes, bytes]]) -> int | None:
    keys: dict[bytes, Ed25519PublicKey] = {}
    for seq, raw, sig, msg in chunk:
        key = keys.get(raw) or keys.setdefault(raw, Ed25519PublicKey.from_public_bytes(raw))
        try:
            key.verify(sig, msg)
        except InvalidSignature:
            return seq
    return None


def _hex(value, length: int) -> bool:
    return isinstance(value, str) and len(value) == length and HEX[length].fullmatch(value) is not None


def _record(obj, fields: tuple, where: str, seq: int | None = None) -> dict:
    if not isinstance(obj, dict) or tuple(sorted(obj)) != fields:
        raise VerificationError(f"{where}: expected exactly the fields {', '.join(fields)}", seq)
    return obj


def _jsonl(path: Path, fields: tuple, entries: bool) -> Iterator[dict | tuple]:
    """Records of a bundle's JSONL file; each line must be exactly its canonical form."""
    with open(path, "rb") as lines:
        for i, line in enumerate(lines):
            seq = i if entries else None
            try:
                if not line.endswith(b"\n"):
                    raise ValueError("missing final newline")
                record = _record(json.loads(line), fields, f"{path.name} line {i + 1}", seq)
                if entries:  # the canonical line rebuilt from the fields (cheaper than re-encoding it all)
                    record = tuple(canonical(record[k]) if k == "payload" else record[k] for k in ENTRY_ORDER)
                if (_line(record) if entries else canonical(record)).encode() != line[:-1]:
                    raise ValueError("not RFC 8785 canonical JSON")
            except ValueError as err:
                raise VerificationError(f"{path.name} line {i + 1}: {err}", seq) from None
            yield record


def _line(row: tuple) -> str:
    """The canonical JSONL line of an entry given as (seq, ts, actor, type, payload text, prev, hash, sig)."""
    seq, ts, actor, type_, payload, prev, entry_hash, sig = (x if i == 4 else canonical(x) for i, x in enumerate(row))
    return (f'{{"actor":{actor},"entry_hash":{entry_hash},"payload":{payload},"prev_hash":{prev},"seq":{seq},'
            f'"signature":{sig},"ts":{ts},"type":{type_}}}')


def read_bundle(path: Path) -> tuple[Iterator[tuple], list[dict]]:
    return _jsonl(path / "entries.jsonl", ENTRY_FIELDS, True), list(
        _jsonl(path / "checkpoints.jsonl", CHECKPOINT_FIELDS, False))


def read_database(target: str) -> tuple[Iterator[tuple], list[dict]]:
    if target.startswith("postgres"):
        import psycopg  # only for a PostgreSQL URL

        conn = psycopg.connect(re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", target))
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cursor = conn.cursor(name="pharmafl_verify")  # server-side: streams, one snapshot
    else:
        conn = sqlite3.connect(Path(target).resolve().as_uri() + "?mode=ro", uri=True)
        conn.execute("BEGIN")
        cursor = conn.cursor()
    cps = [dict(zip(CHECKPOINT_FIELDS, r)) for r in conn.execute(
        "SELECT root_hash, signature, signer, tree_size, ts FROM ledger_checkpoints ORDER BY tree_size")]

    def rows() -> Iterator[tuple]:
        try:
            cursor.execute("SELECT seq, ts, actor, type, payload, prev_hash, entry_hash, signature "
                           "FROM ledger_entries ORDER BY seq")
            yield from cursor
        finally:
            conn.close()
    return rows(), cps


class _Signatures:
    """Checks signatures in chunks on worker processes while the caller keeps hashing."""

    def __init__(self, jobs: int | None, chunk: int = 4000):
        self.jobs, self.chunk, self.todo, self.pending, self.pool = jobs or os.cpu_count() or 1, chunk, [], [], None

    def add(self, seq: int, raw_key: bytes, sig: bytes, msg: bytes) -> None:
        self.todo.append((seq, raw_key, sig, msg))
        if len(self.todo) >= self.chunk:
            self._submit()

    def _submit(self) -> None:
        if self.jobs > 1 and self.pool is None:
            self.pool = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn").Pool(self.jobs)
        if self.pool is None:
            self.pending.append(_first_bad_signature(self.todo))
        else:
            self.pending.append(self.pool.apply_async(_first_bad_signature, (self.todo,)))
        self.todo = []

    def first_bad(self) -> int | None:
        if self.todo:
            if self.pool is None:
                self.jobs = 1  # one chunk: not worth starting workers
            self._submit()
        try:
            bad = [r if isinstance(r, int) or r is None else r.get() for r in self.pending]
        finally:
            if self.pool is not None:
                self.pool.terminate()
        return next((s for s in bad if s is not None), None)


def verify(entries: Iterable[tuple], checkpoints: list[dict], *, trusted_head: dict | None = None,
           trusted_keys: dict | None = None, jobs: int | None = None) -> tuple[int, int, str, dict]:
    """Check everything; return ``(entries, checkpoints, root hex, registered keys)`` or raise."""
    failures: list[VerificationError] = []
    keys: dict[str, tuple[bytes, int]] = {}  # actor -> (raw public key, registration seq)
    want = {c.get("tree_size") for c in checkpoints + [trusted_head] if isinstance(c, dict)
            and type(c.get("tree_size")) is int}
    roots: dict[int, tuple[bytes, str]] = {}  # tree size -> (root, ts of its last entry)
    stack: list[tuple[int, bytes]] = []  # perfect subtrees covering the leaves so far
    sigs = _Signatures(jobs)
    prev, last_ts, registrar, n = GENESIS, "", None, 0
    try:
        for i, (seq, ts, actor, type_, payload, prev_hash, entry_hash, sig) in enumerate(entries):
            if type(seq) is not int or seq != i:
                raise VerificationError(f"found sequence number {seq!r} where {i} belongs: an entry was "
                                        "deleted, inserted or moved", i)
            if not (isinstance(ts, str) and TS.fullmatch(ts) and isinstance(actor, str) and isinstance(type_, str)
                    and _hex(prev_hash, 64) and _hex(entry_hash, 64) and _hex(sig, 128)):
                raise VerificationError("malformed field (ts: RFC 3339 UTC with µs and Z; hashes: lowercase hex)", i)
            if ts < last_ts:
                raise VerificationError(f"timestamp {ts} is earlier than the previous entry's {last_ts}", i)
            if prev_hash != prev:
                raise VerificationError("prev_hash is not the previous entry's entry_hash: the chain breaks here", i)
            try:
                data = json.loads(payload)
                ok = isinstance(data, dict) and canonical(data) == payload
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise VerificationError("payload is not an RFC 8785 canonical JSON object", i)
            body = (f'{{"actor":{canonical(actor)},"payload":{payload},"prev_hash":"{prev_hash}","seq":{seq},'
                    f'"ts":"{ts}","type":{canonical(type_)}}}')
            if hashlib.sha256(ENTRY + body.encode()).hexdigest() != entry_hash:
                raise VerificationError("entry_hash does not match the entry's contents: the entry was altered", i)
            if type_ == "actor_key":
                registrar = actor if i == 0 else registrar
                _check_registration(i, actor, data, registrar, keys, trusted_keys)
            elif i == 0:
                raise VerificationError("entry 0 must be the registrar's own actor_key entry", i)
            if actor not in keys:
                raise VerificationError(f"actor {actor!r} has no actor_key entry before this one", i)
            leaf = bytes.fromhex(entry_hash + sig)
            sigs.add(i, keys[actor][0], leaf[32:], leaf[:32])
            stack.append((1, hashlib.sha256(b"\x00" + leaf).digest()))
            while len(stack) > 1 and stack[-1][0] == stack[-2][0]:
                (w, right), (_, left) = stack.pop(), stack.pop()
                stack.append((2 * w, _node(left, right)))
            if i + 1 in want:
                roots[i + 1] = (_fold(stack), ts)
            prev, last_ts, n = entry_hash, ts, i + 1
    except VerificationError as err:
        failures.append(err)
    bad_sig = sigs.first_bad()
    if bad_sig is not None:
        failures.append(VerificationError("signature does not verify under the actor's registered key", bad_sig))
    stop = min([f.seq for f in failures] + [n])
    previous: tuple[int, str] | None = (0, "")
    for j, cp in enumerate(checkpoints + ([trusted_head] if trusted_head else [])):
        trusted = j == len(checkpoints)
        name = "trusted head" if trusted else f"checkpoint {j}"
        try:
            _check_checkpoint(cp, name, stop, n, keys, roots, None if trusted else previous)
        except VerificationError as err:
            failures.append(err)
            break
        previous = (cp["tree_size"], cp["ts"])
    if failures:
        raise min(failures, key=lambda f: f.seq)
    return n, len(checkpoints), _fold(stack).hex(), {a: (k.hex(), s) for a, (k, s) in keys.items()}


def _check_registration(i: int, actor: str, data: dict, registrar: str | None, keys: dict,
                        trusted_keys: dict | None) -> None:
    who, pk = data.get("actor"), data.get("public_key")
    if sorted(data) != ["actor", "algorithm", "fingerprint", "proof", "public_key"] or \
            data["algorithm"] != "Ed25519" or not _hex(pk, 64) or not _hex(data["proof"], 128):
        raise VerificationError("malformed actor_key payload", i)
    if who in keys:
        raise VerificationError(f"{who!r} is registered again (first at seq {keys[who][1]}): a re-keyed actor", i)
    if actor != registrar or (i == 0 and who != actor):
        raise VerificationError(f"actor_key for {who!r} written by {actor!r}; only the registrar "
                                f"{registrar!r} may register actors", i)
    proof_msg = KEY_PROOF + f'{{"actor":{canonical(who)},"public_key":"{pk}"}}'.encode()
    if data["fingerprint"] != hashlib.sha256(bytes.fromhex(pk)).hexdigest() or \
            not _sig_ok(bytes.fromhex(pk), bytes.fromhex(data["proof"]), proof_msg):
        raise VerificationError(f"actor_key for {who!r}: wrong fingerprint or proof of possession", i)
    if trusted_keys is not None and (trusted_keys.get(who) or {}).get("public_key") != pk:
        raise VerificationError(f"the key registered for {who!r} is not the one in the trusted key bundle", i)
    keys[who] = (bytes.fromhex(pk), i)


def _fold(stack: list[tuple[int, bytes]]) -> bytes:
    root = stack[-1][1] if stack else hashlib.sha256(b"").digest()
    for _, h in reversed(stack[:-1]):
        root = _node(h, root)
    return root


def _check_checkpoint(cp, name: str, stop: int, n: int, keys: dict, roots: dict,
                      previous: tuple[int, str] | None) -> None:
    size = cp.get("tree_size") if isinstance(cp, dict) else None
    last = size - 1 if type(size) is int and size > 0 else 0
    _record(cp, CHECKPOINT_FIELDS, name, last)
    if not (type(size) is int and size > 0 and isinstance(cp["ts"], str) and TS.fullmatch(cp["ts"])
            and isinstance(cp["signer"], str) and _hex(cp["root_hash"], 64) and _hex(cp["signature"], 128)):
        raise VerificationError(f"{name}: malformed field", last)
    name = f"{name} (tree size {size})"
    if size > n:
        raise VerificationError(f"{name} covers entries up to seq {size - 1} but the ledger ends at "
                                f"{n} entries: entries {n}..{size - 1} are missing (truncated)", n)
    if size > stop:
        return  # an earlier failure already lies inside this prefix
    signer = cp["signer"]
    if signer not in keys or keys[signer][1] >= size:
        raise VerificationError(f"{name}: signer {signer!r} is not registered within the entries it covers", last)
    msg = CHECKPOINT + (f'{{"root_hash":"{cp["root_hash"]}","signer":{canonical(signer)},'
                        f'"tree_size":{size},"ts":"{cp["ts"]}"}}').encode()
    if not _sig_ok(keys[signer][0], bytes.fromhex(cp["signature"]), msg):
        if previous is None:  # a head we trust, signed by another key: the registration is the lie
            raise VerificationError(f"{name} does not verify under the key registered for {signer!r} here: "
                                    "signed by a different key (the chain was rewritten under new keys) or "
                                    "the trusted head is not genuine", keys[signer][1])
        raise VerificationError(f"{name}: signature does not verify under {signer!r}'s registered key", last)
    if previous and (size <= previous[0] or cp["ts"] < previous[1]):
        raise VerificationError(f"{name}: out of order (tree size and time must both increase)", last)
    root, last_ts = roots[size]
    if cp["ts"] < last_ts:
        raise VerificationError(f"{name}: signed at {cp['ts']}, before the last entry it covers ({last_ts})", last)
    if root.hex() != cp["root_hash"]:
        raise VerificationError(f"{name}: root {cp['root_hash'][:16]}... disagrees with the Merkle root of "
                                f"entries 0..{size - 1} ({root.hex()[:16]}...)", last)


def check_bundle(path: Path, n: int, m: int, root: str, keys: dict) -> None:
    """The bundle's packaging: the manifest's hashes, keys.json, and the Parquet copy."""
    try:
        raw = (path / "manifest.json").read_bytes()
        manifest = _record(json.loads(raw), ("checkpoints", "entries", "files", "format", "root_hash"), "manifest")
        if raw != canonical(manifest).encode() + b"\n" or manifest["format"] != "pharmafl-ledger-bundle-v1":
            raise ValueError("not a canonical pharmafl-ledger-bundle-v1 manifest")
    except ValueError as err:
        raise VerificationError(f"manifest.json: {err}") from None
    if (manifest["entries"], manifest["checkpoints"], manifest["root_hash"]) != (n, m, root):
        raise VerificationError("manifest.json: entry count, checkpoint count or root_hash disagree with the files")
    files, present = manifest["files"], {p.name for p in path.iterdir()} - {"manifest.json"}
    if not isinstance(files, dict) or set(files) != present or not BUNDLE_FILES <= present <= BUNDLE_FILES | {
            "entries.parquet"}:
        raise VerificationError(f"manifest.json lists {sorted(files)} but the bundle holds {sorted(present)}")
    for name, digest in sorted(files.items()):
        if hashlib.sha256((path / name).read_bytes()).hexdigest() != digest:
            raise VerificationError(f"{name}: SHA-256 differs from the one in manifest.json")
    bundle_keys = {"format": "pharmafl-ledger-keys-v1", "keys": {a: {
        "algorithm": "Ed25519", "fingerprint": hashlib.sha256(bytes.fromhex(k)).hexdigest(), "public_key": k,
        "registered_seq": s} for a, (k, s) in keys.items()}}
    if (path / "keys.json").read_bytes() != canonical(bundle_keys).encode() + b"\n":
        raise VerificationError("keys.json differs from the keys registered in the entries")
    if "entries.parquet" in files:
        try:
            import pyarrow.parquet as pq  # only to cross-check the Parquet copy
        except ImportError:
            print("note: pyarrow is not installed; entries.parquet checked by its SHA-256 only", file=sys.stderr)
            return
        table = pq.ParquetFile(path / "entries.parquet")
        if tuple(table.schema_arrow.names) != ENTRY_ORDER:
            raise VerificationError(f"entries.parquet: columns must be {', '.join(ENTRY_ORDER)}")
        rows = (tuple(r.values()) for b in table.iter_batches() for r in b.to_pylist())
        with open(path / "entries.jsonl", "rb") as jsonl:  # already verified: compare the canonical lines
            for i, (row, line) in enumerate(itertools.zip_longest(rows, jsonl)):
                if row is None or line is None or _line(row).encode() != line[:-1]:
                    raise VerificationError("entries.parquet differs from entries.jsonl", i)


def _load_json(path: str, what: str) -> dict:
    p = Path(path)
    p = p / "keys.json" if p.is_dir() else p
    try:
        obj = json.loads(p.read_bytes())
    except (OSError, ValueError) as err:
        raise VerificationError(f"cannot read the {what} {p}: {err}", unreadable=True) from None
    if what == "trusted keys":
        if not isinstance(obj, dict) or obj.get("format") != "pharmafl-ledger-keys-v1" or not isinstance(
                obj.get("keys"), dict) or not all(isinstance(v, dict) for v in obj["keys"].values()):
            raise VerificationError(f"{p} is not a pharmafl-ledger-keys-v1 key bundle (an export's keys.json)",
                                    unreadable=True)
        return obj["keys"]
    return obj


def verify_path(path: str, *, trusted_head: str | None = None, trusted_keys: str | None = None,
                jobs: int | None = None) -> str:
    """Verify the ledger at ``path``; return the ``OK: ...`` line or raise :class:`VerificationError`."""
    head = _load_json(trusted_head, "trusted head") if trusted_head else None
    tkeys = _load_json(trusted_keys, "trusted keys") if trusted_keys else None
    p = Path(path)
    bundle = (p / "manifest.json").is_file()
    if not (path.startswith("postgres") or bundle or p.is_file() or (p / "ledger.db").is_file()):
        raise VerificationError(f"{path}: not a SQLite file, a run directory with ledger.db, a bundle with "
                                "manifest.json, or a postgresql:// URL", unreadable=True)
    missing = sorted(BUNDLE_FILES - {f.name for f in p.iterdir()}) if bundle else []
    if missing:
        raise VerificationError(f"bundle {path} lacks {', '.join(missing)}: it is incomplete; export it again")
    entries = None
    try:
        if bundle:
            entries, cps = read_bundle(p)
        else:
            entries, cps = read_database(str(p / "ledger.db") if p.is_dir() else path)
        n, m, root, keys = verify(entries, cps, trusted_head=head, trusted_keys=tkeys, jobs=jobs)
    except (OSError, sqlite3.Error, UnicodeDecodeError) as err:
        raise VerificationError(f"cannot read a ledger from {path}: {err}", unreadable=True) from None
    except Exception as err:
        if type(err).__module__.startswith("psycopg"):  # without importing psycopg for other paths
            raise VerificationError(f"cannot read a ledger from the PostgreSQL URL: {err}", unreadable=True) from None
        raise
    finally:
        if entries is not None:
            entries.close()  # stop reading at the first failure: release the file or connection
    if bundle:
        check_bundle(p, n, m, root, keys)
    return f"OK: {n} entries, {m} checkpoints, head {root}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pharmafl.audit.verify", description=__doc__.split("\n")[0])
    parser.add_argument("path", help="SQLite file, run directory, postgresql:// URL, or exported bundle directory")
    parser.add_argument("--trusted-head", help="a checkpoint JSON received out of band (catches truncation)")
    parser.add_argument("--trusted-keys", help="keys.json (or a bundle) received out of band (catches re-keying)")
    parser.add_argument("--jobs", type=int, help="processes for signature checks (default: all cores)")
    args = parser.parse_args(argv)
    try:
        print(verify_path(args.path, trusted_head=args.trusted_head, trusted_keys=args.trusted_keys, jobs=args.jobs))
        return 0
    except VerificationError as err:
        print(f"{'ERROR' if err.unreadable else 'FAIL'}: {err}")
        return 2 if err.unreadable else 1


if __name__ == "__main__":
    sys.exit(main())
