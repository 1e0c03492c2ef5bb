"""Password hashes, sealed signing keys, the password policy: pure functions."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings, strategies as st

from pharmafl.compliance.credentials import (
    PasswordPolicy,
    check_new_password,
    hash_password,
    open_key,
    password_matches,
    public_hex,
    seal_key,
)
from pharmafl.compliance.errors import AuthenticationError, ComplianceError

N = 2**14


@settings(max_examples=8, deadline=None)
@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
def test_hash_accepts_only_the_same_password(a: str, b: str) -> None:
    stored = hash_password(a, N)
    assert password_matches(a, stored)
    assert password_matches(b, stored) == (a == b)
    assert stored["salt"] != hash_password(a, N)["salt"]  # a fresh salt each time


def test_unicode_passwords_are_normalised() -> None:
    stored = hash_password("caf\u00e9-Pass-1234", N)  # é precomposed
    assert password_matches("cafe\u0301-Pass-1234", stored)  # e + combining accent


def test_sealed_key_opens_only_with_the_password_and_for_its_owner() -> None:
    key = Ed25519PrivateKey.generate()
    sealed = seal_key(key, "qa-Secret-00042", "user:quinn", N)
    assert "ciphertext" in sealed and public_hex(key) == sealed["public_key"]
    assert public_hex(open_key(sealed, "qa-Secret-00042", "user:quinn")) == public_hex(key)
    with pytest.raises(AuthenticationError, match="does not open"):
        open_key(sealed, "qa-Secret-00043", "user:quinn")
    with pytest.raises(AuthenticationError, match="not 'user:rita'"):
        open_key(sealed, "qa-Secret-00042", "user:rita")


def test_a_sealed_key_relabelled_for_another_user_does_not_open() -> None:
    sealed = seal_key(Ed25519PrivateKey.generate(), "qa-Secret-00042", "user:quinn", N)
    forged = {**sealed, "actor": "user:rita"}  # the associated data binds the actor
    with pytest.raises(AuthenticationError, match="does not open"):
        open_key(forged, "qa-Secret-00042", "user:rita")


@pytest.mark.parametrize(
    "password, message",
    [
        ("Short-1", "too short"),
        ("quinn-Password-1", "must not contain"),
        ("my-Quality-pass-1", "must not contain"),
        ("abcdefghijklmnop", "one kind of character"),
    ],
)
def test_weak_passwords_are_refused(password: str, message: str) -> None:
    with pytest.raises(ComplianceError, match=message):
        check_new_password(password, PasswordPolicy(), "quinn", "Quinn Quality")


def test_a_good_password_passes() -> None:
    check_new_password("river-Stone-0001", PasswordPolicy(), "quinn", "Quinn Quality")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"min_length": 4}, "min_length must be >= 8"),
        ({"max_age_days": -1}, "max_age_days must be >= 0"),
        ({"max_failed_logins": 0}, "max_failed_logins must be >= 1"),
        ({"scrypt_n": 1000}, "power of two"),
        ({"scrypt_n": 2**16}, r"power of two >= 2\*\*17.*for_tests\(\) allows less, in tests only"),
    ],
)
def test_policy_validates_itself(kwargs: dict, message: str) -> None:
    with pytest.raises(ComplianceError, match=message):
        PasswordPolicy(**kwargs)


def test_the_test_only_policy_is_marked_and_has_a_floor() -> None:
    policy = PasswordPolicy.for_tests()
    assert (policy.scrypt_n, policy.test_only_kdf, policy.as_dict()["test_only_kdf"]) == (2**14, True, True)
    with pytest.raises(ComplianceError, match=r"power of two >= 2\*\*14"):
        PasswordPolicy.for_tests(scrypt_n=2**13)
    assert PasswordPolicy(**PasswordPolicy().as_dict()) == PasswordPolicy()  # round-trips through the table
