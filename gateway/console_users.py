"""Console users: the people who sign in to the web console, their second factor and their sessions.

A user belongs to one vendor, as its admin (`vendor-admin`) or its compliance officer (`compliance`,
who reads everything of the vendor and changes nothing), or to one of its members (`member`). Users
sign in with email and password (argon2id) and then a TOTP code (RFC 6238, keys/totp.py); whoever has
no second factor yet enrols one at that step. Every sign-in, refusal, sign-out and change commits its
audit event in the change's own transaction, with the person as the actor (kind `console-user`,
schemas/audit-format.md §2.1.3), so the evidence says which employee did what.

Sessions are rows, looked up on every console request: signing out, a suspension or a timeout ends a
session on every instance at its next request. Failed sign-ins are counted on the user's row, so the
backoff holds across instances too.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import argon2
import asyncpg

from gateway.actors import Actor, RequestInfo
from gateway.audit.events import EventKind, Outcome
from gateway.audit.writer import AuditWriter
from gateway.errors import Conflict, InvalidInput, NotFound
from keys import totp
from keys.sealing import MasterKey

ROLES = ("vendor-admin", "compliance", "member")
ACTOR_KIND = "console-user"
ISSUER = "LPD Gateway"
# A signed-in session ends after this long without a request, and in any case this long after sign-in.
IDLE_TIMEOUT = timedelta(minutes=30)
ABSOLUTE_TIMEOUT = timedelta(hours=12)
# The password step's session lives only long enough to type a code.
SECOND_FACTOR_TIMEOUT = timedelta(minutes=5)
# last_seen_at is written at most this often: a page view is a read, not a write, most of the time.
TOUCH_EVERY = timedelta(seconds=30)
# Backoff: after this many failures in a row, each further failure doubles the wait, up to the cap.
FREE_FAILURES = 5
FIRST_WAIT_SECONDS = 30
LONGEST_WAIT_SECONDS = 15 * 60
MIN_PASSWORD_CHARS = 12
EMAIL = re.compile(r"^[^@\s]{1,64}@[A-Za-z0-9.-]{1,189}\.[A-Za-z]{2,}$")
COOKIE_TOKEN = re.compile(r"^[A-Za-z0-9_-]{43}$")

_HASHER = argon2.PasswordHasher()  # argon2id, RFC 9106's second recommended parameter set
# Compared against when the email is unknown, so that a sign-in takes as long whether or not it exists.
_ABSENT_HASH = _HASHER.hash(secrets.token_urlsafe(16))
REFUSED = "the email, password or code is not right"


@dataclass(frozen=True, slots=True)
class ConsoleUser:
    id: uuid.UUID
    vendor_id: uuid.UUID
    member_id: uuid.UUID | None
    role: str
    email: str
    display_name: str
    status: str
    totp_enrolled: bool
    created_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> ConsoleUser:
        return cls(row["id"], row["vendor_id"], row["member_id"], row["role"], row["email"], row["display_name"],
                   row["status"], row["totp_enrolled"], row["created_at"])

    def actor(self, request: RequestInfo | None = None) -> Actor:
        """The person as the actor of audit events: their id where a key's would be, their email as its label."""
        return Actor(kind=ACTOR_KIND, vendor_id=self.vendor_id, member_id=self.member_id, credential_id=self.id,
                     request=request, credential_label=self.email)

    def to_json(self) -> dict[str, object]:
        return {"id": str(self.id), "role": self.role, "email": self.email, "display_name": self.display_name,
                "member_id": None if self.member_id is None else str(self.member_id), "status": self.status,
                "totp_enrolled": self.totp_enrolled}


@dataclass(frozen=True, slots=True)
class Session:
    id: uuid.UUID
    token: str
    stage: str  # 'password' (the second factor is awaited) or 'active'
    user: ConsoleUser


class SignInRefused(Exception):
    """A sign-in step failed; `retry_after` is set when the account must wait."""

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def normalise_email(email: str) -> str:
    text = email.strip().lower()
    if not EMAIL.match(text) or len(text) > 254:
        raise InvalidInput(f"{email!r} is not an email address (name@example.jp)", field="email")
    return text


