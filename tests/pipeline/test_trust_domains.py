"""Separate trust domains in a real run: sites sign what they assert, witness every checkpoint,
and the coordinator (the threat) can neither forge a site's statement nor rewrite the run.

Every attack is the coordinator's, with everything the coordinator holds: the run directory's
key store (``RUN/keys``) and its passphrase.
"""

from __future__ import annotations

import gc
import json
import sqlite3
import subprocess
import sys
import types
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pharmafl.audit.keys import KeyStore
from pharmafl.audit.ledger import Ledger
from pharmafl.audit.messages import make_statement, origin_of
from pharmafl.pipeline.config import LedgerConfig
from pharmafl.pipeline.engines import run_federated
from pharmafl.pipeline.run import RunPlan, make_site
from pharmafl.pipeline.statements import statement_problem

PASSPHRASE = "coordinator-test-passphrase"
SITE_TYPES = ("site_update", "clip", "privacy_spent", "site_declined", "secure_shares")


@pytest.fixture(scope="module")
def witnessed_run(small_davis: Path, tmp_path_factory) -> Path:
    """3 sites x 2 rounds, in-process engine, ledger on: the honest run the attacks start from."""
    import os

    from pharmafl.models.dti import ModelConfig
    from pharmafl.pipeline.config import DataConfig, FederationConfig, RunConfig
    from pharmafl.sites.training import TrainConfig

    cfg = RunConfig(
        name="trust",
        seed=7,
        data=DataConfig(dataset=str(small_davis), sites=3, partition="iid"),
        model=ModelConfig(max_len=64, embed_dim=16, kernel_size=4, latent_dim=32),
        train=TrainConfig(batch_size=64),
        federation=FederationConfig(rounds=2, engine="local"),
        ledger=LedgerConfig(enabled=True),
    )
    before = os.environ.get("PHARMAFL_KEY_PASSPHRASE")
    os.environ["PHARMAFL_KEY_PASSPHRASE"] = PASSPHRASE
    try:
        out = tmp_path_factory.mktemp("trust") / "run"
        run_federated(cfg, out)
    finally:
        if before is None:
            os.environ.pop("PHARMAFL_KEY_PASSPHRASE", None)
        else:
            os.environ["PHARMAFL_KEY_PASSPHRASE"] = before
    return out


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).parent / "pharmafl"), *args], capture_output=True, text=True, timeout=300
    )


def verify(target: Path, *args: str) -> subprocess.CompletedProcess:
    return cli("ledger", "verify", str(target), *args)


def coordinator_ledger(run: Path, db: Path | None = None) -> Ledger:
    return Ledger.open(db or run / "ledger.db", KeyStore(run / "keys", PASSPHRASE))


def copy_prefix(run: Path, size: int, out: Path) -> Path:
    """A new database holding the first ``size`` entries and what was signed over them."""
    with Ledger.open(out, KeyStore(out.parent / "scratch-keys", PASSPHRASE)):
        pass  # the schema
    con = sqlite3.connect(out)
    con.execute("ATTACH DATABASE ? AS src", (str(run / "ledger.db"),))
    con.execute("INSERT INTO ledger_entries SELECT * FROM src.ledger_entries WHERE seq < ?", (size,))
    con.execute("INSERT INTO ledger_checkpoints SELECT * FROM src.ledger_checkpoints WHERE tree_size <= ?", (size,))
    con.execute("INSERT INTO ledger_cosignatures SELECT * FROM src.ledger_cosignatures WHERE tree_size <= ?", (size,))
    con.commit()
    con.close()
    return out


