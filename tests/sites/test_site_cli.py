"""``pharmafl site``: init, card, accept, and the site's own audit of a run's ledger."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pharmafl.audit import messages, rfc9162
from pharmafl.audit.keys import raw_public_key
from pharmafl.audit.merkle import MerkleTree
from pharmafl.pipeline.cli import main
from pharmafl.pipeline.consortium import init_consortium, load_consortium, pinned
from pharmafl.sites.home import PASSPHRASE_ENV, SiteHome, check_card

ASSETS = Path(__file__).parent / "assets"
RUN = "davis-1site-20261201-120000-3fa9c2d1"


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --- init, card, accept ----------------------------------------------------------------------


def test_site_init_prints_the_fingerprint_of_a_card_that_verifies(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(PASSPHRASE_ENV, "site secret")
    home = tmp_path / "home"
    assert (
        main(
            [
                "site",
                "init",
                str(ASSETS),
                "--id",
                "site-07",
                "--home",
                str(home),
                "--epsilon-budget",
                "6",
                "--seed",
                "3",
            ]
        )
        == 0
    )
    card = check_card(json.loads((home / "site-card.json").read_text()), "t")
    assert capsys.readouterr().out.strip() == card["fingerprint"] and card["site"] == "site-07"
    assert json.loads((home / "site.json").read_text())["epsilon_budget"] == 6.0
    assert [p.name for p in (home / "keys").iterdir()] == ["site-07.key.json"]
    assert main(["site", "card", str(home)]) == 0
    assert json.loads(capsys.readouterr().out) == card
    assert main(["site", "init", str(ASSETS), "--id", "site-07", "--home", str(home)]) == 2
    assert "not an empty directory" in _one_error_line(capsys.readouterr().err)


def test_site_init_needs_the_passphrase(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    assert main(["site", "init", str(ASSETS), "--id", "site-01", "--home", str(tmp_path / "h")]) == 2
    assert f"set ${PASSPHRASE_ENV}" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "h").exists()


def test_bad_tables_are_one_clear_error_and_nothing_is_written(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(PASSPHRASE_ENV, "pw")
    tables = tmp_path / "tables"
    tables.mkdir()
    for src, dst in (
        ("drugs.csv", "drugs.csv"),
        ("targets.csv", "targets.csv"),
        ("measurements_unknown_drug.csv", "measurements.csv"),
    ):
        shutil.copy(ASSETS / src, tables / dst)
    assert main(["site", "init", str(tables), "--id", "site-01", "--home", str(tmp_path / "h")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"{tables / 'measurements.csv'}, row 7, column 'drug_id'" in line and "2244" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tables"]


def test_site_accept_records_the_roster(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(PASSPHRASE_ENV, "pw")
    from pharmafl.sites.tables import load_dataset

    home = SiteHome.init(tmp_path / "home", "site-01", load_dataset(ASSETS), passphrase="pw", scrypt_n=2**14)
    path = init_consortium([home.path / "site-card.json"], tmp_path / "coord")
    assert main(["site", "accept", str(home.path), str(path)]) == 0
    digest = load_consortium(path)["roster_sha256"]
    assert capsys.readouterr().out.strip() == f"site-01 accepted roster {digest}"
    assert json.loads((home.path / "consortia.json").read_text()) == {"accepted": [digest]}


# --- the site's audit --------------------------------------------------------------------------


class Log:
    """The coordinator's ledger of one run, as a list of (actor, type, payload), chained and
    signed on demand (the formats of audit/records.py)."""

    def __init__(self, consortium: dict):
        self.key = Ed25519PrivateKey.generate()
        self.items = [("server", "run_started", {"run_id": RUN, "consortium": pinned(consortium)})]

    def append(self, type_: str, payload: dict) -> None:
        self.items.append(("server", type_, payload))

    def entries(self, items=None) -> list[dict]:
        out, prev = [], messages.GENESIS
        for seq, (actor, type_, payload) in enumerate(items or self.items):
            ts = f"2026-12-01T12:00:{seq:02d}.000000Z"
            h = hashlib.sha256(
                messages.entry_message(seq, ts, actor, type_, messages.canonical(payload), prev)
            ).hexdigest()
            out.append(
                {
                    "actor": actor,
                    "entry_hash": h,
                    "payload": payload,
                    "prev_hash": prev,
                    "seq": seq,
                    "signature": self.key.sign(bytes.fromhex(h)).hex(),
                    "ts": ts,
                    "type": type_,
                }
            )
            prev = h
        return out

    def request(self, old_size: int) -> dict:
        entries = self.entries()
        tree = MerkleTree(
            rfc9162.leaf_hash(bytes.fromhex(e["entry_hash"]) + bytes.fromhex(e["signature"])) for e in entries
        )
        cp = {"root_hash": tree.root().hex(), "signer": "server", "tree_size": len(tree), "ts": entries[-1]["ts"]}
        cp["signature"] = self.key.sign(
            messages.checkpoint_message(len(tree), cp["root_hash"], cp["ts"], "server")
        ).hex()
        request = {
            "origin": messages.origin_of(RUN),
            "checkpoint": cp,
            "log_key": raw_public_key(self.key).hex(),
            "old_size": old_size,
            "proof": [h.hex() for h in tree.consistency_proof(old_size)],
        }
        if old_size == 0:
            request["anchor"] = {"entry": entries[0], "proof": [h.hex() for h in tree.inclusion_proof(0)]}
        return request

    def export(self, out: Path, entries: list[dict] | None = None) -> Path:
        out.mkdir()
        lines = entries if entries is not None else self.entries()
        (out / "entries.jsonl").write_text("".join(messages.canonical(e) + "\n" for e in lines))
        return out


@pytest.fixture
def home(tmp_path) -> SiteHome:
    from pharmafl.sites.tables import load_dataset

    home = SiteHome.init(tmp_path / "home", "site-01", load_dataset(ASSETS), passphrase="pw", scrypt_n=2**14)
    home.accept_consortium(load_consortium(init_consortium([home.path / "site-card.json"], tmp_path / "coord")))
    return home


def _run(home: SiteHome, tmp_path: Path, embed=lambda stmt: stmt) -> Log:
    """Two rounds; the site signs two statements a round and its witness cosigns each round's
    end. ``embed`` is what the coordinator does with each statement (None: leaves it out)."""
    log, witness, size = Log(load_consortium(tmp_path / "coord")), home.witness(), 0
    for rnd in (1, 2):
        log.append("round_started", {"round": rnd})
        for type_, payload in (
            ("site_update", {"update_hash": f"{rnd:064x}", "num_examples": 9}),
            ("clip", {"clip_norm": 1.0, "clipped": rnd, "total": 9}),
        ):
            stmt = embed(home.sign_statement(RUN, rnd, type_, payload))
            if stmt is not None:
                log.append(type_, {"statement": stmt, "accepted": True, "problem": None})
        cosig = witness.add_checkpoint(log.request(size))
        size = cosig["tree_size"]
    log.append("run_ended", {"status": "completed"})
    return log


def _audit(home: SiteHome, bundle: Path, capsys) -> tuple[int, str]:
    code = main(["site", "audit", str(home.path), str(bundle)])
    out = capsys.readouterr()
    return code, out.out.strip() if code == 0 else _one_error_line(out.err)


def test_audit_passes_on_a_consistent_ledger(home, tmp_path, capsys):
    bundle = _run(home, tmp_path).export(tmp_path / "bundle")
    code, line = _audit(home, bundle, capsys)
    assert code == 0 and line.startswith(f"OK: site-01: 4 signed statement(s) of 1 run(s) ({RUN})")
    assert "size 7" in line


def test_audit_names_a_missing_statement(home, tmp_path, capsys):
    log = _run(home, tmp_path, embed=lambda s: None if (s["round"], s["type"]) == (2, "clip") else s)
    code, line = _audit(home, log.export(tmp_path / "bundle"), capsys)
    assert code == 1 and f"clip statement of round 2 in run {RUN} is missing from the ledger" in line


def test_audit_names_an_altered_statement(home, tmp_path, capsys):
    def alter(stmt):
        if stmt["type"] == "site_update" and stmt["round"] == 1:
            return {**stmt, "payload": {**stmt["payload"], "num_examples": 900}}
        return stmt

    code, line = _audit(home, _run(home, tmp_path, embed=alter).export(tmp_path / "bundle"), capsys)
    assert code == 1 and f"site_update statement of round 1 in run {RUN} was altered: entry 2 embeds" in line


def test_audit_refuses_a_ledger_truncated_below_the_witnessed_head(home, tmp_path, capsys):
    log = _run(home, tmp_path)
    code, line = _audit(home, log.export(tmp_path / "bundle", log.entries()[:5]), capsys)
    assert code == 1 and "holds 5 entries, fewer than the 7 the site's witness cosigned: it was truncated" in line


def test_audit_refuses_a_split_view(home, tmp_path, capsys):
    """The ledger shown to the auditor differs from the one the witness cosigned (same size,
    every statement verbatim, a consistent chain), e.g. a rewritten round_started."""
    log = _run(home, tmp_path)
    other = [
        (a, t, {"round": 1, "lr": 0.5}) if t == "round_started" and p["round"] == 1 else (a, t, p)
        for a, t, p in log.items
    ]
    code, line = _audit(home, log.export(tmp_path / "bundle", log.entries(other)), capsys)
    assert code == 1 and "root at size 7 is" in line and "a split view or a rewritten log" in line


def test_audit_refuses_an_entry_altered_after_the_fact(home, tmp_path, capsys):
    log = _run(home, tmp_path)
    entries = log.entries()
    entries[3]["payload"] = {**entries[3]["payload"], "accepted": False}
    code, line = _audit(home, log.export(tmp_path / "bundle", entries), capsys)
    assert code == 1 and "ledger entry 3 (clip): entry_hash does not match its contents" in line


def test_audit_refuses_a_statement_beyond_the_witnessed_head(home, tmp_path, capsys):
    log = _run(home, tmp_path)
    late = home.sign_statement(RUN, 3, "site_update", {"update_hash": "f" * 64, "num_examples": 9})
    log.append("site_update", {"statement": late, "accepted": True, "problem": None})
    code, line = _audit(home, log.export(tmp_path / "bundle"), capsys)
    assert code == 1 and "is in entry 8, beyond the head of size 7" in line


def test_audit_of_a_ledger_of_other_runs(home, tmp_path, capsys):
    log = _run(home, tmp_path)
    entries = log.entries([("server", "run_started", {"run_id": "another-run"})])
    code, line = _audit(home, log.export(tmp_path / "bundle", entries), capsys)
    assert code == 1 and "records none of site-01's runs" in line


def test_audit_of_something_that_is_no_ledger(home, tmp_path, capsys):
    code, line = _audit(home, tmp_path / "missing", capsys)
    assert code == 2 and "no such bundle, run directory or ledger database" in line
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "entries.jsonl").write_text('{"seq": 0}\n')
    code, line = _audit(home, tmp_path / "bundle", capsys)
    assert code == 1 and "entry 0 is malformed" in line