def _token_hash(token: str) -> bytes:
    # Session tokens are 256 random bits: a plain SHA-256 is the accepted storage (FIELD-NOTES: no
    # password hash for random secrets); a database dump gives no usable cookie.
    return hashlib.sha256(token.encode()).digest()


def _totp_context(user_id: uuid.UUID) -> bytes:
    return f"console-totp:{user_id}".encode()


def _wait(failures: int) -> int:
    if failures < FREE_FAILURES:
        return 0
    return min(LONGEST_WAIT_SECONDS, FIRST_WAIT_SECONDS * 2 ** (failures - FREE_FAILURES))


def new_password() -> str:
    return secrets.token_urlsafe(12)  # 16 characters, 96 bits


async def create(writer: AuditWriter, master: MasterKey, actor: Actor, vendor_id: uuid.UUID, role: str,
                 email: str, *, member_id: uuid.UUID | None = None, display_name: str = "",
                 password: str | None = None, enrol_totp: bool = False) -> tuple[ConsoleUser, str, str | None]:
    """Create a user; returns it, its password (the one given or a new one, shown once) and, with
    `enrol_totp`, its TOTP secret (the demo's users arrive enrolled; others enrol at first sign-in)."""
    if role not in ROLES:
        raise InvalidInput(f"role must be one of {', '.join(ROLES)}", field="role")
    if (role == "member") != (member_id is not None):
        raise InvalidInput("a member user names its member, and only a member user does", field="member_id")
    if len(display_name) > 200 or display_name != display_name.strip():
        raise InvalidInput("display_name is at most 200 characters, with no space at its start or end",
                           field="display_name")
    email = normalise_email(email)
    password = new_password() if password is None else password
    if len(password) < MIN_PASSWORD_CHARS:
        raise InvalidInput(f"a password has at least {MIN_PASSWORD_CHARS} characters", field="password")
    password_hash = await asyncio.to_thread(_HASHER.hash, password)
    user_id = uuid.uuid4()
    secret = totp.new_secret() if enrol_totp else None
    sealed = None if secret is None else master.seal(secret.encode(), context=_totp_context(user_id))
    async with writer.change() as change:
        if member_id is not None and not await change.conn.fetchval(
                "SELECT true FROM members WHERE id = $1 AND vendor_id = $2 AND status <> 'revoked'", member_id, vendor_id):
            raise NotFound("member")
        try:
            row = await change.conn.fetchrow(
                "INSERT INTO console_users (id, vendor_id, member_id, role, email, display_name, password_hash, "
                "totp_sealed, totp_enrolled) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING *",
                user_id, vendor_id, member_id, role, email, display_name, password_hash, sealed, enrol_totp)
        except asyncpg.UniqueViolationError:
            raise Conflict(f"a console user with the email {email} exists already") from None
        change.record(actor.event(EventKind.USER_CREATE, Outcome.CHANGE, vendor_id=vendor_id, member_id=member_id,
                                  detail={"user_id": str(user_id), "email": email, "role": role}))
    return ConsoleUser.from_row(row), password, secret


async def get(pool: asyncpg.Pool, vendor_id: uuid.UUID, user_id: uuid.UUID) -> ConsoleUser:
    row = await pool.fetchrow("SELECT * FROM console_users WHERE id = $1 AND vendor_id = $2", user_id, vendor_id)
    if row is None:
        raise NotFound("user")
    return ConsoleUser.from_row(row)


async def find(pool: asyncpg.Pool, vendor_id: uuid.UUID, email_or_id: str) -> ConsoleUser:
    try:
        return await get(pool, vendor_id, uuid.UUID(email_or_id))
    except ValueError:
        pass
    row = await pool.fetchrow("SELECT * FROM console_users WHERE email = $1 AND vendor_id = $2",
                              email_or_id.strip().lower(), vendor_id)
    if row is None:
        raise NotFound("user")
    return ConsoleUser.from_row(row)


