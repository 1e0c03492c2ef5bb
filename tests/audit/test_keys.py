"""Key store: Ed25519 keys encrypted at rest (scrypt + AES-256-GCM), never in the clear."""

from __future__ import annotations

import json
import multiprocessing
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from pharmafl.audit.errors import LedgerError
from pharmafl.audit.keys import KeyStore, passphrase_from_env, raw_public_key

from .conftest import FAST_SCRYPT, PASSPHRASE


def test_created_key_reloads_with_the_passphrase(keystore: KeyStore) -> None:
    key = keystore.get_or_create("site-03")
    again = KeyStore(keystore.path, PASSPHRASE).get("site-03")
    assert raw_public_key(again) == raw_public_key(key)
    assert keystore.actors() == ["site-03"]


def test_private_key_is_not_stored_in_the_clear(keystore: KeyStore) -> None:
    key = keystore.get_or_create("user:alice")
    raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    text = keystore.file_for("user:alice").read_bytes()
    assert raw.hex().encode() not in text and raw not in text
    record = json.loads(text)
    assert record["kdf"]["name"] == "scrypt" and record["cipher"]["name"] == "AES-256-GCM"
    assert stat.S_IMODE(keystore.file_for("user:alice").stat().st_mode) == 0o600


def test_wrong_passphrase_is_refused_with_the_fix(keystore: KeyStore) -> None:
    keystore.get_or_create("server")
    with pytest.raises(LedgerError, match="wrong passphrase.*PHARMAFL_KEY_PASSPHRASE"):
        KeyStore(keystore.path, "not the passphrase").get("server")


def test_key_file_relabelled_to_another_actor_fails_to_decrypt(keystore: KeyStore) -> None:
    keystore.get_or_create("site-01")
    record = json.loads(keystore.file_for("site-01").read_text())
    record["actor"] = "site-02"  # an attacker renames a key file to impersonate site-02
    keystore.file_for("site-02").write_text(json.dumps(record))
    with pytest.raises(LedgerError, match="cannot decrypt"):
        KeyStore(keystore.path, PASSPHRASE).get("site-02")


@pytest.mark.parametrize("bad", ["", None])
def test_empty_passphrase_refused(tmp_path: Path, bad) -> None:
    with pytest.raises(LedgerError, match="empty key-store passphrase"):
        KeyStore(tmp_path / "keys", bad)
    assert not (tmp_path / "keys").exists()


def test_passphrase_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHARMAFL_KEY_PASSPHRASE", "s3cret")
    assert passphrase_from_env() == "s3cret"
    monkeypatch.setenv("PHARMAFL_KEY_PASSPHRASE", "")
    with pytest.raises(LedgerError, match="PHARMAFL_KEY_PASSPHRASE is unset or empty"):
        passphrase_from_env()


def test_unknown_actor_lists_the_known_ones(keystore: KeyStore) -> None:
    keystore.get_or_create("server")
    with pytest.raises(LedgerError, match="no key for actor 'site-09'.*known actors: server"):
        keystore.get("site-09")


def test_weak_scrypt_cost_refused(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="power of two >= 2\\*\\*14"):
        KeyStore(tmp_path / "keys", PASSPHRASE, scrypt_n=2**10)


def test_public_info_needs_no_passphrase(keystore: KeyStore) -> None:
    key = keystore.get_or_create("site-01")
    info = KeyStore(keystore.path, "any other passphrase").public_info("site-01")
    assert info["public_key"] == raw_public_key(key).hex() and len(info["fingerprint"]) == 64


def _create(path: str, queue) -> None:
    queue.put(raw_public_key(KeyStore(path, PASSPHRASE, scrypt_n=FAST_SCRYPT).get_or_create("server")).hex())


def test_processes_racing_to_create_a_key_all_get_the_same_one(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_create, args=(str(tmp_path / "keys"), queue)) for _ in range(4)]
    for p in procs:
        p.start()
    keys = {queue.get(timeout=60) for _ in procs}
    for p in procs:
        p.join(timeout=60)
    assert len(keys) == 1
    assert KeyStore(tmp_path / "keys", PASSPHRASE).actors() == ["server"]


def test_a_restricted_store_never_creates_or_hands_out_another_actors_key(tmp_path: Path) -> None:
    open_store = KeyStore(tmp_path / "keys", PASSPHRASE, scrypt_n=FAST_SCRYPT)
    open_store.get_or_create("site-01")  # a site key that should never have been here
    coordinator = KeyStore(tmp_path / "keys", PASSPHRASE, scrypt_n=FAST_SCRYPT, allowed={"server", "access-control"})
    assert raw_public_key(coordinator.get_or_create("server")) == raw_public_key(open_store.get("server"))
    for call in (coordinator.get_or_create, coordinator.get):
        for actor in ("site-02", "site-01", "user:alice"):
            with pytest.raises(LedgerError, match=f"holds keys only for access-control, server, not '{actor}'"):
                call(actor)
    assert coordinator.actors() == ["server", "site-01"]  # site-02 was not created


def test_allowed_actors_must_be_valid_ids(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="actor id 'not valid' is not valid"):
        KeyStore(tmp_path / "keys", PASSPHRASE, allowed={"not valid"})
