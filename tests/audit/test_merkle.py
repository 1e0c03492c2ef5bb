"""RFC 9162 Merkle trees: reference vectors, and proofs against a literal transcription of the RFC."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, strategies as st

from pharmafl.audit.merkle import CompactRange, MerkleTree, consistency_proof, inclusion_proof, leaf_hash, merkle_root
from pharmafl.audit.verify import verify_consistency, verify_inclusion

# Certificate Transparency reference leaves and roots for sizes 0..8 (RFC 6962 test data).
CT_LEAVES = [
    bytes.fromhex(h)
    for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f")
]
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_INCLUSION = [
    (
        0,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]


# -- RFC 9162 §2.1, transcribed literally (over leaf hashes) ------------------------------------


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(d: list[bytes]) -> bytes:
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return d[0]
    k = _k(len(d))
    return hashlib.sha256(b"\x01" + mth(d[:k]) + mth(d[k:])).digest()


def path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = _k(len(d))
    return path(m, d[:k]) + [mth(d[k:])] if m < k else path(m - k, d[k:]) + [mth(d[:k])]


def subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    if m == len(d):
        return [] if b else [mth(d)]
    k = _k(len(d))
    return subproof(m, d[:k], b) + [mth(d[k:])] if m <= k else subproof(m - k, d[k:], False) + [mth(d[:k])]


def leaves(n: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


# -- reference vectors ----------------------------------------------------------------------------


def test_roots_match_certificate_transparency_vectors() -> None:
    hashes = [leaf_hash(d) for d in CT_LEAVES]
    tree = MerkleTree(hashes)
    for size, root in enumerate(CT_ROOTS):
        assert merkle_root(hashes[:size]).hex() == root
        assert tree.root(size).hex() == root


@pytest.mark.parametrize(("index", "expected"), CT_INCLUSION)
def test_inclusion_matches_certificate_transparency_vectors(index: int, expected: list[str]) -> None:
    hashes = [leaf_hash(d) for d in CT_LEAVES]
    proof = inclusion_proof(index, hashes)
    assert [p.hex() for p in proof] == expected
    assert verify_inclusion(index, 8, hashes[index], proof, bytes.fromhex(CT_ROOTS[8]))


# -- properties against the transcription ------------------------------------------------------

sizes = st.integers(min_value=1, max_value=70)


@given(sizes)
def test_root_and_compact_range_equal_mth_for_every_prefix(n: int) -> None:
    d = leaves(n)
    acc, tree = CompactRange(), MerkleTree()
    for i, h in enumerate(d):
        acc.append(h)
        tree.append(h)
        assert acc.root() == mth(d[: i + 1]) == tree.root()
    assert merkle_root(d) == mth(d)


@given(sizes, st.data())
def test_inclusion_proof_is_the_rfc_path_and_verifies(n: int, data) -> None:
    d = leaves(n)
    m = data.draw(st.integers(0, n - 1))
    proof = inclusion_proof(m, d)
    assert proof == path(m, d)
    assert verify_inclusion(m, n, d[m], proof, mth(d))


@given(sizes, st.data())
def test_consistency_proof_is_the_rfc_proof_and_verifies(n: int, data) -> None:
    d = leaves(n)
    m = data.draw(st.integers(1, n))
    proof = consistency_proof(m, d)
    assert proof == (subproof(m, d, True) if m < n else [])
    assert verify_consistency(m, n, mth(d[:m]), mth(d), proof)


@given(sizes, st.data())
def test_any_corrupted_inclusion_proof_is_rejected(n: int, data) -> None:
    d = leaves(n)
    m = data.draw(st.integers(0, n - 1))
    proof, root = path(m, d), mth(d)
    # (A wrong *size* is not in the list: the size is bound to the root by the signed checkpoint,
    # and RFC 9162 proofs for index i in sizes n and n' can coincide.)
    corruption = data.draw(st.sampled_from(["flip", "drop", "extra", "index", "leaf", "root"]))
    idx, leaf = m, d[m]
    if corruption == "flip" and proof:
        j, bit = data.draw(st.integers(0, len(proof) - 1)), data.draw(st.integers(0, 255))
        proof[j] = bytes([proof[j][0] ^ (1 + bit % 255)]) + proof[j][1:]
    elif corruption == "drop" and proof:
        proof.pop(data.draw(st.integers(0, len(proof) - 1)))
    elif corruption == "extra":
        proof.append(hashlib.sha256(b"extra").digest())
    elif corruption == "index":
        idx = data.draw(st.integers(0, n).filter(lambda x: x != m))
    elif corruption == "leaf":
        leaf = leaf_hash(b"forged")
    elif corruption == "root":
        root = hashlib.sha256(root).digest()
    else:
        return  # nothing to corrupt in an empty proof
    assert not verify_inclusion(idx, n, leaf, proof, root)


@given(st.integers(2, 70), st.data())
def test_any_corrupted_consistency_proof_is_rejected(n: int, data) -> None:
    d = leaves(n)
    m = data.draw(st.integers(1, n - 1))
    proof, old_root, new_root = subproof(m, d, True), mth(d[:m]), mth(d)
    corruption = data.draw(st.sampled_from(["flip", "drop", "extra", "old_root", "new_root", "old_size"]))
    old = m
    if corruption == "flip":
        j = data.draw(st.integers(0, len(proof) - 1))
        proof[j] = bytes([proof[j][0] ^ 0x80]) + proof[j][1:]
    elif corruption == "drop":
        proof.pop(data.draw(st.integers(0, len(proof) - 1)))
    elif corruption == "extra":
        proof.append(hashlib.sha256(b"extra").digest())
    elif corruption == "old_root":
        old_root = hashlib.sha256(old_root).digest()
    elif corruption == "new_root":
        new_root = hashlib.sha256(new_root).digest()
    else:
        old = data.draw(st.integers(1, n - 1).filter(lambda x: x != m))
    assert not verify_consistency(old, n, old_root, new_root, proof)


def test_trivial_and_out_of_range_consistency() -> None:
    d = leaves(5)
    assert verify_consistency(5, 5, mth(d), mth(d), [])
    assert not verify_consistency(5, 5, mth(d), mth(d[:4]), [])
    assert verify_consistency(0, 5, b"", mth(d), [])
    assert not verify_consistency(6, 5, mth(d), mth(d), [])
    with pytest.raises(ValueError, match="outside the tree"):
        MerkleTree(d).root(6)
    with pytest.raises(ValueError, match="leaf index 5"):
        MerkleTree(d).inclusion_proof(5)