async def list_for_vendor(pool: asyncpg.Pool, vendor_id: uuid.UUID,
                          member_id: uuid.UUID | None = None) -> list[ConsoleUser]:
    rows = await pool.fetch("SELECT * FROM console_users WHERE vendor_id = $1 AND ($2::uuid IS NULL OR member_id = $2) "
                            "ORDER BY role, email", vendor_id, member_id)
    return [ConsoleUser.from_row(row) for row in rows]


async def set_status(writer: AuditWriter, actor: Actor, vendor_id: uuid.UUID, user_id: uuid.UUID,
                     action: str) -> ConsoleUser:
    """Suspend (ending every session of the user in the same transaction) or resume a user."""
    status, kind = {"suspend": ("suspended", EventKind.USER_SUSPEND), "resume": ("active", EventKind.USER_RESUME)}[action]
    async with writer.change() as change:
        current = await change.conn.fetchval(
            "SELECT status FROM console_users WHERE id = $1 AND vendor_id = $2 FOR UPDATE", user_id, vendor_id)
        if current is None:
            raise NotFound("user")
        if current == status:
            raise Conflict(f"this user is {status} already")
        row = await change.conn.fetchrow(
            "UPDATE console_users SET status = $3, updated_at = now(), failed_sign_ins = 0, locked_until = NULL "
            "WHERE id = $1 AND vendor_id = $2 RETURNING *", user_id, vendor_id, status)
        if status == "suspended":
            await change.conn.execute("UPDATE console_sessions SET ended_at = now(), end_reason = 'user suspended' "
                                      "WHERE user_id = $1 AND ended_at IS NULL", user_id)
        change.record(actor.event(kind, Outcome.CHANGE, vendor_id=vendor_id, member_id=row["member_id"],
                                  detail={"user_id": str(user_id), "email": row["email"]}))
    return ConsoleUser.from_row(row)


# -- signing in -----------------------------------------------------------------------------------------

async def _refuse(writer: AuditWriter, request: RequestInfo, row: asyncpg.Record | None, email: str,
                  reason: str, *, count: bool = True) -> SignInRefused:
    """Count the failure on the user's row and audit it, in one transaction; the refusal to raise."""
    retry_after = None
    async with writer.change() as change:
        if row is not None and count:
            failures = await change.conn.fetchval(
                "UPDATE console_users SET failed_sign_ins = failed_sign_ins + 1, locked_until = CASE "
                "WHEN failed_sign_ins + 1 >= $2 THEN now() + make_interval(secs => least($4::float8, $3::float8 * "
                "power(2, least(failed_sign_ins + 1 - $2, 30)))) END WHERE id = $1 RETURNING failed_sign_ins",
                row["id"], FREE_FAILURES, FIRST_WAIT_SECONDS, LONGEST_WAIT_SECONDS)
            retry_after = _wait(failures) or None
        actor = ConsoleUser.from_row(row).actor(request) if row is not None else Actor(kind="anonymous", request=request)
        change.record(actor.event(EventKind.CONSOLE_SIGN_IN_REJECT, Outcome.DENY, reason=reason,
                                  vendor_id=None if row is None else row["vendor_id"],
                                  detail={"email": email[:254]}))
    return SignInRefused(REFUSED, retry_after)


def _locked(row: asyncpg.Record) -> int | None:
    if row["locked_until"] is None:
        return None
    seconds = int(row["locked_until"].timestamp() - time.time()) + 1
    return seconds if seconds > 0 else None


