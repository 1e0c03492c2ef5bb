"""Regenerate the tamper fixtures: ``python tests/audit/assets/make_fixtures.py``.

A small, real, deterministic ledger (a 2-round, 3-site run recorded through the
``LedgerListener``; keys derived from fixed seeds, a fixed clock) is exported as
``ledger_clean/``; each attack below rewrites that bundle the way an attacker who holds
the files would, recomputing the manifest so the attack must be caught by the content
checks, and writes ``ledger_<attack>/``. ``attacks.json`` records, for each attack, the
first bad sequence number and the verifier options needed to catch it; the test derives
nothing from the verifier itself.

Bundles here omit the Parquet copy (the verifier treats it as optional); ``trusted_head.json``
is the clean run's final checkpoint, as a regulator would have received it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pharmafl.audit.bundle import export
from pharmafl.audit.canonical import canonical_json
from pharmafl.audit.ledger import Ledger
from pharmafl.audit.listener import LedgerListener
from pharmafl.audit.merkle import merkle_root
from pharmafl.audit.records import checkpoint_message, entry_message, key_proof_message

ASSETS = Path(__file__).resolve().parent
SITES = ("site-01", "site-02", "site-03")


class SeededKeys:
    """Real Ed25519 keys derived from a label, so that fixtures are reproducible."""

    def __init__(self, label: str):
        self.label = label

    def get_or_create(self, actor: str) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"{self.label}:{actor}".encode()).digest())


class StepClock:
    """2025-01-02T03:04:05Z, then 1.5 ms later at every call."""

    def __init__(self) -> None:
        self.now = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        self.now += timedelta(microseconds=1500)
        return self.now


def record_run(db: Path, keys: SeededKeys) -> None:
    """Record a small federated run, event by event, as the pipeline would."""
    ledger = Ledger.open(db, keys, clock=StepClock())
    listener = LedgerListener(ledger, owns_ledger=True)

    def emit(type_: str, actor: str, **payload) -> None:
        listener.on_event(SimpleNamespace(type=type_, actor=actor, payload=payload))

    emit("run_started", "server", run_id="fixture", config={"rounds": 2, "lr": 0.001}, config_hash="c0" * 32,
         git_commit="0123456789abcdef0123456789abcdef01234567", versions={"pharmafl": "0.1.0"}, seed=7,
         sites=list(SITES), manifests={s: f"{i:02x}" * 32 for i, s in enumerate(SITES)},
         privacy={"epsilon_budget": 8.0, "delta": 1e-5, "accountant": "rdp"})
    for rnd in (1, 2):
        emit("round_started", "server", round=rnd, sites=list(SITES))
        for i, site in enumerate(SITES):
            emit("site_update", site, round=rnd, update_hash=hashlib.sha256(f"{site}/{rnd}".encode()).hexdigest(),
                 num_examples=1000 + 100 * i, update_norm=0.75 + 0.125 * i, metrics={"loss": 0.5 / rnd})
            emit("clip", site, round=rnd, clip_norm=1.0, clipped=120 + i, total=1000 + 100 * i,
                 max_norm=3.25, mean_norm=0.875)
            emit("privacy_spent", site, round=rnd, epsilon_round=0.5, epsilon_total=0.5 * rnd, delta=1e-5,
                 accountant="rdp", noise_multiplier=1.1, sample_rate=0.01, steps=100, privacy_unit="sample")
        emit("aggregated", "server", round=rnd, participants=list(SITES),
             weights={s: round(1 / 3, 6) for s in SITES}, aggregate_hash=f"a{rnd}" * 32,
             checkpoint_hash=f"b{rnd}" * 32, strategy="fedavg")
        emit("round_ended", "server", round=rnd, metrics={"auc": 0.75 + 0.0625 * rnd})
    emit("run_ended", "server", status="completed", rounds=2, model_hash="d0" * 32, metrics={"auc": 0.875})
    listener.close()


# -- bundle I/O -----------------------------------------------------------------------------

def load(bundle: Path) -> tuple[list[dict], list[dict], dict]:
    entries = [json.loads(line) for line in (bundle / "entries.jsonl").read_text().splitlines()]
    cps = [json.loads(line) for line in (bundle / "checkpoints.jsonl").read_text().splitlines()]
    return entries, cps, json.loads((bundle / "keys.json").read_text())


def save(bundle: Path, entries: list[dict], cps: list[dict], keys: dict) -> None:
    """Write a bundle and a manifest consistent with its files (what an attacker would do)."""
    shutil.rmtree(bundle, ignore_errors=True)
    bundle.mkdir(parents=True)
    (bundle / "entries.jsonl").write_text("".join(canonical_json(e) + "\n" for e in entries))
    (bundle / "checkpoints.jsonl").write_text("".join(canonical_json(c) + "\n" for c in cps))
    (bundle / "keys.json").write_text(canonical_json(keys) + "\n")
    leaves = [hashlib.sha256(b"\x00" + bytes.fromhex(e["entry_hash"] + e["signature"])).digest() for e in entries]
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(bundle.iterdir())}
    manifest = {"format": "pharmafl-ledger-bundle-v1", "entries": len(entries), "checkpoints": len(cps),
                "root_hash": merkle_root(leaves).hex(), "files": files}
    (bundle / "manifest.json").write_text(canonical_json(manifest) + "\n")


def rehash(entry: dict, prev_hash: str) -> None:
    """Recompute an entry's link and hash after editing it (its signature is not redone)."""
    entry["prev_hash"] = prev_hash
    payload = canonical_json(entry["payload"])
    msg = entry_message(entry["seq"], entry["ts"], entry["actor"], entry["type"], payload, prev_hash)
    entry["entry_hash"] = hashlib.sha256(msg).hexdigest()


