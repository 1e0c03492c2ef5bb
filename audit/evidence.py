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
3. Users and roles are replayed from the ledger: only admins create users and change roles
   (the first admin is created by itself, at bootstrap); only a data scientist or QA user
   records ``report_generated``; ``report_rendered`` comes right after its writer's
   ``e_signature`` on the same record.
4. Each report: ``report.json`` hashes to the manifest's record hash, which a
   ``report_generated`` entry of the manifest's run recorded; every other file is one the
   ledger recorded for that record (``report_generated`` / ``report_rendered``); each PDF/HTML
   copy is a rendering that shows every e-signature the ledger holds on the record (21 CFR 11.50).
5. Each e-signature in ``signatures.json`` is exactly the ``e_signature`` entry at its seq,
   by its signer; its Ed25519 signature over ``b"pharmafl-e-signature-v1\\0" || JCS(fields)``
   verifies under the signer's registered key; its ``record_hash`` is the hash of the report
   it is listed with (a signature copied onto another record fails here: 11.70); the signer's
   role at that point allowed the meaning, with the printed name of the account. Every
   ledger signature on a packaged report is listed.

Prints ``OK: ...`` and exits 0, ``FAIL: why`` and exits 1, ``ERROR: ...`` and exits 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pharmafl.audit.verify import VerificationError, canonical, read_bundle, verify_path

SIGNATURE_DOMAIN = b"pharmafl-e-signature-v1\x00"
SIGNED_FIELDS = ("meaning", "printed_name", "record", "record_hash", "role", "signed_at", "signer")
MAY_SIGN = {"authored": {"data_scientist", "qa"}, "reviewed": {"qa"}, "approved": {"qa"}}  # compliance/roles.py
MAY_GENERATE = {"data_scientist", "qa"}  # compliance/roles.py: generate_report
COPIES = ("report.pdf", "report.html")
PACKAGE_FILES = ("README.txt", "head.json", "signatures.json")  # besides ledger/ and the listed reports


def _fail(why: str) -> VerificationError:
    return VerificationError(why)


def _canonical_file(path: Path, fmt: str, fields: tuple) -> dict:
    try:
        raw = path.read_bytes()
        obj = json.loads(raw)
    except (OSError, ValueError) as err:
        raise _fail(f"{path.name}: unreadable ({err})") from None
    if not isinstance(obj, dict) or tuple(sorted(obj)) != fields or obj.get("format") != fmt \
            or raw != canonical(obj).encode() + b"\n":
        raise _fail(f"{path.name}: not a canonical {fmt} document with the fields {', '.join(fields)}")
    return obj


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_files(root: Path) -> dict:
    manifest = _canonical_file(root / "MANIFEST.json", "pharmafl-evidence-v1",
                               ("files", "format", "ledger", "reports", "run_id"))
    present = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {"MANIFEST.json"}
    if not all(isinstance(manifest[k], dict) and all(isinstance(n, str) and isinstance(h, str)
                                                      for n, h in manifest[k].items()) for k in ("files", "reports")):
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
    prefixes = tuple(name + "/" for name in manifest["reports"])
    loose = sorted(f for f in manifest["files"] if f not in PACKAGE_FILES and not f.startswith(("ledger/", *prefixes)))
    if loose:
        raise _fail(f"the package holds files outside the ledger export and the listed reports {loose}: nothing "
                    "vouches for them (foreign or forged)")
    if "head.json" in manifest["files"]:
        head = (root / "head.json").read_bytes()
        if head not in (root / "ledger" / "checkpoints.jsonl").read_bytes().splitlines(keepends=True):
            raise _fail("head.json is not one of the package ledger's signed checkpoints")