def test_the_honest_run_verifies_with_site_signatures_and_witness_quorum(witnessed_run: Path) -> None:
    done = verify(witnessed_run)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "witnessed" in done.stdout
    plan = RunPlan.load(witnessed_run / "plan.json")
    with Ledger.open(witnessed_run / "ledger.db") as ledger:
        entries, checkpoints, cosigs = list(ledger.entries()), ledger.checkpoints(), ledger.cosignatures()
    site_entries = [e for e in entries if e.type in SITE_TYPES and e.data.get("party") != "server"]
    assert {e.type for e in site_entries} >= {"site_update"}
    for e in site_entries:  # every one carries its site's own signature, and the coordinator signed the chain
        stmt = e.data["statement"]
        assert e.actor == "server"
        assert (
            statement_problem(
                stmt,
                site=stmt["site"],
                round=stmt["round"],
                run_id=plan.run_id,
                type_=e.type,
                payload=stmt["payload"],
                key=plan.site_keys[stmt["site"]],
            )
            is None
        )
    assert sorted({e.data["statement"]["site"] for e in site_entries}) == list(plan.sites)
    by_size: dict[int, set[str]] = {}
    for c in cosigs:
        by_size.setdefault(c.tree_size, set()).add(c.witness)
    assert checkpoints and all(by_size.get(cp.tree_size) == set(plan.sites) for cp in checkpoints)


def test_the_coordinator_holds_no_site_key(witnessed_run: Path) -> None:
    assert KeyStore(witnessed_run / "keys", PASSPHRASE).actors() == ["server"]
    plan = RunPlan.load(witnessed_run / "plan.json")
    for site in plan.sites:  # each site's key lies in its own home only
        homes = [p for p in witnessed_run.rglob("*.key.json") if site in p.name]
        assert [p.relative_to(witnessed_run).parts[:3] for p in homes] == [("sites", site, "keys")]


