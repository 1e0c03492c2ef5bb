"""Regenerate the tamper fixtures: ``python tests/audit/assets/make_fixtures.py [DIR]``.

A small, real, deterministic ledger is built the way the trust domains write it, without the
pipeline (:class:`LedgerBuilder`): the coordinator (``server``, also the registrar) signs the
chain and its checkpoints; three sites each hold their own key, pinned by their self-signed
card in ``run_started``, sign their statements (embedded verbatim in the coordinator's
entries) and cosign every round's checkpoint (C2SP ``cosignature/v1``); after the run a QA user
enrols her own key. Keys come from fixed seeds and a fixed clock, so every byte reproduces.
The run is written as ``ledger_clean/``; each attack below rewrites that bundle the way the
coordinator, who holds the server key and the database, could, recomputing keys.json and the
manifest so the content checks must catch it, and writes ``ledger_<attack>/``.
``attacks.json`` records for each attack the first bad sequence number, the reason, and the
anchor needed where the attack is invisible from inside; ``trusted_head.json`` is the clean
run's last checkpoint, as a regulator would have received it; ``consortium.json`` the roster
the sites agreed to. Bundles here omit the optional Parquet copy.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pharmafl.audit import messages as m
from pharmafl.audit.rfc9162 import leaf_hash, root_from_leaves

ASSETS = Path(__file__).resolve().parent
SITES = ("site-01", "site-02", "site-03")
RUN_ID = "fixture-20250102-030405"


class SeededKeys:
    """Real Ed25519 keys derived from a label, so that fixtures are reproducible."""

    def __init__(self, label: str):
        self.label = label

    def get(self, actor: str) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"{self.label}:{actor}".encode()).digest())

    def public(self, actor: str) -> str:
        return self.get(actor).public_key().public_bytes_raw().hex()


class LedgerBuilder:
    """Entries, checkpoints and cosignatures in export form, signed as each trust domain would."""

    def __init__(
        self, label: str = "fixture", sites: tuple[str, ...] = SITES, run_id: str = RUN_ID, registrar: str = "server"
    ):
        self.keys, self.sites, self.run_id, self.registrar = SeededKeys(label), sites, run_id, registrar
        self.now = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
        self.entries: list[dict] = []
        self.checkpoints: list[dict] = []
        self.cosignatures: list[dict] = []
        self.registered: set[str] = set()
        self.cards = {s: self.card(s, i) for i, s in enumerate(sites)}

    def ts(self) -> str:
        self.now += timedelta(microseconds=1500)
        return self.now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def card(self, site: str, i: int = 0) -> dict:
        fields = {
            "counts": {"pairs": 3000 + i, "train": 2200 + i},
            "created": "2025-01-01T00:00:00.000000Z",
            "manifest_sha256": hashlib.sha256(f"manifest/{site}".encode()).hexdigest(),
            "public_key": self.keys.public(site),
            "site": site,
            "units": {"pair": 2200 + i},
        }
        return m.make_card(self.keys.get(site).sign, fields)

    def consortium(self) -> dict:
        return {"cards": self.cards, "roster_sha256": m.sha256_hex(m.canonical(self.cards))}

    # -- the coordinator's chain -------------------------------------------------------

    def append(self, actor: str, type_: str, payload: dict, *, key: Ed25519PrivateKey | None = None) -> dict:
        """Append an entry signed by ``actor`` (registered by the registrar first if needed)."""
        if actor not in self.registered and type_ != "actor_key":
            self.register(actor)
        seq, prev = len(self.entries), self.entries[-1]["entry_hash"] if self.entries else m.GENESIS
        entry = {"actor": actor, "payload": payload, "prev_hash": prev, "seq": seq, "ts": self.ts(), "type": type_}
        rehash(entry, prev)
        sign(entry, key or self.keys.get(actor))
        self.entries.append(entry)
        return entry

    def key_payload(self, actor: str, key: Ed25519PrivateKey | None = None, **extra) -> dict:
        key = key or self.keys.get(actor)
        pk = key.public_key().public_bytes_raw().hex()
        return {
            "actor": actor,
            "algorithm": "Ed25519",
            "fingerprint": m.sha256_hex(bytes.fromhex(pk)),
            "proof": key.sign(m.key_proof_message(actor, pk)).hex(),
            "public_key": pk,
            **extra,
        }

    def register(self, actor: str) -> dict:
        if self.registrar not in self.registered and actor != self.registrar:
            self.register(self.registrar)
        self.registered.add(actor)
        return self.append(self.registrar, "actor_key", self.key_payload(actor))

    def enrol(self, user: str, enrolment: dict) -> dict:
        """A user's own ``actor_key`` entry, signed by her new key."""
        self.registered.add(user)
        return self.append(user, "actor_key", self.key_payload(user, enrolment=enrolment))

    def statement(
        self,
        site: str,
        type_: str,
        rnd: int | None,
        payload: dict,
        *,
        run_id: str | None = None,
        key: Ed25519PrivateKey | None = None,
    ) -> dict:
        """What ``site`` signs at the site."""
        return m.make_statement(
            (key or self.keys.get(site)).sign,
            run_id=run_id or self.run_id,
            round=rnd,
            site=site,
            type=type_,
            payload=payload,
        )

    def site_entry(self, site: str, type_: str, rnd: int | None, payload: dict, **fields) -> dict:
        """The coordinator's entry embedding ``site``'s signed statement verbatim."""
        return self.append("server", type_, {"statement": self.statement(site, type_, rnd, payload), **fields})

    def checkpoint(self, cosigners: tuple[str, ...] | None = None) -> dict:
        """The coordinator's signed tree head over every entry so far, cosigned by ``cosigners``."""
        size = len(self.entries)
        root = root_from_leaves(leaf(e) for e in self.entries).hex()
        cp = {"root_hash": root, "signer": "server", "tree_size": size, "ts": self.ts()}
        cp["signature"] = self.keys.get("server").sign(m.checkpoint_message(size, root, cp["ts"], "server")).hex()
        self.checkpoints.append(cp)
        for site in self.sites if cosigners is None else cosigners:
            self.cosign(size, site)
        return cp

    def cosign(self, size: int, site: str, key: Ed25519PrivateKey | None = None) -> dict:
        root = next(c["root_hash"] for c in self.checkpoints if c["tree_size"] == size)
        t = int(self.now.timestamp())
        body = m.checkpoint_body(m.origin_of(self.run_id), size, root)
        cosig = {
            "signature": (key or self.keys.get(site)).sign(m.cosignature_message(body, t)).hex(),
            "timestamp": t,
            "tree_size": size,
            "witness": site,
        }
        self.cosignatures.append(cosig)
        self.cosignatures.sort(key=lambda c: (c["tree_size"], c["witness"]))
        return cosig

    # -- a whole run ---------------------------------------------------------------------

    def run(self, rounds: int = 2) -> LedgerBuilder:
        """A complete federated run: statements each round, every round's checkpoint cosigned."""
        self.append(
            "server",
            "run_started",
            {
                "config": {"lr": 0.001, "rounds": rounds},
                "consortium": self.consortium(),
                "run_id": self.run_id,
                "seed": 7,
                "sites": list(self.sites),
            },
        )
        for rnd in range(1, rounds + 1):
            self.append("server", "round_started", {"round": rnd, "sites": list(self.sites)})
            for i, site in enumerate(self.sites):
                self.round_of(site, rnd, i)
            self.append(
                "server",
                "aggregated",
                {
                    "aggregate_hash": f"a{rnd}" * 32,
                    "participants": list(self.sites),
                    "round": rnd,
                    "strategy": "fedavg",
                },
            )
            self.append("server", "privacy_spent", {"epsilon_total": 0.25 * rnd, "party": "server", "round": rnd})
            self.append("server", "round_ended", {"metrics": {"auc": 0.75 + 0.0625 * rnd}, "round": rnd})
            self.checkpoint()
        self.append("server", "run_ended", {"model_hash": "d0" * 32, "rounds": rounds, "status": "completed"})
        self.checkpoint()
        self.enrol("user:qa", {"code_sha256": hashlib.sha256(b"one-time code").hexdigest()})
        self.append("user:qa", "report_generated", {"record_hash": "e0" * 32})
        self.checkpoint(cosigners=())  # after the run: the coordinator's alone
        return self

    def round_of(self, site: str, rnd: int, i: int) -> None:
        self.site_entry(
            site,
            "site_update",
            rnd,
            {
                "metrics": {"loss": 0.5 / rnd},
                "num_examples": 1000 + 100 * i,
                "update_bytes": 4096,
                "update_hash": hashlib.sha256(f"{site}/{rnd}".encode()).hexdigest(),
            },
            accepted=True,
            problem=None,
        )
        self.site_entry(
            site,
            "clip",
            rnd,
            {"clip_norm": 1.0, "clipped": 120 + i, "max_norm": 3.25, "mean_norm": 0.875, "total": 1000 + 100 * i},
        )
        self.site_entry(
            site,
            "privacy_spent",
            rnd,
            {
                "accountant": "prv",
                "budget": 8.0,
                "delta": 1e-5,
                "epsilon_prior": 0.0,
                "epsilon_round": 0.5,
                "epsilon_total": 0.5 * rnd,
                "noise_multiplier": 1.1,
                "noise_source": "site",
                "privacy_unit": "pair",
                "sample_rate": 0.01,
                "steps": 100,
            },
        )


