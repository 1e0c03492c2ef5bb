"""The one copy of canonical bytes and messages: refusals with paths, C2SP layouts, statements, cards."""

from __future__ import annotations

import base64
import hashlib
import math

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pharmafl.audit import messages as m, records

# The cosignature in C2SP tlog-cosignature's example (witness.example.com/w1, time 1679315147).
C2SP_LINE = (
    "\u2014 witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2"
    "oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n"
)
C2SP_ROOT = base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=").hex()


@pytest.mark.parametrize(
    ("value", "path", "reason"),
    [
        ({"metrics": {"auc": math.nan}}, "['metrics']['auc']", "nan has no JSON form"),
        ({"eps": [1.0, -math.inf]}, "['eps'][1]", "-inf has no JSON form"),
        ({"seed": 2**60}, "['seed']", "would not read back unchanged"),
        ({"n": 10**400}, "['n']", "of 1329 bits"),
        ({"w": {3: 0.5}}, "['w']", "keys must be str"),
        ({"name": "bad\ud800"}, "['name']", "lone surrogate"),
        ({"s": {1, 2}}, "['s']", "convert it to a list"),
    ],
)
def test_refusals_name_the_path(value, path: str, reason: str) -> None:
    with pytest.raises(ValueError) as err:
        m.canonical(value)
    assert str(err.value).startswith(f"{path}: ") and reason in str(err.value)
    assert (err.value.path, reason in err.value.reason) == (path, True)


def test_nesting_deeper_than_the_limit_is_one_clear_error() -> None:
    ok, deep = [], []
    for _ in range(m.MAX_DEPTH - 1):
        ok = [ok]
    for _ in range(10_000):  # deeper than Python's recursion limit: still one ValueError, no RecursionError
        deep = {"a": deep}
    assert m.canonical(ok).count("[") == m.MAX_DEPTH
    with pytest.raises(m.NotCanonical, match=f"nested deeper than {m.MAX_DEPTH} levels"):
        m.canonical(deep)


def test_entry_checkpoint_and_key_messages_keep_their_bytes() -> None:
    payload = m.canonical({"round": 1, "x": "é"})
    assert m.entry_message(3, "2025-01-02T03:04:05.000000Z", "server", "round_started", payload, "0" * 64) == (
        b'pharmafl-ledger-entry-v1\x00{"actor":"server","payload":{"round":1,"x":"\xc3\xa9"},"prev_hash":"'
        + b"0" * 64
        + b'","seq":3,"ts":"2025-01-02T03:04:05.000000Z","type":"round_started"}'
    )
    assert m.checkpoint_message(7, "a" * 64, "2025-01-02T03:04:05.000000Z", "server") == (
        b'pharmafl-ledger-checkpoint-v1\x00{"root_hash":"'
        + b"a" * 64
        + b'","signer":"server","tree_size":7,"ts":"2025-01-02T03:04:05.000000Z"}'
    )
    assert m.key_proof_message("site-01", "b" * 64) == (
        b'pharmafl-ledger-key-v1\x00{"actor":"site-01","public_key":"' + b"b" * 64 + b'"}'
    )
    assert records.entry_message is m.entry_message and records.key_proof_message is m.key_proof_message


def test_checkpoint_body_and_cosignature_message_are_c2sp() -> None:
    body = m.checkpoint_body("example.com/behind-the-sofa", 20852163, C2SP_ROOT)
    assert body == b"example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    assert m.cosignature_message(body, 1679315147) == b"cosignature/v1\ntime 1679315147\n" + body
    assert m.origin_of("run-7") == "pharmafl/run-7"


def test_cosignature_line_matches_the_c2sp_example_layout() -> None:
    raw = base64.b64decode(C2SP_LINE.split()[-1])
    key_id, stamp, sig = raw[:4], int.from_bytes(raw[4:12], "big"), raw[12:]
    assert stamp == 1679315147 and len(sig) == 64
    assert m.cosignature_line("witness.example.com/w1", key_id, stamp, sig) == C2SP_LINE


def test_cosignature_key_id_is_sha256_of_name_newline_0x04_key() -> None:
    pk = bytes(range(32))
    assert m.cosignature_key_id("site-01", pk) == hashlib.sha256(b"site-01\n\x04" + pk).digest()[:4]


