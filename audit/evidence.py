"""Standalone verifier for pharmafl evidence packages: ``python -m pharmafl.audit.evidence PKG``.

Imports the standard library, ``cryptography`` and :mod:`pharmafl.audit.verify` (itself
stdlib + ``cryptography``), nothing else from pharmafl, so a regulator runs it offline on
another machine. Checks, in order (the first failure is reported):

1. ``MANIFEST.json`` is canonical JSON of format ``pharmafl-evidence-v1``; the package holds
   exactly the files it lists, each with the listed SHA-256.
2. ``ledger/`` verifies as a ledger bundle (every hash, link, signature and checkpoint;
   with ``--trusted-head`` also truncation and re-keying), and is the ledger the manifest names.
   Every other file is ``README.txt``, ``signatures.json``, ``head.json`` (one of the
   ledger's checkpoints) or inside a listed report.
3. Users and roles are replayed from the ledger (:class:`Accounts`):

   * a ``user:*`` key counts only as an **enrolment by its owner**: the user's own
     ``actor_key`` entry whose ``enrolment`` answers the commitment of the admin-signed
     ``user_created`` of that account (SHA-256 of the code key; HMAC-SHA256 under the code
     key over ``b"pharmafl-user-enrolment-v1\0" || JCS({actor, public_key, user_created})``),
     or the first admin's ``{"method": "bootstrap"}`` self-enrolment before any account
     exists (trust on first use). A key registered any other way, or before its account,
     fails the package;
   * only active admins create users, change roles, unlock, disable and change the policy;
     nobody changes their own role and no admin is given a signing role; printed names are
     unique; ``user_locked`` (by ``access-control``) holds until an admin's ``user_unlocked``;
   * every ``e_signature``, ``report_generated`` and ``evidence_exported`` is by an account
     that at that point is active (not locked, not disabled) and whose role allows it, under
     the account's printed name; ``report_rendered`` comes right after its writer's
     ``e_signature`` on the same record; no ``user:*`` actor acts without an account.
4. Each report: ``report.json`` hashes to the manifest's record hash, which a
   ``report_generated`` entry of the manifest's run recorded; every other file is one the
   ledger recorded for that record (``report_generated`` / ``report_rendered``); each PDF/HTML
   copy is a rendering that shows every e-signature the ledger holds on the record (21 CFR 11.50).
   The explorer's static pages (``explorer/``, if present) are exactly the files, with the SHA-256,
   that one ``explorer_rendered`` entry recorded, by an account allowed to export.
5. Each e-signature in ``signatures.json`` is exactly the ``e_signature`` entry at its seq,
   by its signer; its Ed25519 signature over ``b"pharmafl-e-signature-v1\0" || JCS(fields)``
   verifies under the signer's enrolled key; its ``record_hash`` is the hash of the report
   it is listed with (a signature copied onto another record fails here: 11.70). Every
   ledger signature on a packaged report is listed.

Prints ``OK: ...`` and exits 0, ``FAIL: why`` and exits 1, ``ERROR: ...`` and exits 2; with
``--json`` the :class:`PackageResult` (or ``{"ok": false, "seq", "reason", "unreadable"}``) as one
JSON object, same exit codes.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import sys
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from pharmafl.audit.verify import Result, VerificationError, canonical, verify_path

SIGNATURE_DOMAIN = b"pharmafl-e-signature-v1\x00"
SIGNED_FIELDS = ("meaning", "printed_name", "record", "record_hash", "role", "signed_at", "signer")
ROLES = {"data_scientist", "qa", "regulator", "admin"}  # compliance/roles.py
MAY_SIGN = {"authored": {"data_scientist", "qa"}, "reviewed": {"qa"}, "approved": {"qa"}}  # compliance/roles.py
SIGNING = set().union(*MAY_SIGN.values())
MAY_GENERATE = {"data_scientist", "qa"}  # compliance/roles.py: generate_report
MAY_EXPORT = {"qa", "regulator"}  # compliance/roles.py: export_evidence
USER, ACCESS_CONTROL = "user:", "access-control"
ENROLMENT_DOMAIN = b"pharmafl-user-enrolment-v1\x00"
ENROLMENT_METHOD = "temporary-password"
COMMITMENT_FORMAT = "pharmafl-enrolment-commitment-v1"
MIN_KDF_N, TEST_KDF_N = 2**17, 2**14  # compliance/credentials.py: production floor, PasswordPolicy.for_tests()
TEST_KDF_NOTE = "; NOTE: test-only KDF cost (PasswordPolicy.for_tests): not a production record"
COPIES = ("report.pdf", "report.html")
PACKAGE_FILES = ("README.txt", "head.json", "signatures.json")  # besides ledger/ and the listed reports
EXPLORER = "explorer/"  # the explorer's static pages, vouched for by an explorer_rendered entry


@dataclass(frozen=True)
class PackageResult:
    """A verified evidence package: ``line()`` is the ``OK: ...`` line, ``as_dict()`` the same for JSON."""

    run_id: str
    files: int
    reports: int
    signatures: int  # e-signatures on the packaged reports
    ledger: Result
    test_kdf: bool = False  # a user's credentials used the test-only KDF cost: not a production record

    def line(self) -> str:
        return (
            f"OK: evidence package of run {self.run_id}: {self.files} files, {self.reports} report(s), "
            f"{self.signatures} e-signature(s); ledger {self.ledger.line()[4:]}"
            + (TEST_KDF_NOTE if self.test_kdf else "")
        )

    def as_dict(self) -> dict:
        return {
            "ok": True,
            "run_id": self.run_id,
            "files": self.files,
            "reports": self.reports,
            "signatures": self.signatures,
            "ledger": self.ledger.as_dict(),
            "test_kdf": self.test_kdf,
        }


def _fail(why: str) -> VerificationError:
    return VerificationError(why)


def _canonical_file(path: Path, fmt: str, fields: tuple) -> dict:
    try:
        raw = path.read_bytes()
        obj = json.loads(raw)
    except (OSError, ValueError) as err:
        raise _fail(f"{path.name}: unreadable ({err})") from None
    if (
        not isinstance(obj, dict)
        or tuple(sorted(obj)) != fields
        or obj.get("format") != fmt
        or raw != canonical(obj).encode() + b"\n"
    ):
        raise _fail(f"{path.name}: not a canonical {fmt} document with the fields {', '.join(fields)}")
    return obj


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_files(root: Path) -> dict:
    manifest = _canonical_file(
        root / "MANIFEST.json", "pharmafl-evidence-v1", ("files", "format", "ledger", "reports", "run_id")
    )
    present = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {"MANIFEST.json"}
    if not all(
        isinstance(manifest[k], dict) and all(isinstance(n, str) and isinstance(h, str) for n, h in manifest[k].items())
        for k in ("files", "reports")
    ):
        raise _fail("MANIFEST.json: files and reports must each map names to SHA-256 hex digests")
    listed = set(manifest["files"])
    if present != listed:
        extra, missing = sorted(present - listed), sorted(listed - present)
        raise _fail(f"the package holds files the manifest does not list {extra} or lacks listed ones {missing}")
    for name, digest in sorted(manifest["files"].items()):
        if _sha256(root / name) != digest:
            raise _fail(f"{name}: SHA-256 differs from MANIFEST.json: the file was altered")
    return manifest


def check_coverage(root: Path, manifest: dict) -> None:
    """Every file is one a later check covers; ``head.json`` is one of the ledger's checkpoints."""
    prefixes = (*(name + "/" for name in manifest["reports"]), EXPLORER)
    loose = sorted(f for f in manifest["files"] if f not in PACKAGE_FILES and not f.startswith(("ledger/", *prefixes)))
    if loose:
        raise _fail(
            f"the package holds files outside the ledger export and the listed reports {loose}: nothing "
            "vouches for them (foreign or forged)"
        )
    if "head.json" in manifest["files"]:
        head = (root / "head.json").read_bytes()
        if head not in (root / "ledger" / "checkpoints.jsonl").read_bytes().splitlines(keepends=True):
            raise _fail("head.json is not one of the package ledger's signed checkpoints")