def relink(entries: list[dict], start: int) -> None:
    """Renumber and re-chain entries from ``start`` on, as an attacker without keys can."""
    for i in range(start, len(entries)):
        entries[i]["seq"] = i
        rehash(entries[i], entries[i - 1]["entry_hash"] if i else "0" * 64)


def sign(entry: dict, key: Ed25519PrivateKey) -> None:
    entry["signature"] = key.sign(bytes.fromhex(entry["entry_hash"])).hex()


def find(entries: list[dict], type_: str, actor: str, rnd: int | None = None) -> int:
    return next(i for i, e in enumerate(entries)
                if e["type"] == type_ and e["actor"] == actor and (rnd is None or e["payload"].get("round") == rnd))


# -- the attacks ----------------------------------------------------------------------------

def attacks(clean: Path, work: Path) -> dict[str, tuple[list[dict], list[dict], dict, dict]]:
    """name -> (entries, checkpoints, keys, expectation)."""
    keys = SeededKeys("fixture")
    out = {}

    def base():
        return load(clean)

    e, c, k = base()  # flipped byte: one hex digit of a site's update hash
    i = find(e, "site_update", "site-02", 1)
    h = e[i]["payload"]["update_hash"]
    e[i]["payload"]["update_hash"] = ("1" if h[0] != "1" else "2") + h[1:]
    out["payload_byte_flipped"] = (e, c, k, {"seq": i, "reason": "entry_hash does not match"})

    e, c, k = base()  # epsilon edited down; hash and chain recomputed, signatures cannot be
    i = find(e, "privacy_spent", "site-03", 2)
    e[i]["payload"]["epsilon_total"] = 0.25
    relink(e, i)
    out["epsilon_edited"] = (e, c, k, {"seq": i, "reason": "signature does not verify"})

    e, c, k = base()  # an entry simply removed
    i = find(e, "clip", "site-01", 2)
    del e[i]
    out["entry_deleted"] = (e, c, k, {"seq": i, "reason": "found sequence number"})

    e, c, k = base()  # a forged privacy entry inserted, the rest renumbered and re-chained
    i = find(e, "privacy_spent", "site-01", 2)
    forged = json.loads(json.dumps(e[i]))
    forged["payload"]["epsilon_round"] = 0.0
    e.insert(i, forged)
    relink(e, i)
    sign(e[i], SeededKeys("attacker").get_or_create("site-01"))
    out["forged_entry_inserted"] = (e, c, k, {"seq": i, "reason": "signature does not verify"})

    e, c, k = base()  # two entries swapped
    i = find(e, "site_update", "site-03", 2)
    e[i], e[i + 1] = e[i + 1], e[i]
    out["reordered"] = (e, c, k, {"seq": i, "reason": "found sequence number"})

    e, c, k = base()  # the last round cut off, with the checkpoints that covered it
    cut = find(e, "round_started", "server", 2)
    e, c = e[:cut], [cp for cp in c if cp["tree_size"] <= cut]
    out["truncated_tail"] = (e, c, k, {"seq": cut, "reason": "missing (truncated)",
                                       "needs": "--trusted-head", "passes_without_anchor": True})

    e, c, k = base()  # a signature swapped for another valid signature by the same actor
    i = find(e, "site_update", "site-03", 1)
    e[i]["signature"] = e[find(e, "clip", "site-03", 1)]["signature"]
    out["signature_replaced"] = (e, c, k, {"seq": i, "reason": "signature does not verify"})

    e, c, k = base()  # the operator registers a second key for site-02 and forges with it
    n, evil = len(e), SeededKeys("attacker").get_or_create("site-02")
    server = keys.get_or_create("server")
    pk = evil.public_key().public_bytes_raw().hex()
    e.append({"seq": n, "ts": e[-1]["ts"], "actor": "server", "type": "actor_key", "payload": {
        "actor": "site-02", "algorithm": "Ed25519", "fingerprint": hashlib.sha256(bytes.fromhex(pk)).hexdigest(),
        "proof": evil.sign(key_proof_message("site-02", pk)).hex(), "public_key": pk}})
    e.append({"seq": n + 1, "ts": e[-1]["ts"], "actor": "site-02", "type": "privacy_spent",
              "payload": {**e[find(e, "privacy_spent", "site-02", 2)]["payload"], "epsilon_total": 0.1}})
    for j, who in ((n, server), (n + 1, evil)):
        rehash(e[j], e[j - 1]["entry_hash"])
        sign(e[j], who)
    out["actor_rekeyed"] = (e, c, k, {"seq": n, "reason": "registered again"})

    e, c, k = base()  # the operator's checkpoint claims another root, properly signed
    cp = c[0]
    cp["root_hash"] = hashlib.sha256(b"another history").hexdigest()
    cp["signature"] = keys.get_or_create("server").sign(
        checkpoint_message(cp["tree_size"], cp["root_hash"], cp["ts"], cp["signer"])).hex()
    out["checkpoint_disagrees"] = (e, c, k, {"seq": cp["tree_size"] - 1, "reason": "disagrees with the Merkle root"})

    record_run(work / "rewritten.db", SeededKeys("attacker"))  # the whole run re-signed with fresh keys
    export(work / "rewritten.db", work / "rewritten")
    e, c, k = load(work / "rewritten")
    out["rewritten_fresh_keys"] = (e, c, k, {"seq": 0, "reason": "trusted", "needs": "--trusted-keys or --trusted-head",
                                             "passes_without_anchor": True})
    return out


def build(target: Path) -> None:
    """Write every fixture under ``target``."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        record_run(work / "clean.db", SeededKeys("fixture"))
        export(work / "clean.db", work / "clean")
        entries, cps, keys = load(work / "clean")
        save(target / "ledger_clean", entries, cps, keys)
        (target / "trusted_head.json").write_text(canonical_json(cps[-1]) + "\n")
        expectations = {}
        for name, (e, c, k, expect) in attacks(target / "ledger_clean", work).items():
            save(target / f"ledger_{name}", e, c, k)
            expectations[name] = expect
        (target / "attacks.json").write_text(json.dumps(expectations, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else ASSETS)
    print(f"fixtures written to {sys.argv[1] if len(sys.argv) > 1 else ASSETS}")
