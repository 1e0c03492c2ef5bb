"""The coordinator's roster: site cards checked, duplicates refused, consortium.json re-checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pharmafl.audit import messages
from pharmafl.errors import ConfigError
from pharmafl.pipeline.cli import main
from pharmafl.pipeline.consortium import init_consortium, load_card, load_consortium, pinned
from pharmafl.sites.home import SiteHome, roster_sha256
from pharmafl.sites.tables import load_dataset

ASSETS = Path(__file__).parents[1] / "sites" / "assets"


@pytest.fixture(scope="module")
def homes(tmp_path_factory) -> list[SiteHome]:
    root, ds = tmp_path_factory.mktemp("homes"), load_dataset(ASSETS)
    return [SiteHome.init(root / s, s, ds, passphrase=f"pw-{s}", scrypt_n=2**14) for s in ("site-01", "site-02")]


def _card(tmp_path: Path, name: str, card: dict) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(card))
    return path


def test_consortium_init_writes_the_roster(homes, tmp_path):
    out = init_consortium([h.path / "site-card.json" for h in reversed(homes)], tmp_path / "coord")
    doc = json.loads(out.read_text())
    assert out == tmp_path / "coord" / "consortium.json" and out.read_text() == messages.canonical(doc) + "\n"
    assert doc["format"] == "pharmafl-consortium-v1" and list(doc["cards"]) == ["site-01", "site-02"]
    assert doc["cards"]["site-02"] == homes[1].card
    assert doc["roster_sha256"] == roster_sha256(doc["cards"])
    assert load_consortium(tmp_path / "coord") == doc == load_consortium(out)
    assert pinned(doc) == {"cards": doc["cards"], "roster_sha256": doc["roster_sha256"]}
    with pytest.raises(ConfigError, match="a consortium is already there"):
        init_consortium([homes[0].path / "site-card.json"], tmp_path / "coord")


def test_a_tampered_card_is_refused(homes, tmp_path):
    card = dict(homes[0].card, units={"pair": 5000, "compound": 400})
    with pytest.raises(ConfigError, match="signature does not verify"):
        init_consortium([_card(tmp_path, "c", card)], tmp_path / "out")
    with pytest.raises(ConfigError, match="fingerprint"):
        load_card(_card(tmp_path, "f", dict(homes[0].card, fingerprint="0" * 64)))
    with pytest.raises(ConfigError, match="not a site card"):
        load_card(_card(tmp_path, "x", {"site": "site-01"}))
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ConfigError, match="unreadable site card"):
        load_card(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="is a directory"):
        load_card(tmp_path)
    assert not (tmp_path / "out").exists()


def test_duplicate_ids_and_keys_are_refused(homes, tmp_path):
    card = homes[0].path / "site-card.json"
    with pytest.raises(ConfigError, match="a second card for site 'site-01'"):
        init_consortium([card, card], tmp_path / "out")
    same_key = messages.make_card(homes[0]._key.sign, {**homes[0].card, "site": "site-03"})
    with pytest.raises(ConfigError, match="'site-01' and 'site-03' have the same public key"):
        init_consortium([card, _card(tmp_path, "dup", same_key)], tmp_path / "out")
    assert not (tmp_path / "out" / "consortium.json").exists()


def test_load_consortium_rechecks_everything(homes, tmp_path):
    out = init_consortium([h.path / "site-card.json" for h in homes], tmp_path / "coord")
    doc = json.loads(out.read_text())
    altered = {**doc, "cards": {**doc["cards"], "site-02": dict(doc["cards"]["site-02"], created="2020")}}
    out.write_text(json.dumps(altered))
    with pytest.raises(ConfigError, match="card 'site-02'.*signature does not verify"):
        load_consortium(out)
    dropped = {**doc, "cards": {"site-01": doc["cards"]["site-01"]}}
    out.write_text(json.dumps(dropped))
    with pytest.raises(ConfigError, match="roster_sha256 .* is not the hash of its cards"):
        load_consortium(out)
    out.write_text(json.dumps({**doc, "extra": 1}))
    with pytest.raises(ConfigError, match="not a pharmafl-consortium-v1 file"):
        load_consortium(out)


def test_consortium_cli(homes, tmp_path, capsys):
    args = ["consortium", "init", "--out", str(tmp_path / "c"), *(str(h.path / "site-card.json") for h in homes)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"site-01  {homes[0].fingerprint}" in out and "roster_sha256 " in out
    assert main(args) == 2  # a bad --out: a usage error
    err = capsys.readouterr().err
    assert "a consortium is already there" in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2