def test_a_statement_signs_its_payload_hash_run_round_site_and_type() -> None:
    key = Ed25519PrivateKey.from_private_bytes(b"\x01" * 32)
    st = m.make_statement(key.sign, run_id="r", round=2, site="site-01", type="clip", payload={"clip_norm": 1.0})
    assert sorted(st) == list(m.STATEMENT_FIELDS) and m.fits(st, m.STATEMENT_SHAPE)
    assert st["payload_sha256"] == hashlib.sha256(b'{"clip_norm":1}').hexdigest()
    msg = (
        b'pharmafl-site-statement-v1\x00{"payload_sha256":"'
        + st["payload_sha256"].encode()
        + b'","round":2,"run_id":"r","site":"site-01","type":"clip"}'
    )
    assert m.statement_message("r", 2, "site-01", "clip", st["payload_sha256"]) == msg
    key.public_key().verify(bytes.fromhex(st["signature"]), msg)


def test_a_card_is_self_signed_over_everything_but_its_signature() -> None:
    key = Ed25519PrivateKey.from_private_bytes(b"\x02" * 32)
    pk = key.public_key().public_bytes_raw()
    card = m.make_card(key.sign, {"site": "site-01", "public_key": pk.hex(), "units": {"pair": 3}})
    assert card["format"] == "pharmafl-site-card-v1" and card["fingerprint"] == hashlib.sha256(pk).hexdigest()
    key.public_key().verify(bytes.fromhex(card["signature"]), m.card_message(card))
    assert (
        m.card_message(card)
        == b"pharmafl-site-card-v1\x00" + m.canonical({k: v for k, v in card.items() if k != "signature"}).encode()
    )


def test_cosignature_record_line_is_canonical() -> None:
    c = records.Cosignature(12, "site-02", 1735787045, "ab" * 64)
    assert c.to_json_line() == m.canonical(
        {"signature": "ab" * 64, "timestamp": 1735787045, "tree_size": 12, "witness": "site-02"}
    )


def test_asserted_reads_the_site_statement_or_the_actor() -> None:
    key = Ed25519PrivateKey.from_private_bytes(b"\x03" * 32)
    st = m.make_statement(
        key.sign, run_id="r", round=4, site="site-02", type="site_update", payload={"num_examples": 9}
    )
    entry = records.Entry(
        5,
        "2025-01-02T03:04:05.000000Z",
        "server",
        "site_update",
        m.canonical({"accepted": True, "statement": st}),
        "0" * 64,
        "1" * 64,
        "2" * 128,
    )
    assert records.asserted(entry) == ("site-02", {"round": 4, "num_examples": 9, "accepted": True})
    plain = records.Entry(6, entry.ts, "server", "round_started", '{"round":4}', "0" * 64, "1" * 64, "2" * 128)
    assert records.asserted(plain) == ("server", {"round": 4})


@pytest.mark.parametrize(
    ("shape", "obj", "ok"),
    [
        (m.COSIGNATURE_SHAPE, {"signature": "a" * 128, "timestamp": 1, "tree_size": 3, "witness": "s"}, True),
        (m.COSIGNATURE_SHAPE, {"signature": "a" * 128, "timestamp": -1, "tree_size": 3, "witness": "s"}, False),
        (m.COSIGNATURE_SHAPE, {"signature": "a" * 128, "timestamp": 2**63, "tree_size": 3, "witness": "s"}, False),
        (m.COSIGNATURE_SHAPE, {"signature": "A" * 128, "timestamp": 1, "tree_size": 3, "witness": "s"}, False),
        (
            m.CHECKPOINT_SHAPE,
            {
                "root_hash": "0" * 64,
                "signature": "0" * 128,
                "signer": "server",
                "tree_size": True,
                "ts": "2025-01-02T03:04:05.000000Z",
            },
            False,
        ),
        (m.CHECKPOINT_SHAPE, None, False),
        (m.CHECKPOINT_SHAPE, [], False),
    ],
)
def test_shapes_refuse_what_is_not_exactly_the_format(shape, obj, ok: bool) -> None:
    assert m.fits(obj, shape) is ok
