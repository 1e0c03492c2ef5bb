"""Any single-byte change to a cosignature or an embedded site statement is detected, even when the
tamperer rewrites manifest.json to match (so the content checks, not the file hashes, must catch it)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from pharmafl.audit import messages as m
from pharmafl.audit.rfc9162 import root_from_leaves
from pharmafl.audit.verify import VerificationError, verify_path

from .assets.make_fixtures import LedgerBuilder, leaf, save

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    b = LedgerBuilder().run()
    path = save(tmp_path_factory.mktemp("fuzz") / "bundle", b.entries, b.checkpoints, b.cosignatures)
    assert verify_path(str(path), jobs=1).line().startswith("OK: ")
    return path


def statement_spans(text: bytes) -> list[tuple[int, int]]:
    """Byte ranges of every embedded ``"statement":{...}`` object in entries.jsonl."""
    spans, start = [], 0
    while (at := text.find(b'"statement":{', start)) >= 0:
        depth, i = 0, at + len(b'"statement":')
        for j in range(i, len(text)):
            depth += {ord("{"): 1, ord("}"): -1}.get(text[j], 0)
            if depth == 0:
                spans.append((i, j + 1))
                break
        start = j + 1
    return spans


def tamper_and_verify(bundle: Path, name: str, offset: int, value: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "bundle"
        shutil.copytree(bundle, copy)
        raw = (copy / name).read_bytes()
        (copy / name).write_bytes(raw[:offset] + bytes([value]) + raw[offset + 1 :])
        rewrite_manifest(copy)
        with pytest.raises(VerificationError):
            verify_path(str(copy), jobs=1)


def rewrite_manifest(path: Path) -> None:
    """What a tamperer does: a manifest consistent with the files as they now are."""
    lines = {p.name: p.read_bytes().splitlines() for p in path.glob("*.jsonl")}
    try:
        root = root_from_leaves(leaf(json.loads(line)) for line in lines["entries.jsonl"]).hex()
    except (ValueError, KeyError, TypeError):
        root = "0" * 64
    files = {p.name: m.file_sha256(p) for p in sorted(path.iterdir()) if p.name != "manifest.json"}
    manifest = m.bundle_manifest(
        len(lines["entries.jsonl"]), len(lines["checkpoints.jsonl"]), len(lines["cosignatures.jsonl"]), root, files
    )
    (path / "manifest.json").write_text(m.canonical(manifest) + "\n")


@FUZZ
@given(st.data())
def test_any_byte_of_a_cosignature_line(bundle: Path, data) -> None:
    raw = (bundle / "cosignatures.jsonl").read_bytes()
    offset = data.draw(st.integers(0, len(raw) - 1), label="offset")
    value = data.draw(st.integers(0, 255).filter(lambda b: b != raw[offset]), label="new byte")
    tamper_and_verify(bundle, "cosignatures.jsonl", offset, value)


@FUZZ
@given(st.data())
def test_any_byte_of_an_embedded_site_statement(bundle: Path, data) -> None:
    raw = (bundle / "entries.jsonl").read_bytes()
    lo, hi = data.draw(st.sampled_from(statement_spans(raw)), label="statement")
    offset = data.draw(st.integers(lo, hi - 1), label="offset")
    value = data.draw(st.integers(0, 255).filter(lambda b: b != raw[offset]), label="new byte")
    tamper_and_verify(bundle, "entries.jsonl", offset, value)


def test_the_fixture_embeds_statements_and_cosignatures(bundle: Path) -> None:
    assert len(statement_spans((bundle / "entries.jsonl").read_bytes())) == 18
    assert len((bundle / "cosignatures.jsonl").read_bytes().splitlines()) == 9
