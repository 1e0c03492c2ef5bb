"""An aggregation party's home: its keys, its card, the consortia it accepted, what it did per run.

``PARTY_HOME`` (``pharmafl party init``; formats in ``docs/trust-domains.md``)::

    party.json        {"format": "pharmafl-party-v1", "party", "role", "created"}
    party-card.json   the public card (sites/party_card.py): signing, HPKE and TLS public keys
    keys/             Ed25519 signing key (key store), hpke.pem (X25519), tls-key.pem, tls-cert.pem,
                      all private parts under the party's passphrase
    consortia/        <roster_sha256>.json: each consortium the party accepted, in full
    runs/<run_id>/    terms.json (the run's terms, fixed at first registration),
                      rounds.jsonl (every round it began, fsynced before it takes part),
                      statements.jsonl (every statement it signed)

Nothing here is the coordinator's: the party learns site keys and its peers' certificates
from a consortium it accepted, never from the request that names it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from pharmafl.audit import messages
from pharmafl.audit.keys import DEFAULT_SCRYPT_N, KeyStore, raw_public_key
from pharmafl.errors import ConfigError, PharmaflError, RefusedError
from pharmafl.fileio import fsync_dir, write_bytes_atomic
from pharmafl.pipeline.secure_agg.mesh import make_tls_identity
from pharmafl.sites.home import (
    PASSPHRASE_FILE,
    _write_json,
    append_line,
    check_card,
    check_id,
    home_passphrase,
    read_json,
    read_lines,
)
from pharmafl.sites.party_card import ROLES, check_parties, check_party_card, make_party_card
from pharmafl.sites.secret_sharing import PartyKey

PARTY_FORMAT = "pharmafl-party-v1"
PARTY_FILE = "party.json"
CARD_FILE = "party-card.json"
PASSPHRASE_ENV = "PHARMAFL_PARTY_PASSPHRASE"
STATEMENTS = "statements.jsonl"


class PartyRefusal(RefusedError):
    """A request this party will not serve; its message is what the signed refusal says."""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class PartyHome:
    """An opened party home (:meth:`init` creates one, :meth:`open` opens one)."""

    def __init__(
        self, path: Path, config: dict, card: dict, sign_key, hpke: PartyKey, tls_key_pem: bytes, tls_cert_pem: bytes
    ):
        self.path, self.config, self.card, self._sign_key, self.hpke = Path(path), config, card, sign_key, hpke
        self.party: str = config["party"]
        self.role: str = config["role"]
        self.tls_key_pem, self.tls_cert_pem = tls_key_pem, tls_cert_pem  # the key PEM is unencrypted in memory only
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PartyHome({str(self.path)!r}, party={self.party!r})"

    @classmethod
    def init(
        cls,
        home: Path,
        party: str,
        *,
        role: str = "helper",
        passphrase: str | None = None,
        simulated: bool = False,
        scrypt_n: int = DEFAULT_SCRYPT_N,
    ) -> PartyHome:
        """Generate the party's three keys at ``home`` and sign its card; refuses a non-empty
        ``home``, and leaves nothing behind on error."""
        home = Path(home)
        check_id(party, "party id")
        if role not in ROLES:
            raise ConfigError(f"party role {role!r} is not one of {list(ROLES)}")
        if home.exists() and (not home.is_dir() or any(home.iterdir())):
            raise ConfigError(f"{home}: exists and is not an empty directory; choose a new party home")
        if not passphrase:
            if not simulated:
                raise ConfigError(f"no passphrase for {party}'s keys: set ${PASSPHRASE_ENV}")
            passphrase = secrets.token_urlsafe(32)
        home.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{home.name}.init-", dir=home.parent))  # mode 0700
        try:
            key = KeyStore(staging / "keys", passphrase, scrypt_n=scrypt_n, allowed={party}).get_or_create(party)
            hpke = PartyKey.generate(party)
            cert_pem, tls_key_pem = make_tls_identity(party)
            tls_key = serialization.load_pem_private_key(tls_key_pem, None)
            enc = serialization.BestAvailableEncryption(passphrase.encode())
            write_bytes_atomic(staging / "keys" / "hpke.pem", hpke.private_pem(passphrase))
            write_bytes_atomic(
                staging / "keys" / "tls-key.pem",
                tls_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc),
            )
            write_bytes_atomic(staging / "keys" / "tls-cert.pem", cert_pem)
            created = _now()
            config = {"format": PARTY_FORMAT, "party": party, "role": role, "created": created}
            card = make_party_card(
                key.sign,
                {
                    "party": party,
                    "role": role,
                    "created": created,
                    "public_key": raw_public_key(key).hex(),
                    "hpke_key": hpke.public.hex(),
                    "tls_cert": cert_pem.decode(),
                },
            )
            _write_json(staging / PARTY_FILE, config)
            _write_json(staging / CARD_FILE, card)
            (staging / "consortia").mkdir(mode=0o700)
            if simulated:
                write_bytes_atomic(staging / PASSPHRASE_FILE, passphrase.encode())
            fsync_dir(staging)
            os.replace(staging, home)
            fsync_dir(home.parent)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return cls.open(home, passphrase)

    @classmethod
    def open(cls, home: Path, passphrase: str | None = None) -> PartyHome:
        """Open ``home`` (passphrase: given, else the simulated home's file, else ``$PHARMAFL_PARTY_PASSPHRASE``)
        and check its card against its keys."""
        home = Path(home)
        config = read_json(home / PARTY_FILE, "party home (party.json)")
        if not isinstance(config, dict) or config.get("format") != PARTY_FORMAT:
            raise ConfigError(f"{home / PARTY_FILE}: not a {PARTY_FORMAT} file; create it with pharmafl party init")
        party = check_id(config.get("party"), f"{home / PARTY_FILE}: party")
        secret = home_passphrase(home, passphrase, PASSPHRASE_ENV, "the party's keys")
        keys = KeyStore(home / "keys", secret, allowed={party})
        try:
            key = keys.get(party)
            hpke = PartyKey.from_pem(party, (home / "keys" / "hpke.pem").read_bytes(), secret)
            tls_key = serialization.load_pem_private_key((home / "keys" / "tls-key.pem").read_bytes(), secret.encode())
        except (PharmaflError, ValueError, TypeError, OSError):
            raise ConfigError(
                f"{home / 'keys'}: cannot unlock {party}'s keys: wrong passphrase (check "
                f"${PASSPHRASE_ENV}), or a key file was altered (restore keys/ from backup)"
            ) from None
        cert = (home / "keys" / "tls-cert.pem").read_bytes()
        card = check_party_card(read_json(home / CARD_FILE, "party card"), str(home / CARD_FILE))
        expected = {
            "party": party,
            "role": config["role"],
            "public_key": raw_public_key(key).hex(),
            "hpke_key": hpke.public.hex(),
            "tls_cert": cert.decode(),
        }
        wrong = sorted(k for k, v in expected.items() if card[k] != v)
        if wrong:
            raise ConfigError(f"{home / CARD_FILE}: {wrong} do not match the home's keys; the card is not this home's")
        tls_pem = tls_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cls(home, config, card, key, hpke, tls_pem, cert)

    @property
    def fingerprint(self) -> str:
        return self.card["fingerprint"]

    # --- consortia --------------------------------------------------------------------------

    def accept_consortium(self, consortium: dict) -> str:
        """Agree to ``consortium``: every site and party card checked, this party's own card in
        it unchanged; the whole roster is kept (``consortia/<roster_sha256>.json``)."""
        where = f"consortium for {self.party}"
        if not isinstance(consortium, dict) or not isinstance(consortium.get("cards"), dict):
            raise ConfigError(f"{where}: not a consortium (expected {{'format', 'cards', 'parties', 'roster_sha256'}})")
        for name, card in consortium["cards"].items():
            check_card(card, f"{where}: card {name!r}")
            if card["site"] != name:
                raise ConfigError(f"{where}: card listed as {name!r} is {card['site']!r}'s")
        parties = check_parties(consortium.get("parties") or {}, where)
        mine = parties.get(self.party)
        if mine is None or messages.canonical(mine) != messages.canonical(self.card):
            raise ConfigError(
                f"{where}: {'does not hold' if mine is None else 'holds an altered copy of'} this "
                f"party's card (fingerprint {self.fingerprint}); do not accept it"
            )
        digest = messages.roster_sha256(consortium["cards"], parties)
        if consortium.get("roster_sha256") != digest:
            raise ConfigError(f"{where}: roster_sha256 {consortium.get('roster_sha256')!r} is not the cards' {digest}")
        _write_json(
            self.path / "consortia" / f"{digest}.json",
            {"cards": consortium["cards"], "parties": parties, "roster_sha256": digest},
        )
        return digest

    def consortium(self, roster_sha256: str) -> dict:
        """A consortium this party accepted, re-checked; :class:`PartyRefusal` if none."""
        if not messages.is_hex(roster_sha256, 64):
            raise PartyRefusal(f"roster {roster_sha256!r} is not a SHA-256")
        path = self.path / "consortia" / f"{roster_sha256}.json"
        if not path.is_file():
            raise PartyRefusal(
                f"{self.party} did not accept roster {roster_sha256[:16]}...: it serves only the "
                f"consortia it agreed to (pharmafl party accept)"
            )
        doc = read_json(path, "accepted consortium")
        if messages.roster_sha256(doc["cards"], doc["parties"]) != roster_sha256:
            raise PartyRefusal(f"{path}: altered (its cards do not hash to its name)")
        return doc

    # --- runs: terms, rounds, statements --------------------------------------------------

    def run_dir(self, run_id: str) -> Path:
        return self.path / "runs" / check_id(run_id, "run id")

    def fix_terms(self, run_id: str, terms: dict) -> bool:
        """Record ``terms`` for ``run_id`` the first time (True); the same terms again are fine
        (False); different terms for a run already registered are refused."""
        path = self.run_dir(run_id) / "terms.json"
        with self._lock:
            if path.is_file():
                if messages.canonical(read_json(path, "run terms")) != messages.canonical(terms):
                    raise PartyRefusal(
                        f"run {run_id} was registered with other terms ({path}); a run's terms cannot change"
                    )
                return False
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _write_json(path, terms)
            fsync_dir(path.parent)
            return True

    def registered(self, run_id: str) -> bool:
        """Whether ``run_id`` was registered here (its terms fixed); False for an invalid id."""
        try:
            return (self.run_dir(run_id) / "terms.json").is_file()
        except PharmaflError:
            return False

    def terms(self, run_id: str) -> dict:
        path = self.run_dir(run_id) / "terms.json"
        if not path.is_file():
            raise PartyRefusal(f"run {run_id} is not registered with {self.party}")
        return read_json(path, "run terms")

    def begin_round(self, run_id: str, round: int) -> None:
        """Record that this party takes part in ``round`` of ``run_id`` (on disk before it does);
        refuses a round it began before, or one not after the last it began: no round is
        aggregated twice, so a subset of it cannot be summed again and subtracted."""
        if type(round) is not int or round < 1:
            raise PartyRefusal(f"round {round!r} is not a positive integer")
        path = self.run_dir(run_id) / "rounds.jsonl"
        with self._lock:
            done = [r["round"] for r in read_lines(path)]
            if done and round <= max(done):
                raise PartyRefusal(
                    f"round {round} of run {run_id}: {self.party} already aggregated round "
                    f"{max(done)}; each round is aggregated once and rounds only move forward"
                )
            append_line(path, messages.canonical({"round": round, "ts": _now()}))

    def sign_statement(self, run_id: str, round: int | None, type: str, payload: dict) -> dict:
        """Sign ``payload`` as this party's ``type`` statement (on disk before it is returned)."""
        if type not in messages.PARTY_STATEMENT_TYPES:
            raise ValueError(f"{type!r} is not a party statement type")
        stmt = messages.make_statement(
            self._sign_key.sign, run_id=run_id, round=round, site=self.party, type=type, payload=payload
        )
        append_line(self.run_dir(run_id) / STATEMENTS, messages.canonical(stmt))
        return stmt

    def statements(self, run_id: str) -> list[dict]:
        return read_lines(self.run_dir(run_id) / STATEMENTS)