def enrolment_message(actor: str, public_key: str, user_created: int) -> bytes:
    """What an enrolment MAC covers: the account, the key it enrols, the user_created it answers."""
    return (
        ENROLMENT_DOMAIN + canonical({"actor": actor, "public_key": public_key, "user_created": user_created}).encode()
    )


def enrolment_mac(code_key: bytes, actor: str, public_key: str, user_created: int) -> str:
    """HMAC-SHA256 under the code key (the one copy; :mod:`pharmafl.compliance.enrolment` imports it)."""
    return hmac.new(code_key, enrolment_message(actor, public_key, user_created), hashlib.sha256).hexdigest()


def display_key(name: object) -> str:
    """A printed name as compared for uniqueness: NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", str(name)).casefold().split())


def _hexstr(value: object, length: int) -> bool:
    return isinstance(value, str) and len(value) == length and all(c in "0123456789abcdef" for c in value)


class Accounts:
    """Users and roles replayed from a (verified) ledger's entries, with what a package needs.

    ``entries`` yields ``(seq, ts, actor, type, payload JSON text, ...)``. Raises
    :class:`VerificationError` at the first entry that breaks a rule of the module docstring
    (step 3). The writer (:mod:`pharmafl.compliance`) runs the same replay before it reports,
    signs or exports.
    """

    def __init__(self, entries: Iterable[tuple]):
        self.keys: dict[str, str] = {}  # actor -> registered public key
        self.users: dict[str, dict] = {}  # actor -> {role, name, status}
        self.names: set[str] = set()  # display_key of every printed name
        self.created: dict[str, tuple[int, dict]] = {}  # actor -> (user_created seq, commitment)
        self.bootstrap: set[str] = set()  # self-enrolled before any account existed
        self.policy: dict = {}
        self.test_kdf = False  # a commitment used the test-only KDF cost of a test-only policy
        self.renderings: dict[str, list[dict]] = {}  # record hash -> [{files, signatures}]
        self.generated: dict[str, dict] = {}
        self.signatures: dict[int, tuple[str, dict]] = {}  # seq -> (actor, payload)
        self.explorer: list[dict] = []  # each explorer_rendered entry's {page: SHA-256}
        previous: tuple = (None, None, None, {})  # (seq, actor, type, payload) of the entry before
        for seq, _ts, actor, type_, payload, *_ in entries:
            data = json.loads(payload)
            self._apply(seq, actor, type_, data, previous)
            previous = (seq, actor, type_, data)

    # -- who is who -----------------------------------------------------------------------

    def _user(self, seq: int, actor: str, d: dict) -> tuple[str, dict]:
        target = USER + str(d.get("user_id"))
        if target not in self.users:
            raise VerificationError(f"{target!r} has no account (no user_created before this entry)", seq)
        return target, self.users[target]

    def _admin(self, seq: int, actor: str, type_: str) -> None:
        user = self.users.get(actor)
        if user is None or user["role"] != "admin" or user["status"] != "active":
            state = "no account" if user is None else f"role {user['role']!r}, {user['status']}"
            raise VerificationError(f"{type_} by {actor!r} ({state}), who is not an active admin", seq)

    def _may(self, seq: int, actor: str, roles: set, what: str) -> dict:
        user = self.users.get(actor)
        if user is None or user["status"] != "active" or user["role"] not in roles:
            state = "no account" if user is None else f"role {user['role']!r}, {user['status']}"
            hint = " (until an admin's user_unlocked)" if user and user["status"] == "locked" else ""
            raise VerificationError(f"{what} by {actor!r} ({state} at seq {seq}{hint}), who may not", seq)
        return user

    # -- the replay ------------------------------------------------------------------------

    def _apply(self, seq: int, actor: str, type_: str, d: dict, previous: tuple) -> None:
        if (
            actor.startswith(USER)
            and actor not in self.users
            and type_ != "actor_key"
            and not (type_ == "user_created" and d.get("created_by") == "bootstrap")
        ):
            raise VerificationError(f"{type_} by {actor!r}, which has no account (no user_created before it)", seq)
        handler = _HANDLERS.get(type_)
        if handler is not None:
            handler(self, seq, actor, d, previous)

    def _on_actor_key(self, seq: int, actor: str, d: dict, _previous: tuple) -> None:
        who = d.get("actor")
        self.keys[who] = d.get("public_key")
        if not (isinstance(who, str) and who.startswith(USER)):
            return
        e = d.get("enrolment")
        if actor != who or not isinstance(e, dict):
            raise VerificationError(
                f"the key of {who!r} is registered by {actor!r}, not enrolled by its owner: a "
                "user's key counts only when she enrols it herself",
                seq,
            )
        if e == {"method": "bootstrap"}:
            if self.users or self.created:
                raise VerificationError(
                    f"{who!r} self-enrols as the bootstrap admin after accounts exist: only "
                    "the first admin enrols without an admin's commitment",
                    seq,
                )
            self.bootstrap.add(who)
            return
        if (
            sorted(e) != ["code_key", "mac", "method", "user_created"]
            or e["method"] != ENROLMENT_METHOD
            or type(e["user_created"]) is not int
            or not _hexstr(e["code_key"], 64)
            or not _hexstr(e["mac"], 64)
        ):
            raise VerificationError(
                f"enrolment of {who!r} is malformed (expected method {ENROLMENT_METHOD!r}, "
                "user_created seq, code_key, mac)",
                seq,
            )
        created = self.created.get(who)
        if created is None or created[0] != e["user_created"]:
            raise VerificationError(
                f"enrolment of {who!r} answers user_created at seq {e['user_created']}, which "
                "is not the entry that created this account",
                seq,
            )
        code_key = bytes.fromhex(e["code_key"])
        if not hmac.compare_digest(hashlib.sha256(code_key).hexdigest(), created[1]["code_key_sha256"]):
            raise VerificationError(
                f"enrolment of {who!r}: the code key does not open the commitment of its "
                f"user_created (seq {created[0]}): not made with the temporary password",
                seq,
            )
        if not hmac.compare_digest(enrolment_mac(code_key, who, str(d.get("public_key")), created[0]), e["mac"]):
            raise VerificationError(f"enrolment of {who!r}: the MAC does not bind this key to the account", seq)

    def _commitment(self, seq: int, target: str, c: object) -> dict:
        kdf = c.get("kdf") if isinstance(c, dict) else None
        if (
            not isinstance(kdf, dict)
            or sorted(c) != ["code_key_sha256", "format", "kdf"]
            or c["format"] != COMMITMENT_FORMAT
            or not _hexstr(c["code_key_sha256"], 64)
            or sorted(kdf) != ["n", "name", "p", "r", "salt"]
            or kdf["name"] != "scrypt"
            or not all(type(kdf[k]) is int and kdf[k] > 0 for k in "npr")
            or kdf["n"] & (kdf["n"] - 1)
            or kdf["r"] < 8
            or not _hexstr(kdf["salt"], 32)
        ):
            raise VerificationError(f"user_created for {target!r}: malformed enrolment commitment", seq)
        if kdf["n"] < MIN_KDF_N:
            if not (self.policy.get("test_only_kdf") is True and kdf["n"] >= TEST_KDF_N):
                raise VerificationError(
                    f"user_created for {target!r}: the enrolment commitment's scrypt cost n={kdf['n']} is below 2**17",
                    seq,
                )
            self.test_kdf = True
        return c

    def _on_user_created(self, seq: int, actor: str, d: dict, _previous: tuple) -> None:
        target = USER + str(d.get("user_id"))
        bootstrap = d.get("created_by") == "bootstrap"
        if bootstrap:
            ok = not self.users and actor == target and d.get("role") == "admin" and target in self.bootstrap
        else:
            self._admin(seq, actor, "user_created")
            ok = d.get("role") in ROLES
        if not ok or target in self.users:
            raise VerificationError(f"user_created for {target!r} by {actor!r}, who may not create it", seq)
        if display_key(d.get("full_name")) in self.names:
            raise VerificationError(
                f"user_created for {target!r}: printed name {d.get('full_name')!r} is "
                "already another account's (names are unique)",
                seq,
            )
        if bootstrap:
            self.policy = d.get("policy") if isinstance(d.get("policy"), dict) else {}
        else:
            if target in self.keys:
                raise VerificationError(
                    f"user_created for {target!r}: a key was registered for it before the account existed", seq
                )
            self.created[target] = (seq, self._commitment(seq, target, d.get("enrolment")))
        self.names.add(display_key(d.get("full_name")))
        self.users[target] = {"role": d.get("role"), "name": d.get("full_name"), "status": "active"}

    def _on_user_role_changed(self, seq: int, actor: str, d: dict, _previous: tuple) -> None:
        self._admin(seq, actor, "user_role_changed")
        target, user = self._user(seq, actor, d)
        if target == actor or d.get("role") not in ROLES or (user["role"] == "admin" and d.get("role") in SIGNING):
            raise VerificationError(
                f"user_role_changed of {target!r} ({user['role']} -> {d.get('role')!r}) by "
                f"{actor!r}: no one changes their own role, and no admin is given a signing "
                "role",
                seq,
            )
        user["role"] = d["role"]

    def _on_user_disabled(self, seq: int, actor: str, d: dict, _previous: tuple) -> None:
        self._admin(seq, actor, "user_disabled")
        self._user(seq, actor, d)[1]["status"] = "disabled"

    def _on_user_locked(self, seq: int, actor: str, d: dict, _previous: tuple) -> None:
        if actor != ACCESS_CONTROL:
            raise VerificationError(f"user_locked by {actor!r}; only {ACCESS_CONTROL!r} locks accounts", seq)
        user = self._user(seq, actor, d)[1]
        if user["status"] == "active":
            user["status"] = "locked"

    def _on_user_unlocked(self, seq: int, actor: str, d: dict, _previous: tuple) -> None:
        self._admin(seq, actor, "user_unlocked")
        user = self._user(seq, actor, d)[1]
        if user["status"] == "locked":
            user["status"] = "active"

    def _on_policy_changed(self, seq: int, actor: str, d: dict, _previous: tuple) -> None:
        self._admin(seq, actor, "policy_changed")
        self.policy = d.get("policy") if isinstance(d.get("policy"), dict) else {}

    def _on_report_generated(self, seq: int, actor: str, d: dict, _previous: tuple) -> None:
        self._may(seq, actor, MAY_GENERATE, "report_generated")
        self.renderings.setdefault(d.get("record_hash"), []).append(d)
        self.generated[d.get("record_hash")] = d

    def _on_report_rendered(self, seq: int, actor: str, d: dict, previous: tuple) -> None:
        prev_seq, prev_actor, prev_type, prev = previous  # written with, right after, the signer's e_signature
        if (prev_seq, prev_actor, prev_type) != (seq - 1, actor, "e_signature") or prev.get("record_hash") != d.get(
            "record_hash"
        ):
            raise VerificationError(
                f"report_rendered by {actor!r} does not follow that user's e_signature on the same record", seq
            )
        self.renderings.setdefault(d.get("record_hash"), []).append(d)

    def _on_e_signature(self, seq: int, actor: str, d: dict, _previous: tuple) -> None:
        user = self.users.get(actor) or {}
        meaning, role = d.get("meaning"), user.get("role")
        if user.get("status") != "active" or d.get("role") != role or role not in MAY_SIGN.get(meaning, set()):
            hint = "" if user.get("status") == "active" else f", account {user.get('status')}"
            raise VerificationError(f"{actor} (role {role!r} at seq {seq}{hint}) may not sign as {meaning!r}", seq)
        if d.get("signer") != actor or d.get("printed_name") != user["name"]:
            raise VerificationError(
                f"e_signature by {actor}: signer {d.get('signer')!r} / printed name "
                f"{d.get('printed_name')!r} are not the account's ({user['name']!r})",
                seq,
            )
        self.signatures[seq] = (actor, d)

    def _on_evidence_exported(self, seq: int, actor: str, d: dict, _previous: tuple) -> None:
        self._may(seq, actor, MAY_EXPORT, "evidence_exported")

    def _on_explorer_rendered(self, seq: int, actor: str, d: dict, _previous: tuple) -> None:
        self._may(seq, actor, MAY_EXPORT, "explorer_rendered")
        if isinstance(d.get("files"), dict):
            self.explorer.append(d["files"])


_HANDLERS = {name[4:]: f for name, f in vars(Accounts).items() if name.startswith("_on_")}


def _signature_ok(sig: dict, public_key: str) -> bool:
    message = SIGNATURE_DOMAIN + canonical({k: sig[k] for k in SIGNED_FIELDS}).encode()
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key)).verify(bytes.fromhex(sig["signature"]), message)
        return True
    except (InvalidSignature, ValueError):
        return False


def check_report(root: Path, name: str, record_hash: str, manifest: dict, ledger: Accounts) -> None:
    files = manifest["files"]
    if files.get(f"{name}/report.json") != record_hash:
        raise _fail(f"{name}/report.json: its SHA-256 is not the record hash the manifest names")
    generated = ledger.generated.get(record_hash)
    if generated is None:
        raise _fail(f"{name}: record {record_hash[:16]}... has no report_generated entry in the ledger")
    if generated.get("run_id") != manifest["run_id"]:
        raise _fail(
            f"MANIFEST.json names run {manifest['run_id']!r}, but {name} is a report of run {generated.get('run_id')!r}"
        )
    on_record = {d["signature"] for _, d in ledger.signatures.values() if d.get("record_hash") == record_hash}
    prefix = name + "/"
    for path, digest in sorted(files.items()):
        if not path.startswith(prefix):
            continue
        rel = path[len(prefix) :]
        if rel == "report.json":
            continue
        if rel not in COPIES:
            if generated["files"].get(rel) != digest:
                raise _fail(f"{path}: not the file recorded when the report was generated (altered or foreign)")
            continue
        shown = [r for r in ledger.renderings[record_hash] if r.get("files", {}).get(rel) == digest]
        if not shown:
            raise _fail(f"{path}: not a rendering of this report recorded in the ledger (altered or foreign copy)")
        missing = on_record - set(shown[-1].get("signatures", []))
        if missing:
            raise _fail(
                f"{path}: this copy does not show {len(missing)} of the record's e-signatures; "
                "every human-readable copy must show them (21 CFR 11.50): export the re-rendered report"
            )


def check_explorer(manifest: dict, ledger: Accounts) -> None:
    """The package's ``explorer/`` pages are one recorded rendering, file for file (none: nothing to check)."""
    pages = {f[len(EXPLORER) :]: h for f, h in manifest["files"].items() if f.startswith(EXPLORER)}
    if pages and pages not in ledger.explorer:
        recorded = ledger.explorer[-1] if ledger.explorer else {}
        odd = sorted(set(pages.items()) ^ set(recorded.items()))[:3]
        raise _fail(
            f"explorer/: these pages are not the rendering the ledger recorded (explorer_rendered); altered, "
            f"added or removed pages, e.g. {[EXPLORER + name for name, _ in odd]}"
        )


