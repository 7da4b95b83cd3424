"""Shapes shared across the gateway: ASGI aliases and the ids of domain nouns."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, NewType
from uuid import UUID

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

VendorId = NewType("VendorId", UUID)
DatasetId = NewType("DatasetId", UUID)
MemberId = NewType("MemberId", UUID)
LicenceId = NewType("LicenceId", UUID)
CredentialId = NewType("CredentialId", UUID)
