"""Which client is this? Forwarding headers count only when the peer is a configured trusted proxy.

Behind a TLS-terminating proxy the peer address is the proxy's; the proxy says who the client was
(X-Forwarded-For) and which client certificate it presented (X-Client-Cert-SHA256). From any other
peer these headers are ignored, or anyone could claim an allowed network or a bound certificate.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from gateway.credentials import IPAddress, IPNetwork
from gateway.http.context import peer_address
from gateway.http.types import Scope

CLIENT_CERT_HEADER = b"x-client-cert-sha256"


@dataclass(frozen=True, slots=True)
class Forwarding:
    trusted_proxies: tuple[IPNetwork, ...] = ()

    def _trusted(self, address: IPAddress | None) -> bool:
        # Most deployments trust no proxy: answer without a generator on every request.
        return bool(self.trusted_proxies) and address is not None and any(address in net for net in self.trusted_proxies)

    def client_address(self, scope: Scope) -> IPAddress | None:
        peer = peer_address(scope)
        if not self._trusted(peer):
            return peer
        forwarded = [v.decode("latin-1") for k, v in scope["headers"] if k == b"x-forwarded-for"]
        hops = [h.strip() for line in forwarded for h in line.split(",") if h.strip()]
        # Walk back from the nearest hop: the first address not of a trusted proxy is the client.
        for hop in reversed(hops):
            try:
                address = ipaddress.ip_address(hop)
            except ValueError:
                return peer  # a garbled header proves nothing: keep the proxy's address
            if not self._trusted(address):
                return address
        return peer

    def client_cert_sha256(self, scope: Scope) -> str | None:
        if not self._trusted(peer_address(scope)):
            return None
        for name, value in scope["headers"]:
            if name == CLIENT_CERT_HEADER:
                return value.decode("latin-1").strip().lower().replace(":", "")
        return None
