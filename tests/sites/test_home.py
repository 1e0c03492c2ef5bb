"""A site's home: store, key, card, statements, privacy ledger, consortium acceptance."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from pharmafl.audit import messages
from pharmafl.errors import ConfigError, DataError
from pharmafl.sites import home as home_module
from pharmafl.sites.home import PASSPHRASE_ENV, PrivacyLedger, SiteHome, check_card, roster_sha256
from pharmafl.sites.privacy import epsilon_spent, split_prior
from pharmafl.sites.store import SiteStore
from pharmafl.sites.tables import file_sha256, load_dataset

ASSETS = Path(__file__).parent / "assets"
FAST = 2**14  # scrypt cost for tests (the default is 2**17)


@pytest.fixture(scope="module")
def dataset():
    return load_dataset(ASSETS)


@pytest.fixture
def home(dataset, tmp_path, monkeypatch) -> SiteHome:
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    return SiteHome.init(
        tmp_path / "site-01", "site-01", dataset, passphrase="correct horse", scrypt_n=FAST, epsilon_budget=4.0
    )


def test_init_writes_store_key_and_a_signed_card(home, tmp_path):
    path = tmp_path / "site-01"
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert sorted(p.name for p in (path / "keys").iterdir()) == ["site-01.key.json"]
    store = SiteStore.open(path / "store")
    card = json.loads((path / "site-card.json").read_text())
    assert card == home.card and check_card(card, "t") is card
    raw = bytes.fromhex(card["public_key"])
    Ed25519PublicKey.from_public_bytes(raw).verify(bytes.fromhex(card["signature"]), messages.card_message(card))
    assert card["fingerprint"] == hashlib.sha256(raw).hexdigest() and raw == home.public_key
    assert card["manifest_sha256"] == file_sha256(path / "store" / "manifest.json") == store.manifest_sha256
    train = store.rows("train")
    assert card["units"] == {
        "pair": len(train),
        "compound": store.dataset.measurements["drug_id"].iloc[train].nunique(),
    }
    assert card["counts"]["pairs"] == 12 and sum(card["counts"][s] for s in ("train", "val", "test")) == 12
    site = json.loads((path / "site.json").read_text())
    assert site["format"] == "pharmafl-site-v1" and site["site"] == "site-01" and site["epsilon_budget"] == 4.0
    assert json.loads((path / "privacy.json").read_text()) == {"format": "pharmafl-site-privacy-v1", "datasets": {}}
    assert home.store.site == "site-01" and home.store.path == path / "store"
    assert not (path / "passphrase").exists()


def test_init_refuses_a_non_empty_home(dataset, tmp_path):
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not an empty directory"):
        SiteHome.init(tmp_path / "h", "site-01", dataset, passphrase="pw", scrypt_n=FAST)
    assert [p.name for p in (tmp_path / "h").iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h"]


def test_a_failed_init_leaves_nothing(dataset, tmp_path, monkeypatch):
    def broken(sign, fields):
        raise RuntimeError("disk full")

    monkeypatch.setattr(home_module.messages, "make_card", broken)
    with pytest.raises(RuntimeError):
        SiteHome.init(tmp_path / "h", "site-01", dataset, passphrase="pw", scrypt_n=FAST)
    assert list(tmp_path.iterdir()) == []


def test_init_refuses_too_few_rows_and_a_bad_id(dataset, tmp_path):
    from pharmafl.sites.tables import DTIDataset

    tiny = DTIDataset("tiny", dataset.drugs, dataset.targets, dataset.measurements.iloc[:2])
    with pytest.raises(DataError, match="too few for train/val/test"):
        SiteHome.init(tmp_path / "h", "site-01", tiny, passphrase="pw", scrypt_n=FAST)
    with pytest.raises(ConfigError, match="site id '../x' is not valid"):
        SiteHome.init(tmp_path / "h", "../x", dataset, passphrase="pw", scrypt_n=FAST)
    assert list(tmp_path.iterdir()) == []


def test_open_checks_the_passphrase(home, tmp_path, monkeypatch):
    path = tmp_path / "site-01"
    assert SiteHome.open(path, "correct horse").card == home.card
    with pytest.raises(ConfigError, match="cannot unlock site-01's key: wrong passphrase"):
        SiteHome.open(path, "wrong")
    with pytest.raises(ConfigError, match=f"no passphrase .* set \\${PASSPHRASE_ENV}"):
        SiteHome.open(path)
    monkeypatch.setenv(PASSPHRASE_ENV, "correct horse")
    assert SiteHome.open(path).site == "site-01"


def test_simulated_home_keeps_its_passphrase_in_a_private_file(dataset, tmp_path, monkeypatch):
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    SiteHome.init(tmp_path / "sim", "site-02", dataset, simulated=True, scrypt_n=FAST)
    file = tmp_path / "sim" / "passphrase"
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert SiteHome.open(tmp_path / "sim").site == "site-02"
    monkeypatch.setenv(PASSPHRASE_ENV, "a real site's passphrase")  # not this simulated site's
    assert SiteHome.open(tmp_path / "sim").site == "site-02"
    file.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        SiteHome.open(tmp_path / "sim")


def test_open_refuses_a_card_that_is_not_the_homes(home, tmp_path):
    path = tmp_path / "site-01"
    card = dict(home.card, counts={**home.card["counts"], "pairs": 1200})
    (path / "site-card.json").write_text(json.dumps(card))
    with pytest.raises(ConfigError, match="signature does not verify"):
        SiteHome.open(path, "correct horse")
    other = messages.make_card(home._key.sign, {**home.card, "manifest_sha256": "0" * 64})
    (path / "site-card.json").write_text(json.dumps(other))
    with pytest.raises(ConfigError, match="manifest_sha256.*not this home's"):
        SiteHome.open(path, "correct horse")


def test_statements_are_signed_and_logged_before_they_are_returned(home, tmp_path):
    stmt = home.sign_statement("run-1", 3, "site_update", {"update_hash": "ab" * 32, "num_examples": 9})
    assert stmt["site"] == "site-01" and stmt["round"] == 3 and stmt["run_id"] == "run-1"
    assert stmt["payload_sha256"] == hashlib.sha256(messages.canonical(stmt["payload"]).encode()).hexdigest()
    Ed25519PublicKey.from_public_bytes(home.public_key).verify(
        bytes.fromhex(stmt["signature"]),
        messages.statement_message("run-1", 3, "site-01", "site_update", stmt["payload_sha256"]),
    )
    log = tmp_path / "site-01" / "runs" / "run-1" / "statements.jsonl"
    assert log.read_text() == messages.canonical(stmt) + "\n"
    with open(log, "a") as f:
        f.write('{"torn')  # a crash in the middle of an append
    assert home.statements("run-1") == [stmt]
    second = home.sign_statement("run-1", None, "site_declined", {"reason": "privacy budget exhausted"})
    assert home.statements("run-1") == [stmt, second] and home.runs() == ["run-1"]
    assert home.keep_dir("run-1") == tmp_path / "site-01" / "runs" / "run-1" / "kept"
    with pytest.raises(ConfigError, match="run id"):
        home.sign_statement("../escape", 1, "site_update", {})


def test_accepting_a_consortium_records_its_roster(home, dataset, tmp_path):
    other = SiteHome.init(tmp_path / "site-02", "site-02", dataset, passphrase="pw2", scrypt_n=FAST)
    cards = {"site-01": home.card, "site-02": other.card}
    consortium = {"format": "pharmafl-consortium-v1", "cards": cards, "roster_sha256": roster_sha256(cards)}
    assert home.accept_consortium(consortium) == consortium["roster_sha256"]
    assert home.accept_consortium(consortium) == consortium["roster_sha256"]
    assert home.accepted_rosters() == [consortium["roster_sha256"]]
    impostor = messages.make_card(other._key.sign, {**home.card, "public_key": other.public_key.hex()})
    swapped = {"site-01": impostor, "site-02": other.card}
    with pytest.raises(ConfigError, match="altered copy of this site's card"):
        home.accept_consortium({"cards": swapped, "roster_sha256": roster_sha256(swapped)})
    with pytest.raises(ConfigError, match="roster_sha256"):
        home.accept_consortium({**consortium, "roster_sha256": "0" * 64})
    assert home.accepted_rosters() == [consortium["roster_sha256"]]


def test_privacy_ledger_keeps_each_runs_history_per_dataset(tmp_path):
    ledger = PrivacyLedger(tmp_path / "privacy.json", budget=3.0)
    ledger.record("run-a", "m1", "rdp", 1e-4, [(1.0, 0.1, 50)], 1.2)
    ledger.record("run-b", "m1", "rdp", 1e-4, [(1.5, 0.1, 20)], 0.4)
    ledger.record("run-c", "m1", "rdp", 1e-3, [(1.0, 0.1, 10)], 0.3)
    ledger.record("run-a", "m2", "rdp", 1e-4, [(1.0, 0.1, 5)], 0.1)
    assert ledger.prior_history("m1", "rdp", 1e-4) == [(1.0, 0.1, 50), (1.5, 0.1, 20)]
    assert ledger.prior_history("m1", "rdp", 1e-4, exclude="run-b") == [(1.0, 0.1, 50)]
    history, other = ledger.prior("m1", "rdp", 1e-4)
    assert other == pytest.approx(epsilon_spent([(1.0, 0.1, 10)], 1e-3, "rdp"))
    assert ledger.history_of("m1", "run-a", "rdp", 1e-4) == [(1.0, 0.1, 50)]
    assert ledger.history_of("m1", "run-z", "rdp", 1e-4) == []
    with pytest.raises(ConfigError, match="cannot be carried over"):
        ledger.history_of("m1", "run-a", "prv", 1e-4)
    doc = json.loads((tmp_path / "privacy.json").read_text())
    assert doc["datasets"]["m1"]["runs"]["run-c"] == {
        "accountant": "rdp",
        "delta": 1e-3,
        "history": [[1.0, 0.1, 10]],
        "epsilon": 0.3,
    }


def test_split_prior_composes_like_runs_and_sums_the_others():
    runs = {
        "a": {"accountant": "rdp", "delta": 1e-5, "history": [[1.0, 0.01, 100]]},
        "b": {"accountant": "prv", "delta": 1e-5, "history": [[1.0, 0.01, 100]]},
        "c": {"accountant": "rdp", "delta": 1e-5, "history": [[2.0, 0.01, 10]]},
    }
    same, other = split_prior(runs, "rdp", 1e-5)
    assert same == [(1.0, 0.01, 100), (2.0, 0.01, 10)]
    assert other == pytest.approx(epsilon_spent([(1.0, 0.01, 100)], 1e-5, "prv"))
    assert split_prior({}, "rdp", 1e-5) == ([], 0)
