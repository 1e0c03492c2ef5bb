"""A site's home: its data store, its signing key, its privacy ledger, what it signed, its witness.

``SITE_HOME`` (``pharmafl site init``; formats in ``docs/trust-domains.md``)::

    site.json        {"format": "pharmafl-site-v1", "site", "epsilon_budget", "delta", "created"}
    site-card.json   the public card: id, public key and fingerprint, manifest hash, counts, units
    store/           the site's dataset store (sites/store.py), its local train/val/test folds
    keys/            the one Ed25519 key of the site, under the site's passphrase
    privacy.json     ε spent per dataset manifest, per run (:class:`PrivacyLedger`)
    consortia.json   {"accepted": [roster_sha256, ...]}: the rosters the site agreed to
    witness/         the site's witness of each run's log (audit/witness.py)
    runs/<run_id>/   statements.jsonl (every statement the site signed, in order), kept/

The key never leaves the home: what leaves is the card and signed statements. The home is
written into a staging directory and renamed into place, so a failed ``init`` leaves nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
import shutil
import stat
import tempfile
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pharmafl.audit import messages
from pharmafl.audit.keys import DEFAULT_SCRYPT_N, KeyStore, raw_public_key
from pharmafl.audit.witness import Witness
from pharmafl.errors import ConfigError, DataError, Location, PharmaflError
from pharmafl.fileio import fsync_dir, write_bytes_atomic
from pharmafl.sites.party_card import check_parties
from pharmafl.sites.privacy import History, split_prior
from pharmafl.sites.store import LOCAL_SPLITS, SiteStore, check_site_rows, store_units, write_site_store
from pharmafl.sites.tables import DTIDataset
from pharmafl.sites.validation import MODEL_WINDOW

SITE_FORMAT = "pharmafl-site-v1"
CARD_FORMAT = "pharmafl-site-card-v1"
PRIVACY_FORMAT = "pharmafl-site-privacy-v1"
PASSPHRASE_ENV = "PHARMAFL_SITE_PASSPHRASE"
PASSPHRASE_FILE = "passphrase"
SITE_FILE = "site.json"
CARD_FILE = "site-card.json"
STATEMENTS = "statements.jsonl"
CARD_FIELDS = (
    "counts",
    "created",
    "fingerprint",
    "format",
    "manifest_sha256",
    "public_key",
    "signature",
    "site",
    "units",
)
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_HEX = re.compile(r"[0-9a-f]+")


def check_id(value: Any, what: str) -> str:
    """Refuse a site or run id that cannot name a directory and a ledger actor."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise ConfigError(
            f"{what} {value!r} is not valid: use 1-128 letters, digits and '._-', "
            "starting with a letter or digit (e.g. 'site-01')"
        )
    return value


def _hex(value: Any, length: int) -> bool:
    return isinstance(value, str) and len(value) == length and bool(_HEX.fullmatch(value))


def _counts(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and type(v) is int and v >= 0 for k, v in value.items())


def check_card(card: Any, where: str) -> dict:
    """``card`` if it is a well-formed site card whose fingerprint and self-signature hold.

    Raises :class:`ConfigError` naming ``where`` and the first problem.
    """
    if not isinstance(card, dict) or tuple(sorted(card)) != CARD_FIELDS:
        got = sorted(card) if isinstance(card, dict) else type(card).__name__
        raise ConfigError(f"{where}: not a site card: expected exactly the fields {list(CARD_FIELDS)}, got {got}")
    if card["format"] != CARD_FORMAT:
        raise ConfigError(f"{where}: card format {card['format']!r}, expected {CARD_FORMAT!r}")
    check_id(card["site"], f"{where}: site id")
    if not _hex(card["public_key"], 64) or not _hex(card["signature"], 128) or not _hex(card["manifest_sha256"], 64):
        raise ConfigError(f"{where}: public_key (64), signature (128) and manifest_sha256 (64) must be lowercase hex")
    if (
        not isinstance(card["created"], str)
        or not _counts(card["counts"])
        or not _counts(card["units"])
        or set(card["units"]) != {"pair", "compound"}
    ):
        raise ConfigError(
            f"{where}: card fields created (text), counts and units ({{'pair', 'compound'}}: "
            "non-negative integers) are malformed"
        )
    raw = bytes.fromhex(card["public_key"])
    if hashlib.sha256(raw).hexdigest() != card["fingerprint"]:
        raise ConfigError(
            f"{where}: fingerprint {card['fingerprint']!r} is not the SHA-256 of the card's public key "
            f"({hashlib.sha256(raw).hexdigest()}); the card was altered"
        )
    try:
        Ed25519PublicKey.from_public_bytes(raw).verify(bytes.fromhex(card["signature"]), messages.card_message(card))
    except (InvalidSignature, ValueError):
        raise ConfigError(
            f"{where}: the card's signature does not verify under its public key; the card was "
            f"altered after {card['site']} signed it"
        ) from None
    return card