class _Ledger:
    """What the package's (verified) ledger says about users, reports and signatures."""

    def __init__(self, bundle: Path):
        entries, _ = read_bundle(bundle)
        self.keys: dict[str, str] = {}
        self.users: dict[str, dict] = {}
        self.roles_at: dict[int, dict[str, dict]] = {}  # e_signature seq -> user snapshot
        self.renderings: dict[str, list[dict]] = {}  # record hash -> [{files, signatures}]
        self.generated: dict[str, dict] = {}
        self.signatures: dict[int, tuple[str, dict]] = {}  # seq -> (actor, payload)
        self.previous: tuple = (None, None, None, {})  # (seq, actor, type, payload) of the entry before
        try:
            for seq, _ts, actor, type_, payload, *_ in entries:
                data = json.loads(payload)
                self._apply(seq, actor, type_, data)
                self.previous = (seq, actor, type_, data)
        finally:
            entries.close()

    def _admin(self, actor: str) -> bool:
        user = self.users.get(actor)
        return user is not None and user["role"] == "admin" and not user["disabled"]

    def _apply(self, seq: int, actor: str, type_: str, d: dict) -> None:
        if type_ == "actor_key":
            self.keys[d["actor"]] = d["public_key"]
        elif type_ == "user_created":
            target = "user:" + str(d.get("user_id"))
            bootstrap = (not self.users and d.get("created_by") == "bootstrap" and actor == target
                         and d.get("role") == "admin")
            if not (bootstrap or self._admin(actor)) or target in self.users:
                raise VerificationError(f"user_created for {target!r} by {actor!r}, who may not create it", seq)
            self.users[target] = {"role": d.get("role"), "name": d.get("full_name"), "disabled": False}
        elif type_ in ("user_role_changed", "user_disabled"):
            target = "user:" + str(d.get("user_id"))
            if not self._admin(actor) or target not in self.users:
                raise VerificationError(f"{type_} for {target!r} by {actor!r}, who is not an admin", seq)
            if type_ == "user_role_changed":
                self.users[target]["role"] = d.get("role")
            else:
                self.users[target]["disabled"] = True
        elif type_ == "report_generated":
            user = self.users.get(actor)
            if user is None or user["disabled"] or user["role"] not in MAY_GENERATE:
                raise VerificationError(f"report_generated by {actor!r}, who may not generate reports", seq)
            self.renderings.setdefault(d.get("record_hash"), []).append(d)
            self.generated[d.get("record_hash")] = d
        elif type_ == "report_rendered":  # written with, and right after, the signer's e_signature
            prev_seq, prev_actor, prev_type, prev = self.previous
            if (prev_seq, prev_actor, prev_type) != (seq - 1, actor, "e_signature") or \
                    prev.get("record_hash") != d.get("record_hash"):
                raise VerificationError(f"report_rendered by {actor!r} does not follow that user's e_signature on "
                                        "the same record", seq)
            self.renderings.setdefault(d.get("record_hash"), []).append(d)
        elif type_ == "e_signature":
            self.signatures[seq] = (actor, d)
            self.roles_at[seq] = dict(self.users.get(actor) or {})


def _signature_ok(sig: dict, public_key: str) -> bool:
    message = SIGNATURE_DOMAIN + canonical({k: sig[k] for k in SIGNED_FIELDS}).encode()
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key)).verify(bytes.fromhex(sig["signature"]), message)
        return True
    except (InvalidSignature, ValueError):
        return False


def check_report(root: Path, name: str, record_hash: str, manifest: dict, ledger: _Ledger) -> None:
    files = manifest["files"]
    if files.get(f"{name}/report.json") != record_hash:
        raise _fail(f"{name}/report.json: its SHA-256 is not the record hash the manifest names")
    generated = ledger.generated.get(record_hash)
    if generated is None:
        raise _fail(f"{name}: record {record_hash[:16]}... has no report_generated entry in the ledger")
    if generated.get("run_id") != manifest["run_id"]:
        raise _fail(f"MANIFEST.json names run {manifest['run_id']!r}, but {name} is a report of run "
                    f"{generated.get('run_id')!r}")
    on_record = {d["signature"] for _, d in ledger.signatures.values() if d.get("record_hash") == record_hash}
    prefix = name + "/"
    for path, digest in sorted(files.items()):
        if not path.startswith(prefix):
            continue
        rel = path[len(prefix):]
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
            raise _fail(f"{path}: this copy does not show {len(missing)} of the record's e-signatures; "
                        "every human-readable copy must show them (21 CFR 11.50): export the re-rendered report")