# -- entry arithmetic (what anyone holding the files can redo) ----------------------------


def leaf(entry: dict) -> bytes:
    return leaf_hash(bytes.fromhex(entry["entry_hash"] + entry["signature"]))


def rehash(entry: dict, prev_hash: str) -> None:
    """Recompute an entry's link and hash after editing it (its signature is not redone)."""
    entry["prev_hash"] = prev_hash
    msg = m.entry_message(
        entry["seq"], entry["ts"], entry["actor"], entry["type"], m.canonical(entry["payload"]), prev_hash
    )
    entry["entry_hash"] = hashlib.sha256(msg).hexdigest()


def sign(entry: dict, key: Ed25519PrivateKey) -> None:
    entry["signature"] = key.sign(bytes.fromhex(entry["entry_hash"])).hex()


def resign_from(b: LedgerBuilder, start: int) -> None:
    """What the coordinator can do: renumber, re-chain and re-sign with its own key every entry from
    ``start`` on, and re-sign every checkpoint; cosignatures of changed heads cannot be redone."""
    for i in range(start, len(b.entries)):
        e = b.entries[i]
        e["seq"] = i
        rehash(e, b.entries[i - 1]["entry_hash"] if i else m.GENESIS)
        sign(e, b.keys.get(e["actor"]))
    for cp in b.checkpoints:
        if cp["tree_size"] > start and cp["tree_size"] <= len(b.entries):
            cp["root_hash"] = root_from_leaves(leaf(e) for e in b.entries[: cp["tree_size"]]).hex()
            cp["signature"] = (
                b.keys.get("server")
                .sign(m.checkpoint_message(cp["tree_size"], cp["root_hash"], cp["ts"], cp["signer"]))
                .hex()
            )


