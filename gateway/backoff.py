"""Backoff after failed authentications, per client address, in memory on each instance.

Guessing a 256-bit secret is hopeless, so this is not what keeps keys safe; it keeps a misconfigured
client or a scanner that hammers the gateway with bad credentials from costing HMACs, signature checks
and audit rows without end, and it leaves every other address alone.

Rule: after `threshold` failures from one address within `window` seconds, that address's failures
are answered 429 with a Retry-After for 1 s; each further failure after a wait doubles the next wait,
up to `max_delay`. Only failures are slowed: a valid credential from a blocked address is served,
because checking it costs microseconds and one misconfigured client behind a company's NAT must not
lock out its colleagues. An address that stays quiet for `window` seconds
after its last wait starts afresh. IPv6 clients are counted per /64 (one customer's allocation), or a
single host could step around the rule by changing address.

Per instance and in memory: N instances behind a balancer allow at most N times the threshold before
every one of them pushes back, which is ample for the purpose above. The table is bounded: beyond
`max_tracked` addresses the least recently seen are forgotten.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from gateway.credentials import IPAddress

BASE_DELAY_SECONDS = 1.0
# Doublings of the base delay beyond any sensible max_delay (2**62 s), far below float overflow.
_MAX_DOUBLINGS = 63


@dataclass(slots=True)
class _Entry:
    window_start: float
    failures: int = 0
    blocks: int = 0
    blocked_until: float = 0.0
    last_failure: float = 0.0


class FailureBackoff:
    def __init__(self, threshold: int = 10, window: float = 60.0, max_delay: float = 300.0,
                 max_tracked: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.window = window
        self.max_delay = max_delay
        self.max_tracked = max_tracked
        self.clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def retry_after(self, address: IPAddress | None) -> int:
        """Whole seconds this address must still wait (0: it may try)."""
        entry = self._entries.get(_key(address)) if address is not None else None
        if entry is None:
            return 0
        left = entry.blocked_until - self.clock()
        return math.ceil(left) if left > 0 else 0

    def failure(self, address: IPAddress | None) -> int:
        """Count a failed authentication; returns the wait it starts, in whole seconds (0: none yet)."""
        if address is None:  # e.g. a Unix socket: nothing to tell clients apart by
            return 0
        now = self.clock()
        key = _key(address)
        entry = self._entries.get(key)
        if entry is not None and entry.blocks and now - max(entry.last_failure, entry.blocked_until) > self.window:
            entry = None  # quiet long enough after its last wait: forgiven
        if entry is None:
            entry = _Entry(window_start=now)
            self._entries[key] = entry
            while len(self._entries) > self.max_tracked:
                self._entries.popitem(last=False)
        self._entries.move_to_end(key)
        entry.last_failure = now
        if entry.blocks:
            # Already made to wait once: every further failure doubles the wait (bounded).
            return self._block(entry, now)
        if now - entry.window_start > self.window:
            entry.window_start, entry.failures = now, 0
        entry.failures += 1
        if entry.failures >= self.threshold:
            return self._block(entry, now)
        return 0

    def _block(self, entry: _Entry, now: float) -> int:
        # The count stops where the wait has reached its ceiling, so that the doubling stays bounded
        # arithmetic however many failures an address piles up (2.0 ** 1024 would overflow).
        entry.blocks = min(entry.blocks + 1, _MAX_DOUBLINGS)
        delay = min(BASE_DELAY_SECONDS * 2.0 ** (entry.blocks - 1), self.max_delay)
        entry.blocked_until = now + delay
        return math.ceil(delay)

    def __len__(self) -> int:
        return len(self._entries)


def _key(address: IPAddress) -> str:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