def roster_sha256(cards: dict, parties: dict | None = None) -> str:
    """What a consortium pins (:func:`pharmafl.audit.messages.roster_sha256`)."""
    return messages.roster_sha256(cards, parties)


def read_json(path: Path, what: str) -> Any:
    """Parsed JSON of ``path``, or one clear :class:`ConfigError` naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no {what} here") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable {what} ({exc})") from None


def _write_json(path: Path, value: Any) -> None:
    write_bytes_atomic(path, (json.dumps(value, indent=1, sort_keys=True) + "\n").encode())


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def append_line(path: Path, line: str) -> None:
    """Append one line to ``path`` and fsync it before returning.

    A crash mid-write can leave a torn last line (no newline); it was never acknowledged, so
    it is cut off before the next append (:func:`read_lines` ignores it too).
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    new = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = os.pread(fd, size, 0)
            os.ftruncate(fd, data.rfind(b"\n") + 1)
        data = (line + "\n").encode()
        while data:
            data = data[os.write(fd, data) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    if new:
        fsync_dir(path.parent)


def read_lines(path: Path) -> list[dict]:
    """The complete JSON lines of ``path`` (a torn last line is ignored)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    out = []
    for i, line in enumerate(text.split("\n")[:-1], 1):
        try:
            out.append(json.loads(line))
        except ValueError as exc:
            raise DataError(f"not JSON ({exc})", Location(path, row=i), "restore the file from backup") from None
    return out


class PrivacyLedger:
    """ε a site spent, per dataset (store manifest SHA-256) and per run, in ``privacy.json``.

    ``budget`` is the site's own ε budget across runs (``site.json``), ``None`` when the site
    leaves it to each run's plan.
    """

    def __init__(self, path: Path, *, budget: float | None = None):
        self.path, self.budget = Path(path), budget

    def _read(self) -> dict:
        if not self.path.exists():
            return {"format": PRIVACY_FORMAT, "datasets": {}}
        doc = read_json(self.path, "privacy ledger")
        datasets = doc.get("datasets") if isinstance(doc, dict) else None
        if not isinstance(datasets, dict) or doc.get("format") != PRIVACY_FORMAT:
            raise ConfigError(f"{self.path}: not a {PRIVACY_FORMAT} privacy ledger; restore it from backup")
        return doc

    def runs(self, manifest: str) -> dict[str, dict]:
        """``{run_id: {"accountant", "delta", "history", "epsilon"}}`` on the dataset ``manifest``."""
        runs = self._read()["datasets"].get(manifest, {}).get("runs", {})
        for run_id, rec in runs.items():
            if not (
                isinstance(rec, dict)
                and isinstance(rec.get("history"), list)
                and "accountant" in rec
                and "delta" in rec
            ):
                raise ConfigError(
                    f"{self.path}: run {run_id!r} on dataset {manifest[:12]} is malformed; "
                    "restore the privacy ledger from backup"
                )
        return runs

    def prior(
        self, manifest: str, accountant: str, delta: float, *, exclude: str | None = None
    ) -> tuple[History, float]:
        """What runs other than ``exclude`` spent on ``manifest``: the history that composes with
        this run's (same accountant and δ), and the ε of the others, summed (:func:`split_prior`)."""
        runs = {k: v for k, v in self.runs(manifest).items() if k != exclude}
        return split_prior(runs, accountant, delta)

    def prior_history(self, manifest: str, accountant: str, delta: float, *, exclude: str | None = None) -> History:
        """The histories of earlier runs on ``manifest`` under ``accountant`` and ``delta``."""
        return self.prior(manifest, accountant, delta, exclude=exclude)[0]

    def history_of(self, manifest: str, run_id: str, accountant: str, delta: float) -> History:
        """What run ``run_id`` itself already spent (a site restarted mid-run); [] if nothing."""
        rec = self.runs(manifest).get(run_id)
        if rec is None:
            return []
        if (rec["accountant"], rec["delta"]) != (accountant, delta):
            raise ConfigError(
                f"{self.path}: run {run_id!r} recorded accountant {rec['accountant']!r} at δ = {rec['delta']}, this "
                f"run plans {accountant!r} at δ = {delta}; the run's spent budget cannot be carried over"
            )
        return [tuple(h) for h in rec["history"]]

    def record(
        self, run_id: str, manifest: str, accountant: str, delta: float, history: History, epsilon: float
    ) -> None:
        """Set run ``run_id``'s history and ε on ``manifest`` (atomic: tmp + fsync + rename)."""
        doc = self._read()
        dataset = doc["datasets"].setdefault(manifest, {"runs": {}})
        dataset["runs"][run_id] = {
            "accountant": accountant,
            "delta": delta,
            "history": [list(h) for h in history],
            "epsilon": float(epsilon),
        }
        _write_json(self.path, doc)


def home_passphrase(home: Path, given: str | None, env: str = PASSPHRASE_ENV, what: str = "the site key") -> str:
    """``given``, else a simulated home's own ``passphrase`` file (its random passphrase is the
    only right one, whatever the environment says), else ``$env`` (a site's or a party's home)."""
    if given:
        return given
    file = home / PASSPHRASE_FILE
    if file.is_file():
        if stat.S_IMODE(file.stat().st_mode) & 0o077:
            raise ConfigError(f"{file}: readable by others (mode {stat.S_IMODE(file.stat().st_mode):o}); chmod 600 it")
        return file.read_text(encoding="utf-8").strip()
    if os.environ.get(env):
        return os.environ[env]
    raise ConfigError(f"{home}: no passphrase for {what}: set ${env} to its passphrase")


class SiteHome:
    """An opened site home (:meth:`init` creates one, :meth:`open` opens one)."""

    def __init__(self, path: Path, config: dict, card: dict, store: SiteStore, key: Ed25519PrivateKey):
        self.path, self.config, self.card, self.store, self._key = Path(path), config, card, store, key
        self.site: str = config["site"]
        self.public_key: bytes = raw_public_key(key)

    def __repr__(self) -> str:
        return f"SiteHome({str(self.path)!r}, site={self.site!r})"

    @property
    def fingerprint(self) -> str:
        return self.card["fingerprint"]

    @property
    def epsilon_budget(self) -> float | None:
        return self.config.get("epsilon_budget")

    @classmethod
    def init(
        cls,
        home: Path,
        site: str,
        dataset: DTIDataset,
        *,
        passphrase: str | None = None,
        simulated: bool = False,
        val_fraction: float = 0.1,
        seed: int = 0,
        epsilon_budget: float | None = None,
        delta: float | None = None,
        partition: dict | None = None,
        scrypt_n: int = DEFAULT_SCRYPT_N,
        max_len: int = MODEL_WINDOW,
    ) -> SiteHome:
        """Create the home of ``site`` holding ``dataset`` (validated tables) at ``home``.

        Splits the rows into local train/val/test folds (DeepDTA's test fold stays test),
        writes the store, generates the site's key under ``passphrase`` (``simulated``: a
        random one, kept in ``home/passphrase``, mode 0600), and signs the card. Refuses a
        non-empty ``home``; on any error nothing is left behind. ``max_len``: the model window
        (``model.max_len``) the store's manifest counts cut target sequences against.
        """
        home = Path(home)
        check_id(site, "site id")
        if home.exists() and (not home.is_dir() or any(home.iterdir())):
            raise ConfigError(f"{home}: exists and is not an empty directory; choose a new site home")
        if not passphrase:
            if not simulated:
                raise ConfigError(f"no passphrase for {site}'s key: set ${PASSPHRASE_ENV}")
            passphrase = secrets.token_urlsafe(32)
        if not (isinstance(val_fraction, (int, float)) and 0 < val_fraction < 1):
            raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
        budget_ok = isinstance(epsilon_budget, (int, float)) and math.isfinite(epsilon_budget) and epsilon_budget > 0
        if epsilon_budget is not None and not budget_ok:
            raise ConfigError(f"epsilon_budget must be a finite number > 0, got {epsilon_budget!r}")
        if delta is not None and not (isinstance(delta, (int, float)) and 0 < delta < 1):
            raise ConfigError(f"delta must be in the open interval (0, 1), got {delta!r}")
        rows = np.arange(len(dataset.measurements))
        check_site_rows(dataset, rows, site, Location(dataset.name), "give the site more measurements")
        home.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{home.name}.init-", dir=home.parent))  # mode 0700
        try:
            write_site_store(
                dataset,
                rows,
                staging / "store",
                site=site,
                val_fraction=val_fraction,
                seed=seed,
                partition=partition,
                max_len=max_len,
            )
            store = replace(SiteStore.open(staging / "store"), site=site)
            key = KeyStore(staging / "keys", passphrase, scrypt_n=scrypt_n, allowed={site}).get_or_create(site)
            created = _now()
            config = {
                "format": SITE_FORMAT,
                "site": site,
                "epsilon_budget": epsilon_budget,
                "delta": delta,
                "created": created,
            }
            card = messages.make_card(key.sign, _card_fields(site, store, raw_public_key(key), created))
            _write_json(staging / SITE_FILE, config)
            _write_json(staging / CARD_FILE, card)
            _write_json(staging / "privacy.json", {"format": PRIVACY_FORMAT, "datasets": {}})
            _write_json(staging / "consortia.json", {"accepted": []})
            if simulated:
                write_bytes_atomic(staging / PASSPHRASE_FILE, passphrase.encode())  # mkstemp: mode 0600
            fsync_dir(staging)
            os.replace(staging, home)  # rename(2) may replace an empty directory
            fsync_dir(home.parent)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return cls(home, config, card, replace(store, path=home / "store"), key)

    @classmethod
    def open(cls, home: Path, passphrase: str | None = None) -> SiteHome:
        """Open ``home``, unlocking the key with ``passphrase``, else (a simulated site) the
        home's ``passphrase`` file, else ``$PHARMAFL_SITE_PASSPHRASE``; verify the store, and the
        card against the key and the store's manifest."""
        home = Path(home)
        config = read_json(home / SITE_FILE, "site home (site.json)")
        if not isinstance(config, dict) or config.get("format") != SITE_FORMAT:
            raise ConfigError(f"{home / SITE_FILE}: not a {SITE_FORMAT} file; create the home with pharmafl site init")
        site = check_id(config.get("site"), f"{home / SITE_FILE}: site")
        secret = home_passphrase(home, passphrase)
        keys = KeyStore(home / "keys", secret, allowed={site})
        if keys.actors() != [site]:
            raise ConfigError(f"{home / 'keys'}: holds keys of {keys.actors()}, expected exactly {site}'s")
        try:
            key = keys.get(site)
        except PharmaflError:
            raise ConfigError(
                f"{keys.file_for(site)}: cannot unlock {site}'s key: wrong passphrase (check "
                f"${PASSPHRASE_ENV}), or the key file was altered (restore keys/ from backup)"
            ) from None
        store = replace(SiteStore.open(home / "store"), site=site)
        card = check_card(read_json(home / CARD_FILE, "site card"), str(home / CARD_FILE))
        expected = {"site": site, "public_key": raw_public_key(key).hex(), "manifest_sha256": store.manifest_sha256}
        wrong = {k: card[k] for k, v in expected.items() if card[k] != v}
        if wrong:
            raise ConfigError(
                f"{home / CARD_FILE}: {wrong} does not match the home's "
                f"{ {k: expected[k] for k in wrong} }; the card is not this home's"
            )
        return cls(home, config, card, store, key)

    # --- statements -----------------------------------------------------------------------

    def run_dir(self, run_id: str) -> Path:
        return self.path / "runs" / check_id(run_id, "run id")

    def runs(self) -> list[str]:
        """Run ids the site signed statements in, sorted."""
        root = self.path / "runs"
        return sorted(p.name for p in root.iterdir() if (p / STATEMENTS).is_file()) if root.is_dir() else []

    def sign_statement(self, run_id: str, round: int | None, type: str, payload: dict) -> dict:
        """Sign ``payload`` as this site's ``type`` statement of ``run_id``/``round``; the
        statement is on disk (``runs/<run_id>/statements.jsonl``, fsynced) before it is returned."""
        stmt = messages.make_statement(
            self._key.sign, run_id=run_id, round=round, site=self.site, type=type, payload=payload
        )
        append_line(self.run_dir(run_id) / STATEMENTS, messages.canonical(stmt))
        return stmt

    def statements(self, run_id: str) -> list[dict]:
        """Every statement the site signed in ``run_id``, in order."""
        return read_lines(self.run_dir(run_id) / STATEMENTS)

    def keep_dir(self, run_id: str) -> Path:
        """Where the site keeps its own copies of a run's updates (``runs/<run_id>/kept``)."""
        path = self.run_dir(run_id) / "kept"
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        return path

    # --- consortium and witness ------------------------------------------------------------

    def accepted_rosters(self) -> list[str]:
        doc = (
            read_json(self.path / "consortia.json", "consortia file")
            if (self.path / "consortia.json").exists()
            else {"accepted": []}
        )
        if not isinstance(doc, dict) or not isinstance(doc.get("accepted"), list):
            raise ConfigError(f"{self.path / 'consortia.json'}: expected {{'accepted': [roster_sha256, ...]}}")
        return list(doc["accepted"])

    def accept_consortium(self, consortium: dict) -> str:
        """Agree to ``consortium`` (``consortium.json``'s content): every card checked, this
        site's own card in it unchanged; its roster hash is recorded and returned."""
        where = f"consortium for {self.site}"
        if not isinstance(consortium, dict) or not isinstance(consortium.get("cards"), dict):
            raise ConfigError(f"{where}: not a consortium (expected {{'format', 'cards', 'roster_sha256'}})")
        cards = consortium["cards"]
        for name, card in cards.items():
            check_card(card, f"{where}: card {name!r}")
            if card["site"] != name:
                raise ConfigError(f"{where}: card listed as {name!r} is {card['site']!r}'s")
        check_parties(consortium.get("parties") or {}, where)
        mine = cards.get(self.site)
        if mine is None or messages.canonical(mine) != messages.canonical(self.card):
            raise ConfigError(
                f"{where}: {'does not hold' if mine is None else 'holds an altered copy of'} this "
                f"site's card (fingerprint {self.fingerprint}); do not accept it"
            )
        digest = roster_sha256(cards, consortium.get("parties"))
        if consortium.get("roster_sha256") != digest:
            raise ConfigError(f"{where}: roster_sha256 {consortium.get('roster_sha256')!r} is not the cards' {digest}")
        accepted = self.accepted_rosters()
        if digest not in accepted:
            _write_json(self.path / "consortia.json", {"accepted": [*accepted, digest]})
        return digest

    def check_accepted(self, consortium: dict) -> None:
        """Raise unless ``consortium`` (cards and party cards) is one this site accepted: what a
        site checks before it seals a share to a party key the coordinator hands it."""
        try:
            digest = roster_sha256(consortium["cards"], consortium.get("parties"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{self.site}: the run's consortium is malformed ({exc})") from None
        if digest not in self.accepted_rosters():
            raise ConfigError(
                f"{self.site} did not accept the run's consortium (roster {digest[:16]}...): it seals "
                f"shares only to the parties of a roster it accepted (pharmafl site accept)"
            )

    def witness(self) -> Witness:
        """The site's witness of run logs (``home/witness``), cosigning with the site key; it
        reads the accepted rosters (``consortia.json``) at every first contact."""
        return Witness(
            self.path / "witness",
            self.site,
            self._key.sign,
            self.public_key,
            accepted_rosters=lambda: set(self.accepted_rosters()),
        )

    @property
    def privacy(self) -> PrivacyLedger:
        return PrivacyLedger(self.path / "privacy.json", budget=self.epsilon_budget)


def _card_fields(site: str, store: SiteStore, public_key: bytes, created: str) -> dict:
    folds = store.dataset.measurements["fold"]
    counts = {
        "compounds": len(store.dataset.drugs),
        "pairs": len(folds),
        "targets": len(store.dataset.targets),
        **{s: int(folds.eq(s).sum()) for s in LOCAL_SPLITS},
    }
    return {
        "counts": counts,
        "created": created,
        "fingerprint": hashlib.sha256(public_key).hexdigest(),
        "format": CARD_FORMAT,
        "manifest_sha256": store.manifest_sha256,
        "public_key": public_key.hex(),
        "site": site,
        "units": {u: store_units(store, u) for u in ("pair", "compound")},
    }
