"""Time-based one-time passwords (RFC 6238 over RFC 4226's HOTP), as authenticator apps compute them.

SHA-1, 6 digits and 30-second steps: the parameters every authenticator app assumes when an
otpauth:// URI names none. A code is accepted for the current step and one step either side (RFC 6238
§5.2 recommends at most one step of network delay); the caller stores the step it accepted and refuses
that step and every earlier one afterwards, so that a code seen once cannot be replayed (§5.2).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
import urllib.parse

STEP_SECONDS = 30
DIGITS = 6
SECRET_BYTES = 20  # 160 bits: RFC 4226 §4 R6 recommends the HMAC-SHA-1 output length
WINDOW = 1


def new_secret() -> str:
    """A fresh secret as the unpadded base32 text authenticator apps take."""
    return base64.b32encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii").rstrip("=")


def _key(secret: str) -> bytes:
    text = secret.strip().replace(" ", "").upper()
    return base64.b32decode(text + "=" * (-len(text) % 8))


def code_at(secret: str, step: int, digits: int = DIGITS) -> str:
    """HOTP (RFC 4226 §5.3) of the counter `step`."""
    mac = hmac.new(_key(secret), struct.pack(">Q", step), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    number = struct.unpack(">I", mac[offset:offset + 4])[0] & 0x7FFFFFFF
    return str(number % 10**digits).zfill(digits)


def step_of(unix_seconds: float) -> int:
    return int(unix_seconds // STEP_SECONDS)


def matching_step(secret: str, code: str, unix_seconds: float, after_step: int) -> int | None:
    """The time step within the window whose code is `code` and which is later than `after_step`
    (the last step accepted before), or None. Compared in constant time per candidate."""
    if not (len(code) == DIGITS and code.isascii() and code.isdigit()):
        return None
    now = step_of(unix_seconds)
    found = None
    for step in range(now - WINDOW, now + WINDOW + 1):
        if hmac.compare_digest(code_at(secret, step), code) and step > after_step and found is None:
            found = step
    return found


def provisioning_uri(secret: str, account: str, issuer: str) -> str:
    """The otpauth:// URI a QR code carries (Google Authenticator's Key Uri Format)."""
    label = urllib.parse.quote(f"{issuer}:{account}")
    query = urllib.parse.urlencode({"secret": secret, "issuer": issuer})
    return f"otpauth://totp/{label}?{query}"


def main(argv: list[str] | None = None) -> int:
    """`python -m keys.totp SECRET`: the code an authenticator app would show now for SECRET (the demo's
    console users' secrets are in demo.json), for those without an app at hand."""
    import sys
    import time

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m keys.totp SECRET  (the base32 secret, e.g. a totp_secret of demo.json)",
              file=sys.stderr)
        return 2
    try:
        print(code_at(args[0], step_of(time.time())))
    except ValueError:  # binascii.Error: not base32
        print(f"not a base32 TOTP secret: {args[0]!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