def reachable_keys(root) -> list[Ed25519PrivateKey]:
    """Every Ed25519 private key that ``root`` holds: through its attributes, containers, bound
    methods and closures, but not through modules, classes or a function's globals (which reach
    everything a process has loaded)."""
    found, seen, todo = [], set(), [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(
            obj, (str, bytes, int, float, type(None), type, types.ModuleType, types.CodeType, types.BuiltinFunctionType)
        ):
            continue
        seen.add(id(obj))
        if isinstance(obj, Ed25519PrivateKey):
            found.append(obj)
        elif isinstance(obj, types.FunctionType):
            todo.extend(c.cell_contents for c in obj.__closure__ or () if c.cell_contents is not None)
            todo.extend(obj.__defaults__ or ())
        elif isinstance(obj, types.MethodType):
            todo.extend((obj.__self__, obj.__func__))
        else:
            todo.extend(gc.get_referents(obj))
    return found


def test_the_in_process_coordinator_never_receives_a_site_key_object(witnessed_run: Path) -> None:
    from pharmafl.pipeline.events import EventBus
    from pharmafl.pipeline.run import server_side

    plan = RunPlan.load(witnessed_run / "plan.json")
    sites = {s: make_site(plan, s) for s in plan.sites}  # the engine's side: each site holds its own key
    state = __import__("pharmafl.pipeline.run", fromlist=["initial_state"]).initial_state(plan.cfg)
    for site in sites.values():
        site.fit(1, state, __import__("pharmafl.sites.site", fromlist=["Instructions"]).Instructions())
    assert all(reachable_keys(site) for site in sites.values()), "the walk finds a site's own key"
    coord = server_side(plan, EventBus())
    assert reachable_keys(coord) == []
    coord.strategy.leak = {"site-01": reachable_keys(sites["site-01"])[0]}  # the check would see a key it held
    assert len(reachable_keys(coord)) == 1


def forged_statement(plan: RunPlan, site: str, key: Ed25519PrivateKey) -> dict:
    return make_statement(
        key.sign,
        run_id=plan.run_id,
        round=2,
        site=site,
        type="privacy_spent",
        payload={
            "epsilon_round": 0.001,
            "epsilon_total": 0.01,
            "delta": 1e-4,
            "budget": 8.0,
            "accountant": "prv",
            "noise_multiplier": 9.0,
            "sample_rate": 0.1,
            "steps": 1,
            "privacy_unit": "pair",
            "noise_source": "csprng",
            "epsilon_prior": 0.0,
        },
    )


@pytest.mark.parametrize("signer", ["fresh key", "coordinator key"])
def test_a_forged_site_statement_appended_by_the_coordinator_fails(
    witnessed_run: Path, tmp_path: Path, signer: str
) -> None:
    plan = RunPlan.load(witnessed_run / "plan.json")
    db = copy_prefix(witnessed_run, 10**9, tmp_path / "ledger.db")
    with coordinator_ledger(witnessed_run, db) as ledger:
        head = ledger.checkpoints()[-1]
        key = Ed25519PrivateKey.generate() if signer == "fresh key" else ledger.keys.get("server")
        ledger.append("server", "privacy_spent", {"statement": forged_statement(plan, "site-01", key)})
        ledger.checkpoint()
    trusted = tmp_path / "head.json"
    trusted.write_text(head.to_json_line())
    for args in ((), ("--trusted-head", str(trusted))):
        done = verify(db, *args)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "FAIL" in done.stdout and "site-01" in done.stdout


def test_truncating_after_a_cosigned_head_and_re_extending_fails_and_no_site_cosigns_it(
    witnessed_run: Path, tmp_path: Path
) -> None:
    plan = RunPlan.load(witnessed_run / "plan.json")
    with Ledger.open(witnessed_run / "ledger.db") as ledger:
        first = ledger.checkpoints()[0]  # the end of round 1, cosigned by every site
    db = copy_prefix(witnessed_run, first.tree_size, tmp_path / "ledger.db")
    trusted = tmp_path / "head.json"
    trusted.write_text(first.to_json_line())
    with coordinator_ledger(witnessed_run, db) as ledger:  # round 2 rewritten by the coordinator alone
        ledger.append("server", "round_started", {"round": 2, "sites": list(plan.sites)})
        ledger.append("server", "round_ended", {"round": 2, "metrics": {}, "diagnostics": None})
        ledger.checkpoint()
        # what it would ask each witness: extend the round-1 head they all cosigned
        request = ledger.witness_request(
            first.tree_size, origin=origin_of(plan.run_id), log_signer="server", anchor_seq=None
        )
    done = verify(db, "--trusted-head", str(trusted))
    assert done.returncode == 1 and "FAIL" in done.stdout, done.stdout + done.stderr
    from pharmafl.audit.witness import WitnessError

    for site in plan.sites:  # each site's witness already cosigned the real, longer ledger
        with pytest.raises(WitnessError):
            make_site(plan, site).witness(request)


def test_a_site_audit_finds_every_statement_of_the_honest_run(witnessed_run: Path) -> None:
    for site in ("site-01", "site-03"):
        done = cli("site", "audit", str(witnessed_run / "sites" / site), str(witnessed_run))
        assert done.returncode == 0, done.stdout + done.stderr


def test_a_site_statement_dropped_by_the_coordinator_is_found_by_the_site_audit(
    witnessed_run: Path, tmp_path: Path
) -> None:
    from pharmafl.audit.bundle import export

    bundle = export(witnessed_run, tmp_path / "bundle")
    lines = (bundle / "entries.jsonl").read_text().splitlines()
    mine = [
        i for i, line in enumerate(lines) if json.loads(line)["payload"].get("statement", {}).get("site") == "site-02"
    ]
    assert mine
    run_copy = tmp_path / "ledger.db"
    # the coordinator's version of the run without site-02's last statement: a rebuilt chain
    with Ledger.open(witnessed_run / "ledger.db") as ledger:
        entries = list(ledger.entries())
    with Ledger.open(run_copy, KeyStore(witnessed_run / "keys", PASSPHRASE)) as forged:
        drop = entries[mine[-1]].seq
        for e in entries[1:]:
            if e.seq == drop or e.type == "actor_key":
                continue
            forged.append("server", e.type, e.data)
        forged.checkpoint()
    done = cli("site", "audit", str(witnessed_run / "sites" / "site-02"), str(run_copy))
    assert done.returncode == 1, done.stdout + done.stderr


def test_the_run_is_built_from_cards_and_pins_them(witnessed_run: Path) -> None:
    plan = RunPlan.load(witnessed_run / "plan.json")
    consortium = json.loads((witnessed_run / "consortium.json").read_text())
    assert plan.consortium["roster_sha256"] == consortium["roster_sha256"]
    written = json.loads((witnessed_run / "plan.json").read_text())
    assert "run_dir" not in written and not any(Path(h).is_absolute() for h in written["site_homes"].values())
    with Ledger.open(witnessed_run / "ledger.db") as ledger:
        started = next(e for e in ledger.entries() if e.type == "run_started")
    assert started.data["consortium"] == plan.consortium
    assert started.data["run_id"] == plan.run_id and plan.run_id.startswith("run-")


def test_a_site_home_swapped_for_another_is_refused(witnessed_run: Path, tmp_path: Path) -> None:
    plan = RunPlan.load(witnessed_run / "plan.json")
    swapped = replace(plan, site_homes={**plan.site_homes, "site-01": str(witnessed_run / "sites" / "site-02")})
    from pharmafl.errors import PharmaflError

    with pytest.raises(PharmaflError, match="card"):
        make_site(swapped, "site-01")


@pytest.mark.slow
def test_ten_sites_on_the_nvflare_simulator_sign_and_witness_everything(
    small_davis: Path, tmp_path: Path, monkeypatch
) -> None:
    """The issue's "done when": a 10-site simulator run whose every site entry carries that site's
    own signature and every checkpoint a quorum of site cosignatures, enforced by the verifier."""
    from pharmafl.models.dti import ModelConfig
    from pharmafl.pipeline.config import DataConfig, FederationConfig, RunConfig
    from pharmafl.sites.training import TrainConfig

    monkeypatch.setenv("PHARMAFL_KEY_PASSPHRASE", PASSPHRASE)
    cfg = RunConfig(
        name="ten",
        seed=3,
        data=DataConfig(dataset=str(small_davis), sites=10, partition="iid"),
        model=ModelConfig(max_len=64, embed_dim=16, kernel_size=4, latent_dim=32),
        train=TrainConfig(batch_size=64),
        federation=FederationConfig(rounds=2, engine="nvflare", nvflare_env="sim"),
        ledger=LedgerConfig(enabled=True),
    )
    out = tmp_path / "run"
    assert run_federated(cfg, out)["status"] == "completed"
    done = verify(out)
    assert done.returncode == 0 and "quorum 6 of 10" in done.stdout, done.stdout + done.stderr
    plan = RunPlan.load(out / "plan.json")
    with Ledger.open(out / "ledger.db") as ledger:
        entries, checkpoints, cosigs = list(ledger.entries()), ledger.checkpoints(), ledger.cosignatures()
    stmts = [e.data["statement"] for e in entries if e.type == "site_update"]
    assert sorted(s["site"] for s in stmts) == sorted(list(plan.sites) * 2)
    assert {e.actor for e in entries} == {"server"} and not [e for e in entries if e.type == "witness_refused"]
    cosigned = {cp.tree_size: {c.witness for c in cosigs if c.tree_size == cp.tree_size} for cp in checkpoints}
    assert len(checkpoints) == 3 and all(w == set(plan.sites) for w in cosigned.values()), cosigned
    bare = tmp_path / "one-site-short.db"  # the verifier enforces the quorum: drop cosignatures down to 5
    copy = sqlite3.connect(bare)
    copy.execute("ATTACH DATABASE ? AS src", (str(out / "ledger.db"),))
    for table in ("ledger_entries", "ledger_checkpoints", "ledger_cosignatures"):
        copy.execute(f"CREATE TABLE {table} AS SELECT * FROM src.{table}")
    copy.execute("DELETE FROM ledger_cosignatures WHERE witness > 'site-05'")
    copy.commit()
    copy.close()
    short = verify(bare)
    assert short.returncode == 1 and "FAIL" in short.stdout, short.stdout + short.stderr