def check_signatures(root: Path, manifest: dict, ledger: Accounts) -> int:
    doc = _canonical_file(root / "signatures.json", "pharmafl-signatures-v1", ("format", "signatures"))
    seen = set()
    for i, item in enumerate(doc["signatures"]):
        where = f"signatures.json item {i}"
        if (
            not isinstance(item, dict)
            or not set(SIGNED_FIELDS) | {"signature", "report", "seq"} <= set(item)
            or not isinstance(item["report"], str)
            or type(item["seq"]) is not int
        ):
            raise _fail(f"{where}: malformed")
        report, seq = item["report"], item["seq"]
        if report not in manifest["reports"]:
            raise _fail(f"{where}: names {report!r}, not a report in this package")
        if item["record_hash"] != manifest["reports"][report]:
            raise _fail(
                f"{where}: the signature by {item['signer']} was made on record {item['record_hash'][:16]}..., "
                f"not on {report} ({manifest['reports'][report][:16]}...): a signature cannot be copied onto "
                "another record (21 CFR 11.70)"
            )
        actor, recorded = ledger.signatures.get(seq, (None, None))
        payload = {k: v for k, v in item.items() if k not in ("report", "seq")}
        if recorded != payload or actor != item["signer"]:
            raise _fail(f"{where}: not the e_signature entry at seq {seq} of the ledger (or signed by another actor)")
        if item["signer"] not in ledger.keys or not _signature_ok(item, ledger.keys[item["signer"]]):
            raise _fail(f"{where}: the e-signature of {item['signer']} does not verify under its enrolled key")
        seen.add(seq)  # who may sign what, as whom, was checked at that entry by the replay
    hashes = set(manifest["reports"].values())
    unlisted = sorted(s for s, (_, d) in ledger.signatures.items() if d.get("record_hash") in hashes and s not in seen)
    if unlisted:
        raise _fail(f"signatures.json omits the e-signatures recorded at seq {unlisted}")
    return len(seen)