def find(entries: list[dict], type_: str, site: str | None = None, rnd: int | None = None) -> int:
    """Index of the first entry of ``type_`` (for ``site``'s statement of round ``rnd``)."""
    for i, e in enumerate(entries):
        st = e["payload"].get("statement") or {}
        if (
            e["type"] == type_
            and (site is None or st.get("site") == site)
            and (rnd is None or st.get("round") == rnd or e["payload"].get("round") == rnd)
        ):
            return i
    raise LookupError(f"no {type_} entry of {site} round {rnd}")


# -- bundle I/O ---------------------------------------------------------------------------


def keys_of(entries: list[dict]) -> dict:
    """keys.json as the registrations in ``entries`` say (first registration of each actor)."""
    keys: dict[str, tuple[str, int]] = {}
    for e in entries:
        if e["type"] == "actor_key":
            keys.setdefault(e["payload"]["actor"], (e["payload"]["public_key"], e["seq"]))
    return m.keys_document(keys)


def save(bundle: Path, entries: list[dict], cps: list[dict], cosigs: list[dict]) -> Path:
    """Write a bundle, keys.json and a manifest consistent with its files (what an attacker would do)."""
    shutil.rmtree(bundle, ignore_errors=True)
    bundle.mkdir(parents=True)
    (bundle / "entries.jsonl").write_text("".join(m.canonical(e) + "\n" for e in entries))
    (bundle / "checkpoints.jsonl").write_text("".join(m.canonical(c) + "\n" for c in cps))
    (bundle / "cosignatures.jsonl").write_text("".join(m.canonical(c) + "\n" for c in cosigs))
    (bundle / "keys.json").write_text(m.canonical(keys_of(entries)) + "\n")
    files = {p.name: m.file_sha256(p) for p in sorted(bundle.iterdir())}
    root = root_from_leaves(leaf(e) for e in entries).hex()
    (bundle / "manifest.json").write_text(
        m.canonical(m.bundle_manifest(len(entries), len(cps), len(cosigs), root, files)) + "\n"
    )
    return bundle


