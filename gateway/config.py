"""Every GATEWAY_* setting, read once from the environment, validated and frozen.

This module is the only reader of GATEWAY_* variables; `SETTINGS` below is the documented list
(the README table and the deployment files are checked against it by tests).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A GATEWAY_* variable has a value the gateway cannot use; the message says how to fix it."""


@dataclass(frozen=True, slots=True)
class Setting:
    env: str
    default: str | None
    help: str
    parse: Callable[[str], Any]


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError("expected a TCP port between 0 and 65535")
    return port


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("expected a whole number above 0")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("expected a whole number, 0 or above")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("expected a number above 0")
    return value


def _networks(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip())


def _database_url(text: str) -> str | None:
    if not text:
        return None
    if not text.startswith(("postgresql://", "postgres://")):
        raise ValueError("expected a postgresql:// URL, e.g. postgresql://gateway@db.internal/gateway")
    return text


def _token_ttl(text: str) -> int:
    value = int(text)
    if not 10 <= value <= 86400:
        raise ValueError("expected a number of seconds between 10 and 86400")
    return value


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError("expected one of DEBUG, INFO, WARNING, ERROR")
    return level


def _witnesses(text: str) -> tuple[tuple[str, str], ...]:
    """`URL=VKEY` pairs, comma-separated: each witness's tlog-witness URL and cosignature/v1 verifier key."""
    from keys.cosignatures import CosignatureVerifier
    from keys.notes import NoteError

    found: list[tuple[str, str]] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        url, equals, vkey = part.partition("=")  # the first "=": a vkey's base64 may end in "="
        if not equals or not url.startswith(("http://", "https://")):
            raise ValueError(f"expected URL=VKEY, e.g. https://witness.example/lpd=witness.example/w1+1a2b3c4d+BA..., "
                             f"not {part!r}")
        try:
            CosignatureVerifier.from_vkey(vkey)
        except NoteError as exc:
            raise ValueError(f"{vkey!r} is not a witness verifier key: {exc.reason}") from None
        if any(vkey == known for _, known in found):
            raise ValueError(f"witness key {vkey!r} is listed twice")
        found.append((url.rstrip("/"), vkey))
    return tuple(found)