def check_signatures(root: Path, manifest: dict, ledger: _Ledger) -> int:
    doc = _canonical_file(root / "signatures.json", "pharmafl-signatures-v1", ("format", "signatures"))
    seen = set()
    for i, item in enumerate(doc["signatures"]):
        where = f"signatures.json item {i}"
        if not isinstance(item, dict) or not set(SIGNED_FIELDS) | {"signature", "report", "seq"} <= set(item) \
                or not isinstance(item["report"], str) or type(item["seq"]) is not int:
            raise _fail(f"{where}: malformed")
        report, seq = item["report"], item["seq"]
        if report not in manifest["reports"]:
            raise _fail(f"{where}: names {report!r}, not a report in this package")
        if item["record_hash"] != manifest["reports"][report]:
            raise _fail(f"{where}: the signature by {item['signer']} was made on record {item['record_hash'][:16]}..., "
                        f"not on {report} ({manifest['reports'][report][:16]}...): a signature cannot be copied onto "
                        "another record (21 CFR 11.70)")
        actor, recorded = ledger.signatures.get(seq, (None, None))
        payload = {k: v for k, v in item.items() if k not in ("report", "seq")}
        if recorded != payload or actor != item["signer"]:
            raise _fail(f"{where}: not the e_signature entry at seq {seq} of the ledger (or signed by another actor)")
        if item["signer"] not in ledger.keys or not _signature_ok(item, ledger.keys[item["signer"]]):
            raise _fail(f"{where}: the e-signature of {item['signer']} does not verify under its registered key")
        user = ledger.roles_at.get(seq) or {}
        if user.get("disabled", True) or user.get("role") != item["role"] or \
                item["role"] not in MAY_SIGN.get(item["meaning"], set()):
            raise _fail(f"{where}: {item['signer']} (role {user.get('role')!r} at seq {seq}) may not sign as "
                        f"{item['meaning']!r}")
        if user.get("name") != item["printed_name"]:
            raise _fail(f"{where}: printed name {item['printed_name']!r} is not the account's name "
                        f"{user.get('name')!r}")
        seen.add(seq)
    hashes = set(manifest["reports"].values())
    unlisted = sorted(s for s, (_, d) in ledger.signatures.items() if d.get("record_hash") in hashes and s not in seen)
    if unlisted:
        raise _fail(f"signatures.json omits the e-signatures recorded at seq {unlisted}")
    return len(seen)


def verify_package(path: str, *, trusted_head: str | None = None, jobs: int | None = None) -> str:
    root = Path(path)
    if not (root / "MANIFEST.json").is_file():
        raise VerificationError(f"{path}: no MANIFEST.json; not a pharmafl evidence package", unreadable=True)
    manifest = check_files(root)
    try:
        line = verify_path(str(root / "ledger"), trusted_head=trusted_head, jobs=jobs)
    except VerificationError as err:
        raise VerificationError(f"ledger: {err}", err.seq) from None
    bundle = json.loads((root / "ledger" / "manifest.json").read_text())
    if manifest["ledger"] != {"entries": bundle["entries"], "root_hash": bundle["root_hash"]}:
        raise _fail("MANIFEST.json names another ledger than ledger/ holds")
    check_coverage(root, manifest)
    ledger = _Ledger(root / "ledger")
    for name, record_hash in sorted(manifest["reports"].items()):
        check_report(root, name, record_hash, manifest, ledger)
    n = check_signatures(root, manifest, ledger)
    return (f"OK: evidence package of run {manifest['run_id']}: {len(manifest['files'])} files, "
            f"{len(manifest['reports'])} report(s), {n} e-signature(s); ledger {line[4:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pharmafl.audit.evidence", description=__doc__.split("\n")[0])
    parser.add_argument("path", help="the evidence package directory")
    parser.add_argument("--trusted-head", help="a checkpoint JSON received out of band (catches truncation)")
    parser.add_argument("--jobs", type=int, help="processes for signature checks (default: all cores)")
    args = parser.parse_args(argv)
    try:
        print(verify_package(args.path, trusted_head=args.trusted_head, jobs=args.jobs))
        return 0
    except VerificationError as err:
        print(f"{'ERROR' if err.unreadable else 'FAIL'}: {err}")
        return 2 if err.unreadable else 1


if __name__ == "__main__":
    sys.exit(main())
