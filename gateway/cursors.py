"""Opaque, tamper-proof page cursors: the keyset position and the query it belongs to, MACed.

A cursor is bound to the licence and to the exact scope of the first page (partitions, versions,
format), so it can neither be edited to reach other data nor replayed against another query.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import orjson

from gateway.errors import BadRequest

MAX_CURSOR_LENGTH = 1024
_MAC_BYTES = 16


def _mac(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest()[:_MAC_BYTES]


def encode(state: dict[str, Any], version: int, key: bytes) -> str:
    payload = orjson.dumps(state)
    blob = version.to_bytes(2, "big") + _mac(key, payload) + payload
    return base64.urlsafe_b64encode(blob).decode().rstrip("=")


def decode(text: str, keys: dict[int, bytes]) -> dict[str, Any]:
    invalid = BadRequest("cursor is not valid: use the 'next' link of the previous page unchanged")
    if len(text) > MAX_CURSOR_LENGTH:
        raise invalid
    try:
        blob = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        raise invalid from None
    key = keys.get(int.from_bytes(blob[:2], "big"))
    payload = blob[2 + _MAC_BYTES:]
    if key is None or len(blob) < 2 + _MAC_BYTES or not hmac.compare_digest(blob[2:2 + _MAC_BYTES], _mac(key, payload)):
        raise invalid
    try:
        state = orjson.loads(payload)
    except orjson.JSONDecodeError:  # a valid MAC over something else (another release's shape): still invalid
        raise invalid from None
    if not isinstance(state, dict):
        raise invalid
    return state
