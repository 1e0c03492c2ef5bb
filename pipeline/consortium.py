"""The coordinator's view of a consortium: the roster of site cards (``consortium.json``).

A site introduces itself by its card (``pharmafl site init`` writes ``site-card.json``: id,
Ed25519 public key and fingerprint, manifest hash, counts; no rows). The coordinator
collects the cards into::

    HOME/consortium.json  {"format": "pharmafl-consortium-v1", "cards": {site: card},
                           ["parties": {party: party card},]
                           "roster_sha256": sha256(JCS(cards)), or with parties
                                            sha256(JCS({"parties": ..., "sites": cards}))}

Aggregation parties (``pharmafl party init``) join the same way, by their party cards
(``--party-card``): a site seals its shares only to the party keys of a roster it accepted.

Every card's fingerprint and self-signature are checked, and two cards with the same site
id or the same key are refused. A run pins the roster in its ``run_started`` entry; each
site's witness cosigns only a log that pins a roster the site accepted (``pharmafl site
accept``). Formats: ``docs/trust-domains.md``, "Consortium".
"""

from __future__ import annotations

import json
from pathlib import Path

from pharmafl.audit.messages import CONSORTIUM_FORMAT, canonical
from pharmafl.errors import ConfigError
from pharmafl.fileio import write_bytes_atomic
from pharmafl.sites.home import check_card, read_json, roster_sha256
from pharmafl.sites.party_card import check_parties, check_party_card

CONSORTIUM_FILE = "consortium.json"


def load_card(path: Path) -> dict:
    """The site card at ``path``, its format, fingerprint and self-signature checked."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory; give the site's site-card.json")
    return check_card(read_json(path, "site card"), str(path))


def _check_roster(cards: dict, where: str) -> None:
    keys: dict[str, str] = {}
    for name, card in cards.items():
        if card["site"] != name:
            raise ConfigError(f"{where}: the card listed as {name!r} is {card['site']!r}'s")
        other = keys.setdefault(card["public_key"], name)
        if other != name:
            raise ConfigError(
                f"{where}: sites {other!r} and {name!r} have the same public key "
                f"{card['public_key'][:16]}...; each site needs its own key"
            )


def init_consortium(cards: list[Path], out: Path, party_cards: list[Path] = ()) -> Path:
    """Write ``out/consortium.json`` from the site cards at ``cards`` and the aggregation
    party cards at ``party_cards``; return its path.

    Refuses an unreadable or altered card, two cards of one site id or one key, no card at
    all, and an ``out`` that already holds a consortium.
    """
    out = Path(out)
    target = out / CONSORTIUM_FILE
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a directory; choose a consortium home directory")
    if target.exists():
        raise ConfigError(f"{target}: a consortium is already there; choose a new --out")
    if not cards:
        raise ConfigError("no site card given: pass each site's SITE_HOME/site-card.json (consortium init CARD...)")
    roster: dict[str, dict] = {}
    for path in cards:
        card = load_card(path)
        if card["site"] in roster:
            raise ConfigError(f"{path}: a second card for site {card['site']!r}; each site joins once")
        roster[card["site"]] = card
    _check_roster(roster, "consortium")
    roster = dict(sorted(roster.items()))
    parties: dict[str, dict] = {}
    for path in party_cards:
        card = check_party_card(read_json(path, "party card"), str(path))
        if card["party"] in parties or card["party"] in roster:
            raise ConfigError(f"{path}: party id {card['party']!r} is already taken by another card; ids are unique")
        parties[card["party"]] = card
    parties = check_parties(dict(sorted(parties.items())), "consortium")
    doc = {"format": CONSORTIUM_FORMAT, "cards": roster, "roster_sha256": roster_sha256(roster, parties)}
    if parties:
        doc["parties"] = parties
    out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(target, (canonical(doc) + "\n").encode())
    return target


def load_consortium(path: Path) -> dict:
    """``consortium.json`` (or a directory holding it) with every card and the roster hash
    re-checked; ``{"format", "cards", "roster_sha256"}``."""
    path = Path(path)
    if path.is_dir():
        path = path / CONSORTIUM_FILE
    doc = read_json(path, "consortium")
    if (
        not isinstance(doc, dict)
        or sorted(set(doc) - {"parties"}) != ["cards", "format", "roster_sha256"]
        or doc["format"] != CONSORTIUM_FORMAT
        or not isinstance(doc["cards"], dict)
    ):
        raise ConfigError(
            f"{path}: not a {CONSORTIUM_FORMAT} file (fields format, cards, [parties,] roster_sha256); "
            "write it with pharmafl consortium init"
        )
    if not doc["cards"]:
        raise ConfigError(f"{path}: the consortium holds no site card")
    for name, card in doc["cards"].items():
        check_card(card, f"{path}: card {name!r}")
    _check_roster(doc["cards"], str(path))
    check_parties(doc.get("parties", {}), str(path))
    if set(doc.get("parties", {})) & set(doc["cards"]):
        raise ConfigError(f"{path}: a party and a site share an id; ids are unique")
    digest = roster_sha256(doc["cards"], doc.get("parties"))
    if doc["roster_sha256"] != digest:
        raise ConfigError(
            f"{path}: roster_sha256 {doc['roster_sha256']!r} is not the hash of its cards ({digest}); "
            "the file was altered"
        )
    return doc


def pinned(consortium: dict) -> dict:
    """What a run's ``run_started`` entry carries: ``{"cards", ["parties",] "roster_sha256"}``."""
    out = {"cards": json.loads(canonical(consortium["cards"])), "roster_sha256": consortium["roster_sha256"]}
    if consortium.get("parties"):
        out["parties"] = json.loads(canonical(consortium["parties"]))
    return out