def verify_package(
    path: str, *, trusted_head: str | None = None, jobs: int | None = None, on_progress=None
) -> PackageResult:
    """Checks 1-5 above on the package at ``path``; ``on_progress(done, total)`` as ledger entries are read."""
    root = Path(path)
    if not (root / "MANIFEST.json").is_file():
        raise VerificationError(f"{path}: no MANIFEST.json; not a pharmafl evidence package", unreadable=True)
    manifest = check_files(root)
    try:
        ledger_result = verify_path(str(root / "ledger"), trusted_head=trusted_head, jobs=jobs, on_progress=on_progress)
    except VerificationError as err:
        raise VerificationError(f"ledger: {err}", err.seq) from None
    bundle = json.loads((root / "ledger" / "manifest.json").read_text())
    if manifest["ledger"] != {"entries": bundle["entries"], "root_hash": bundle["root_hash"]}:
        raise _fail("MANIFEST.json names another ledger than ledger/ holds")
    check_coverage(root, manifest)
    ledger = replay_bundle(root / "ledger")
    for name, record_hash in sorted(manifest["reports"].items()):
        check_report(root, name, record_hash, manifest, ledger)
    check_explorer(manifest, ledger)
    n = check_signatures(root, manifest, ledger)
    return PackageResult(
        manifest["run_id"], len(manifest["files"]), len(manifest["reports"]), n, ledger_result, ledger.test_kdf
    )


def replay_bundle(bundle: Path) -> Accounts:
    """:class:`Accounts` of a ledger bundle that :func:`verify_path` has verified."""
    with open(bundle / "entries.jsonl", "rb") as lines:
        return Accounts(
            (e["seq"], e["ts"], e["actor"], e["type"], canonical(e["payload"])) for e in map(json.loads, lines)
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pharmafl.audit.evidence", description=__doc__.split("\n")[0])
    parser.add_argument("path", help="the evidence package directory")
    parser.add_argument("--trusted-head", help="a checkpoint JSON received out of band (catches truncation)")
    parser.add_argument("--jobs", type=int, help="processes for signature checks (default: all cores)")
    parser.add_argument("--json", action="store_true", help="print the result (or the failure) as one JSON object")
    args = parser.parse_args(argv)
    try:
        result = verify_package(args.path, trusted_head=args.trusted_head, jobs=args.jobs)
        print(json.dumps(result.as_dict()) if args.json else result.line())
        return 0
    except VerificationError as err:
        print(json.dumps(err.as_dict()) if args.json else f"{'ERROR' if err.unreadable else 'FAIL'}: {err}")
        return 2 if err.unreadable else 1


if __name__ == "__main__":
    sys.exit(main())
