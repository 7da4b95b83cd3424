"""RFC 6238 Appendix B's SHA-1 vectors, the window and replay rule."""

import base64

import pytest

from keys import totp

# The RFC's SHA-1 seed is the ASCII "12345678901234567890"; its vectors are 8-digit codes.
SEED = base64.b32encode(b"12345678901234567890").decode()
VECTORS = [(59, "94287082"), (1111111109, "07081804"), (1111111111, "14050471"), (1234567890, "89005924"),
           (2000000000, "69279037"), (20000000000, "65353130")]


@pytest.mark.parametrize(("unix", "code"), VECTORS)
def test_rfc_6238_sha1_vectors(unix: int, code: str) -> None:
    assert totp.code_at(SEED, totp.step_of(unix), digits=8) == code


def test_a_code_is_taken_within_one_step_either_side_and_never_again() -> None:
    secret = totp.new_secret()
    now = 1_800_000_000.0
    step = totp.step_of(now)
    assert totp.matching_step(secret, totp.code_at(secret, step), now, 0) == step
    assert totp.matching_step(secret, totp.code_at(secret, step - 1), now, 0) == step - 1
    assert totp.matching_step(secret, totp.code_at(secret, step + 2), now, 0) is None
    # The step accepted once is refused afterwards, and so is every earlier one.
    assert totp.matching_step(secret, totp.code_at(secret, step), now, step) is None
    assert totp.matching_step(secret, totp.code_at(secret, step - 1), now, step) is None


@pytest.mark.parametrize("code", ["", "12345", "1234567", "12a456", "１２３４５６"])
def test_malformed_codes_match_nothing(code: str) -> None:
    assert totp.matching_step(totp.new_secret(), code, 1_800_000_000.0, 0) is None


def test_the_provisioning_uri_names_issuer_and_account() -> None:
    uri = totp.provisioning_uri("JBSWY3DPEHPK3PXP", "ana@example.jp", "LPD Gateway")
    assert uri == "otpauth://totp/LPD%20Gateway%3Aana%40example.jp?secret=JBSWY3DPEHPK3PXP&issuer=LPD+Gateway"