def load(bundle: Path) -> tuple[list[dict], list[dict], list[dict]]:
    return tuple(
        [json.loads(line) for line in (bundle / name).read_text().splitlines()]
        for name in ("entries.jsonl", "checkpoints.jsonl", "cosignatures.jsonl")
    )


def write_db(path: Path, entries: list[dict], cps: list[dict], cosigs: list[dict]) -> Path:
    """The same ledger as a SQLite ``ledger.db`` (through the project's storage layer)."""
    from pharmafl.audit.records import Checkpoint, Cosignature, Entry
    from pharmafl.audit.storage import Storage, resolve_target

    storage = Storage(resolve_target(path))
    storage.create_schema()
    with storage.write() as conn:
        Storage.insert_entries(
            conn,
            [
                Entry(
                    e["seq"],
                    e["ts"],
                    e["actor"],
                    e["type"],
                    m.canonical(e["payload"]),
                    e["prev_hash"],
                    e["entry_hash"],
                    e["signature"],
                )
                for e in entries
            ],
        )
        for cp in cps:
            Storage.insert_checkpoint(
                conn, Checkpoint(cp["tree_size"], cp["root_hash"], cp["ts"], cp["signer"], cp["signature"])
            )
        Storage.insert_cosignatures(
            conn, [Cosignature(c["tree_size"], c["witness"], c["timestamp"], c["signature"]) for c in cosigs]
        )
    storage.dispose()
    return path


# -- the attacks --------------------------------------------------------------------------


