"""Who is on the other end of a request: the connection's peer, or the client a trusted proxy names.

Behind an ingress every connection is the proxy's, so per-address limits would treat all users as one.
A proxy we trust (MT_FORWARDED_ALLOW_IPS: addresses or networks) appends the address it saw to
`X-Forwarded-For`; the client is then the rightmost address in that header that is not itself a trusted
proxy. Everything to its left was written by the client and proves nothing. Only the header's last
MAX_FORWARDED_BYTES are read, each entry must parse as an IP address (anything else is skipped), and what
comes out is a normalised address, so a forged header can neither grow memory nor flood the log.

Domain code: no HTTP statuses here.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

# Enough for a chain of ~30 IPv6 proxies; a longer header is read from its right end only.
MAX_FORWARDED_BYTES = 1024
# Distinct peer addresses whose trust is remembered (peers are proxies and direct clients: few in practice).
MAX_REMEMBERED_PEERS = 4096

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Caller:
    """`address`: the client's address (through trusted proxies); `proxied`: the request came through a
    trusted proxy, so its connection is shared by many clients and must never be punished as one."""

    address: str
    proxied: bool


class TrustedProxies:
    """The proxies whose X-Forwarded-For is believed. `*` trusts every peer: then any caller can pick the
    address it is limited as, so it is only for a service that nothing but the proxy can reach."""

    def __init__(self, spec: str) -> None:
        entries = [entry.strip() for entry in spec.split(",") if entry.strip()]
        self.any = "*" in entries
        networks: list[IpNetwork] = []
        for entry in entries:
            if entry == "*":
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or network (like 10.0.0.0/8)") from None
        self._networks = tuple(networks)
        self._peers: dict[str, bool] = {}

    def trusts(self, address: str) -> bool:
        known = self._peers.get(address)
        if known is None:
            known = self.any or _within(_parse(address), self._networks)
            if len(self._peers) >= MAX_REMEMBERED_PEERS:
                self._peers.clear()  # cheap to rebuild; keeps the table bounded whatever connects
            self._peers[address] = known
        return known

    def caller(self, peer: str, forwarded_for: bytes | None) -> Caller:
        """The caller of a request from `peer` that carried `forwarded_for` (None: no such header)."""
        if forwarded_for is None or not self.trusts(peer):
            return Caller(peer, proxied=False)
        client = self._rightmost_untrusted(forwarded_for)
        return Caller(client or peer, proxied=True)

    def _rightmost_untrusted(self, header: bytes) -> str | None:
        clipped = len(header) > MAX_FORWARDED_BYTES
        text = header[-MAX_FORWARDED_BYTES:].decode("latin-1")
        entries = text.split(",")
        if clipped:
            entries = entries[1:]  # the first entry may be cut in half
        leftmost = None
        for entry in reversed(entries):
            address = _parse(_strip_port(entry.strip()))
            if address is None:
                continue  # not an address: ignored, never stored or logged
            if not (self.any or _within(address, self._networks)):
                return str(address)
            leftmost = str(address)
        return leftmost  # every entry is a trusted proxy: the farthest one is the best we know


def _parse(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1 (dual-stack sockets report it so)
    return address


def _within(address, networks: tuple[IpNetwork, ...]) -> bool:
    return address is not None and any(address in network for network in networks)


def _strip_port(entry: str) -> str:
    """`[2001:db8::1]:443` and `192.0.2.1:443` (some proxies append the port) without their port."""
    if entry.startswith("["):
        return entry[1 : entry.find("]")] if "]" in entry else entry
    if entry.count(":") == 1:
        return entry.partition(":")[0]
    return entry