SETTINGS: tuple[Setting, ...] = (
    Setting("GATEWAY_HOST", "127.0.0.1", "Address the HTTP server binds to.", str),
    Setting("GATEWAY_PORT", "8080", "TCP port the HTTP server listens on.", _port),
    Setting("GATEWAY_HOME", ".gateway", "Folder for the embedded PostgreSQL, the master key file and demo.json.",
            lambda t: Path(t).expanduser().resolve()),
    Setting("GATEWAY_DATABASE_URL", "", "PostgreSQL URL; empty runs an embedded PostgreSQL under GATEWAY_HOME.",
            _database_url),
    Setting("GATEWAY_MASTER_KEY", "", "URL-safe base64 32-byte key sealing secrets at rest; empty uses GATEWAY_HOME/master.key.",
            str),
    Setting("GATEWAY_PUBLIC_URL", "", "Base URL members use (links, demo.json); empty means http://HOST:PORT.", str),
    Setting("GATEWAY_INSTANCE", "", "Name of this instance in audit logs; empty means hostname.", str),
    Setting("GATEWAY_POOL_SIZE", "8",
            "PostgreSQL connections per instance for requests (the audit writer has 2 of its own besides).",
            _positive_int),
    Setting("GATEWAY_STATEMENT_TIMEOUT_SECONDS", "60",
            "Longest any one PostgreSQL statement may run (a publish's COPY, an evidence export); "
            "record reads a client waits for give up sooner, at the audit deadline.", _positive_float),
    Setting("GATEWAY_PAGE_CACHE_BYTES", str(64 << 20),
            "Memory for rendered record pages asked for again (0 turns the cache off).", _non_negative_int),
    Setting("GATEWAY_MAX_BODY_BYTES", str(1 << 20), "Largest JSON request body accepted (413 beyond).",
            _positive_int),
    Setting("GATEWAY_MAX_UPLOAD_BYTES", str(10 << 30), "Largest dataset upload accepted, as sent and inflated (413 beyond).",
            _positive_int),
    Setting("GATEWAY_AUDIT_DEADLINE_SECONDS", "2.0",
            "How long a request waits for its audit commit before failing closed with 503.", _positive_float),
    Setting("GATEWAY_AUDIT_BATCH_MAX", "2000", "Most audit events written in one group commit.", _positive_int),
    Setting("GATEWAY_CHECKPOINT_EVENTS", "1000", "Sign an audit checkpoint after this many new events.",
            _positive_int),
    Setting("GATEWAY_CHECKPOINT_SECONDS", "2.0", "Sign an audit checkpoint at least this often while events arrive.",
            _positive_float),
    Setting("GATEWAY_TRUSTED_PROXIES", "", "Comma-separated CIDRs of proxies whose forwarding headers are trusted.",
            _networks),
    Setting("GATEWAY_LOG_LEVEL", "INFO", "Log level: DEBUG, INFO, WARNING or ERROR.", _log_level),
    Setting("GATEWAY_TOKEN_TTL_SECONDS", "300", "Lifetime of OAuth access tokens (JWT) from /oauth/token.",
            _token_ttl),
    Setting("GATEWAY_AUTH_BACKOFF_FAILURES", "10",
            "Failed authentications from one client address within the window before it gets 429.", _positive_int),
    Setting("GATEWAY_AUTH_BACKOFF_WINDOW_SECONDS", "60",
            "Window in which failed authentications from one address are counted.", _positive_float),
    Setting("GATEWAY_AUTH_BACKOFF_MAX_SECONDS", "300",
            "Longest Retry-After a failing address is made to wait (the wait doubles up to it).", _positive_float),
    Setting("GATEWAY_WITNESSES", "",
            "Comma-separated URL=VKEY pairs: C2SP tlog-witnesses that cosign every audit checkpoint (empty: none).",
            _witnesses),
)


@dataclass(frozen=True, slots=True)
class Config:
    host: str
    port: int
    home: Path
    database_url: str | None
    master_key: str
    public_url: str
    instance: str
    pool_size: int
    statement_timeout_seconds: float
    page_cache_bytes: int
    max_body_bytes: int
    max_upload_bytes: int
    audit_deadline_seconds: float
    audit_batch_max: int
    checkpoint_events: int
    checkpoint_seconds: float
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(default=())
    log_level: str = "INFO"
    token_ttl_seconds: int = 300
    auth_backoff_failures: int = 10
    auth_backoff_window_seconds: float = 60.0
    auth_backoff_max_seconds: float = 300.0
    witnesses: tuple[tuple[str, str], ...] = ()

    @property
    def base_url(self) -> str:
        return self.public_url.rstrip("/") or f"http://{self.host}:{self.port}"

    @property
    def embedded(self) -> bool:
        return self.database_url is None


def load(environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate every GATEWAY_* variable; raise ConfigError naming the first bad one."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = env.get(setting.env, setting.default or "")
        try:
            values[setting.env.removeprefix("GATEWAY_").lower()] = setting.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{setting.env}={raw!r} is not valid: {exc}. {setting.help}") from None
    known = {s.env for s in SETTINGS}
    # A typo such as GATEWAY_DATABSE_URL would otherwise silently start an embedded database.
    # GATEWAY_TEST_* belong to the test suite, not to the gateway.
    unknown = sorted(k for k in env if k.startswith("GATEWAY_") and k not in known
                     and not k.startswith("GATEWAY_TEST_"))
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]}: see the README's list of GATEWAY_* variables")
    values["instance"] = values["instance"] or socket.gethostname()
    return Config(**values)