def attacks() -> dict[str, tuple[LedgerBuilder, dict]]:
    """name -> (the tampered ledger, what the verifier must say)."""
    out = {}

    def base() -> LedgerBuilder:
        return LedgerBuilder().run()

    b = base()  # flipped byte: one hex digit of a site's update hash, inside its statement
    i = find(b.entries, "site_update", "site-02", 1)
    h = b.entries[i]["payload"]["statement"]["payload"]["update_hash"]
    b.entries[i]["payload"]["statement"]["payload"]["update_hash"] = ("1" if h[0] != "1" else "2") + h[1:]
    out["payload_byte_flipped"] = (b, {"seq": i, "reason": "entry_hash does not match"})

    b = base()  # the coordinator lowers a site's epsilon and re-signs everything it can sign
    i = find(b.entries, "privacy_spent", "site-03", 2)
    st = b.entries[i]["payload"]["statement"]
    st["payload"]["epsilon_total"] = 0.25
    st["payload_sha256"] = m.sha256_hex(m.canonical(st["payload"]))
    resign_from(b, i)
    out["statement_forged_by_coordinator"] = (b, {"seq": i, "reason": "site-03's statement signature"})

    b = base()  # ... or edits it without fixing the statement's hash
    i = find(b.entries, "privacy_spent", "site-03", 2)
    b.entries[i]["payload"]["statement"]["payload"]["epsilon_total"] = 0.25
    resign_from(b, i)
    out["statement_payload_edited"] = (b, {"seq": i, "reason": "payload_sha256"})

    b = base()  # the coordinator records a site update the site never signed
    i = find(b.entries, "site_update", "site-01", 2)
    b.entries[i]["payload"] = {**b.entries[i]["payload"]["statement"]["payload"], "accepted": True, "problem": None}
    resign_from(b, i)
    out["statement_missing"] = (b, {"seq": i, "reason": "its site statement"})

    b = base()  # a forged statement for site-01, signed by a key the coordinator made
    i = find(b.entries, "privacy_spent", "site-01", 2)
    forged = copy.deepcopy(b.entries[i])
    forged["payload"]["statement"] = b.statement(
        "site-01",
        "privacy_spent",
        2,
        {**forged["payload"]["statement"]["payload"], "epsilon_round": 0.0},
        key=SeededKeys("attacker").get("site-01"),
    )
    b.entries[i] = forged
    resign_from(b, i)
    out["forged_entry_inserted"] = (b, {"seq": i, "reason": "site-01's statement signature"})

    b = base()  # round 1's genuine statement replayed as round 2's
    i, j = find(b.entries, "clip", "site-02", 1), find(b.entries, "clip", "site-02", 2)
    b.entries[j]["payload"] = copy.deepcopy(b.entries[i]["payload"])
    resign_from(b, j)
    out["statement_replayed"] = (b, {"seq": j, "reason": "replayed"})

    b = base()  # a statement the site really signed, but for another run
    i = find(b.entries, "site_update", "site-02", 2)
    b.entries[i]["payload"]["statement"] = b.statement(
        "site-02", "site_update", 2, b.entries[i]["payload"]["statement"]["payload"], run_id="another-run"
    )
    resign_from(b, i)
    out["statement_other_run"] = (b, {"seq": i, "reason": "of run 'another-run'"})

    b = base()  # a statement by a site the run never pinned
    i = find(b.entries, "clip", "site-03", 1)
    b.entries[i]["payload"]["statement"] = b.statement(
        "site-99", "clip", 1, b.entries[i]["payload"]["statement"]["payload"]
    )
    resign_from(b, i)
    out["statement_unpinned_site"] = (b, {"seq": i, "reason": "not a site pinned"})

    b = base()  # an entry simply removed
    i = find(b.entries, "clip", "site-01", 2)
    del b.entries[i]
    out["entry_deleted"] = (b, {"seq": i, "reason": "found sequence number"})

    b = base()  # two entries swapped
    i = find(b.entries, "site_update", "site-03", 2)
    b.entries[i], b.entries[i + 1] = b.entries[i + 1], b.entries[i]
    out["reordered"] = (b, {"seq": i, "reason": "found sequence number"})

    b = base()  # the last round cut off, with the checkpoints and cosignatures that covered it
    cut = find(b.entries, "round_started", rnd=2)
    b.entries = b.entries[:cut]
    b.checkpoints = [c for c in b.checkpoints if c["tree_size"] <= cut]
    b.cosignatures = [c for c in b.cosignatures if c["tree_size"] <= cut]
    out["truncated_tail"] = (
        b,
        {"seq": cut, "reason": "missing (truncated)", "needs": "--trusted-head", "passes_without_anchor": True},
    )

    b = base()  # after a cosigned head: cut back and re-extend with forged entries; the sites cannot cosign
    cut = find(b.entries, "round_started", rnd=2)
    b.entries, b.checkpoints = b.entries[:cut], [c for c in b.checkpoints if c["tree_size"] <= cut]
    b.cosignatures = [c for c in b.cosignatures if c["tree_size"] <= cut]
    b.append("server", "round_started", {"round": 2, "sites": ["site-01"]})
    b.append("server", "run_ended", {"model_hash": "f0" * 32, "rounds": 2, "status": "completed"})
    b.checkpoint(cosigners=())
    out["truncated_and_reextended"] = (b, {"seq": len(b.entries) - 1, "reason": "the witness policy needs 2"})

    b = base()  # a round's checkpoint cosigned by one site only
    size = b.checkpoints[0]["tree_size"]
    b.cosignatures = [c for c in b.cosignatures if c["tree_size"] != size or c["witness"] == "site-01"]
    out["checkpoint_without_quorum"] = (b, {"seq": size - 1, "reason": "cosigned by 1 pinned sites"})

    b = base()  # a cosignature made with a key that is not site-02's pinned one
    size = b.checkpoints[1]["tree_size"]
    b.cosignatures = [c for c in b.cosignatures if (c["tree_size"], c["witness"]) != (size, "site-02")]
    b.cosign(size, "site-02", key=SeededKeys("attacker").get("site-02"))
    out["cosignature_unpinned_key"] = (b, {"seq": size - 1, "reason": "does not verify (pinned key)"})

    b = base()  # a signature swapped for another valid signature by the same actor
    i = find(b.entries, "site_update", "site-03", 1)
    b.entries[i]["signature"] = b.entries[find(b.entries, "clip", "site-03", 1)]["signature"]
    out["signature_replaced"] = (b, {"seq": i, "reason": "signature does not verify"})

    b = base()  # the operator registers a second key for the server and forges with it
    evil = SeededKeys("attacker").get("server")
    n = len(b.entries)
    b.append("server", "actor_key", b.key_payload("server", evil))
    b.append("server", "privacy_spent", {"epsilon_total": 0.0, "party": "server", "round": 2}, key=evil)
    out["actor_rekeyed"] = (b, {"seq": n, "reason": "registered again"})

    b = base()  # the registrar registers a key for a user who never enrolled, and signs in her name
    n = len(b.entries)
    b.registered.add("user:alice")
    b.append("server", "actor_key", b.key_payload("user:alice", enrolment={"code_sha256": "0" * 64}))
    b.append("user:alice", "e_signature", {"meaning": "approved", "record_hash": "e0" * 32})
    out["user_key_by_registrar"] = (b, {"seq": n, "reason": "a user only herself"})

    b = base()  # a second run_started in the same ledger
    n = len(b.entries)
    b.append("server", "run_started", {"consortium": b.consortium(), "run_id": "second", "sites": list(SITES)})
    out["second_run_started"] = (b, {"seq": n, "reason": "a second run_started"})

    b = base()  # the coordinator's checkpoint claims another root, properly signed
    cp = b.checkpoints[0]
    cp["root_hash"] = hashlib.sha256(b"another history").hexdigest()
    cp["signature"] = (
        b.keys.get("server").sign(m.checkpoint_message(cp["tree_size"], cp["root_hash"], cp["ts"], cp["signer"])).hex()
    )
    out["checkpoint_disagrees"] = (b, {"seq": cp["tree_size"] - 1, "reason": "disagrees with the Merkle root"})

    b = LedgerBuilder("attacker").run()  # the whole run re-signed with fresh keys, site cards included
    out["rewritten_fresh_keys"] = (
        b,
        {
            "seq": 0,
            "reason": "trusted",
            "needs": "--trusted-keys, --trusted-head or --roster",
            "passes_without_anchor": True,
        },
    )
    return out


def build(target: Path) -> None:
    """Write every fixture under ``target``."""
    clean = LedgerBuilder().run()
    save(target / "ledger_clean", clean.entries, clean.checkpoints, clean.cosignatures)
    (target / "trusted_head.json").write_text(m.canonical(clean.checkpoints[-1]) + "\n")
    (target / "consortium.json").write_text(m.canonical({"format": m.CONSORTIUM_FORMAT, **clean.consortium()}) + "\n")
    expectations = {}
    for name, (b, expect) in attacks().items():
        save(target / f"ledger_{name}", b.entries, b.checkpoints, b.cosignatures)
        expectations[name] = expect
    (target / "attacks.json").write_text(json.dumps(expectations, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else ASSETS)
    print(f"fixtures written to {sys.argv[1] if len(sys.argv) > 1 else ASSETS}")