async def sign_in_password(writer: AuditWriter, master: MasterKey, email: str, password: str,
                           request: RequestInfo) -> Session:
    """The first step: a right password opens a session that awaits the second factor (and, for a user
    with none yet, holds the secret to enrol). Raises SignInRefused."""
    email = email.strip().lower()[:254]
    pool = writer.pool
    row = await pool.fetchrow("SELECT * FROM console_users WHERE email = $1", email)
    if row is not None and (wait := _locked(row)) is not None:
        await _refuse(writer, request, row, email, "sign-in while backing off", count=False)
        raise SignInRefused(f"too many failed sign-ins: try again in {wait} seconds", wait)
    try:
        await asyncio.to_thread(_HASHER.verify, _ABSENT_HASH if row is None else row["password_hash"], password)
        right = row is not None
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        right = False
    if not right:
        raise await _refuse(writer, request, row, email, "wrong password" if row is not None else "unknown email")
    if row["status"] != "active":
        raise await _refuse(writer, request, row, email, "user suspended", count=False)
    if not row["totp_enrolled"] and row["totp_sealed"] is None:
        secret = totp.new_secret()
        await pool.execute("UPDATE console_users SET totp_sealed = $2 WHERE id = $1 AND totp_sealed IS NULL",
                           row["id"], master.seal(secret.encode(), context=_totp_context(row["id"])))
    return await _open_session(pool, row["id"], "password", SECOND_FACTOR_TIMEOUT)


async def _open_session(conn: asyncpg.Pool | asyncpg.Connection, user_id: uuid.UUID, stage: str,
                        lifetime: timedelta) -> Session:
    token = secrets.token_urlsafe(32)
    session_id = uuid.uuid4()
    await conn.execute("INSERT INTO console_sessions (id, token_sha256, user_id, stage, expires_at) "
                       "VALUES ($1, $2, $3, $4, now() + $5::interval)", session_id, _token_hash(token), user_id,
                       stage, lifetime)
    row = await conn.fetchrow("SELECT * FROM console_users WHERE id = $1", user_id)
    return Session(session_id, token, stage, ConsoleUser.from_row(row))


def enrolment_secret(master: MasterKey, sealed: bytes, user_id: uuid.UUID) -> str:
    return master.open(sealed, context=_totp_context(user_id)).decode()


async def pending_secret(pool: asyncpg.Pool, master: MasterKey, session: Session) -> str | None:
    """The TOTP secret a user without a second factor is to enrol (None once enrolled)."""
    row = await pool.fetchrow("SELECT totp_sealed, totp_enrolled FROM console_users WHERE id = $1", session.user.id)
    if row["totp_enrolled"] or row["totp_sealed"] is None:
        return None
    return enrolment_secret(master, row["totp_sealed"], session.user.id)


async def sign_in_code(writer: AuditWriter, master: MasterKey, pending: Session, code: str,
                       request: RequestInfo) -> Session:
    """The second step: a TOTP code never used before ends the password-step session and opens a new
    signed-in one (a new token: a cookie planted before sign-in is worth nothing after it). A user
    without a second factor enrols the pending secret with its first code. Raises SignInRefused."""
    pool = writer.pool
    row = await pool.fetchrow("SELECT * FROM console_users WHERE id = $1", pending.user.id)
    if (wait := _locked(row)) is not None:
        raise SignInRefused(f"too many failed sign-ins: try again in {wait} seconds", wait)
    secret = enrolment_secret(master, row["totp_sealed"], row["id"])
    step = totp.matching_step(secret, code.strip(), time.time(), row["totp_last_step"])
    if step is None:
        raise await _refuse(writer, request, row, row["email"], "wrong or reused TOTP code")
    user = ConsoleUser.from_row(row)
    async with writer.change() as change:
        # The step is taken only if no other request took it first: a code works once, on every instance.
        taken = await change.conn.fetchval(
            "UPDATE console_users SET totp_last_step = $2, totp_enrolled = true, failed_sign_ins = 0, "
            "locked_until = NULL WHERE id = $1 AND totp_last_step < $2 AND status = 'active' RETURNING true",
            row["id"], step)
        if not taken:
            raise SignInRefused(REFUSED)
        ended = await change.conn.fetchval(
            "UPDATE console_sessions SET ended_at = now(), end_reason = 'second factor given' "
            "WHERE id = $1 AND ended_at IS NULL AND stage = 'password' AND expires_at > now() RETURNING true",
            pending.id)
        if not ended:
            raise SignInRefused("the sign-in took too long: start again with your email and password")
        session = await _open_session(change.conn, row["id"], "active", ABSOLUTE_TIMEOUT)
        if not row["totp_enrolled"]:
            change.record(user.actor(request).event(EventKind.CONSOLE_TOTP_ENROL, Outcome.CHANGE,
                                                    vendor_id=user.vendor_id, detail={"user_id": str(user.id)}))
        change.record(user.actor(request).event(EventKind.CONSOLE_SIGN_IN, Outcome.ALLOW, vendor_id=user.vendor_id,
                                                detail={"user_id": str(user.id), "session_id": str(session.id)}))
    return session


async def session_for(pool: asyncpg.Pool, token: str) -> Session | None:
    """The live session a cookie names, or None: ended, expired, idle too long, or its user suspended."""
    if not COOKIE_TOKEN.match(token):
        return None
    row = await pool.fetchrow(
        "SELECT s.id AS session_id, s.stage, s.last_seen_at < now() - $3::interval AS stale, u.* "
        "FROM console_sessions s JOIN console_users u ON u.id = s.user_id "
        "WHERE s.token_sha256 = $1 AND s.ended_at IS NULL AND s.expires_at > now() "
        "AND (s.stage = 'password' OR s.last_seen_at > now() - $2::interval) AND u.status = 'active'",
        _token_hash(token), IDLE_TIMEOUT, TOUCH_EVERY)
    if row is None:
        return None
    if row["stale"]:
        await pool.execute("UPDATE console_sessions SET last_seen_at = now() WHERE id = $1", row["session_id"])
    return Session(row["session_id"], token, row["stage"], ConsoleUser.from_row(row))


async def sign_out(writer: AuditWriter, session: Session, request: RequestInfo) -> None:
    async with writer.change() as change:
        await change.conn.execute("UPDATE console_sessions SET ended_at = now(), end_reason = 'signed out' "
                                  "WHERE id = $1 AND ended_at IS NULL", session.id)
        change.record(session.user.actor(request).event(
            EventKind.CONSOLE_SIGN_OUT, Outcome.CHANGE, vendor_id=session.user.vendor_id,
            detail={"user_id": str(session.user.id), "session_id": str(session.id)}))


@dataclass(frozen=True, slots=True)
class SessionRow:
    id: uuid.UUID
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime


async def live_sessions(pool: asyncpg.Pool, user_id: uuid.UUID) -> list[SessionRow]:
    rows = await pool.fetch("SELECT id, created_at, last_seen_at, expires_at FROM console_sessions WHERE user_id = $1 "
                            "AND stage = 'active' AND ended_at IS NULL AND expires_at > now() "
                            "AND last_seen_at > now() - $2::interval ORDER BY created_at DESC", user_id, IDLE_TIMEOUT)
    return [SessionRow(r["id"], r["created_at"], r["last_seen_at"], r["expires_at"]) for r in rows]


async def end_session(writer: AuditWriter, session: Session, session_id: uuid.UUID, request: RequestInfo) -> None:
    """End one of the signed-in person's own sessions (another person's id is not found)."""
    async with writer.change() as change:
        ended = await change.conn.fetchval(
            "UPDATE console_sessions SET ended_at = now(), end_reason = 'ended from another session' "
            "WHERE id = $1 AND user_id = $2 AND ended_at IS NULL RETURNING true", session_id, session.user.id)
        if not ended:
            raise NotFound("session")
        change.record(session.user.actor(request).event(
            EventKind.CONSOLE_SIGN_OUT, Outcome.CHANGE, vendor_id=session.user.vendor_id,
            detail={"user_id": str(session.user.id), "session_id": str(session_id)}))


def csrf_token(key: bytes, binding: str) -> str:
    """The token every form of a page carries: an HMAC of what the browser's cookie holds, so that only a
    page this gateway served to that browser can post (a synchronizer token without server state)."""
    return hmac.new(key, b"console-csrf:" + binding.encode(), hashlib.sha256).hexdigest()
