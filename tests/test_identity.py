"""Who the client is behind trusted proxies: service/identity.py."""

from __future__ import annotations

import pytest

from service import identity
from service.identity import Caller, TrustedProxies


def test_a_direct_client_is_its_peer_whatever_it_claims():
    proxies = TrustedProxies("10.0.0.0/8")
    assert proxies.caller("192.0.2.1", b"198.51.100.7") == Caller("192.0.2.1", proxied=False)
    assert proxies.caller("192.0.2.1", None) == Caller("192.0.2.1", proxied=False)


def test_through_a_trusted_proxy_the_client_is_the_rightmost_untrusted_address():
    proxies = TrustedProxies("127.0.0.1, 10.0.0.0/8")
    # The client wrote "1.2.3.4" itself; the ingress (10.0.0.5) appended the address it saw, 198.51.100.7.
    assert proxies.caller("10.0.0.5", b"1.2.3.4, 198.51.100.7") == Caller("198.51.100.7", proxied=True)
    # Two trusted hops: the one before them is the client.
    assert proxies.caller("127.0.0.1", b"1.2.3.4, 198.51.100.7, 10.1.2.3") == Caller("198.51.100.7", proxied=True)
    # Every entry a trusted proxy: the farthest one.
    assert proxies.caller("127.0.0.1", b"10.9.9.9, 10.1.2.3") == Caller("10.9.9.9", proxied=True)
    # A trusted peer without the header is a direct client (a probe, a local tool): it may be held after a 429.
    assert proxies.caller("127.0.0.1", None) == Caller("127.0.0.1", proxied=False)


def test_entries_that_are_not_addresses_are_ignored_and_addresses_are_normalised():
    proxies = TrustedProxies("127.0.0.1")
    assert proxies.caller("127.0.0.1", b"evil\r\n{json}, 198.51.100.7, ,junk").address == "198.51.100.7"
    assert proxies.caller("127.0.0.1", b"2001:DB8:0:0::1").address == "2001:db8::1"
    assert proxies.caller("127.0.0.1", b"[2001:db8::1]:443").address == "2001:db8::1"
    assert proxies.caller("127.0.0.1", b"198.51.100.7:8080").address == "198.51.100.7"
    assert proxies.caller("127.0.0.1", b"::ffff:198.51.100.7").address == "198.51.100.7"
    assert proxies.caller("127.0.0.1", b"garbage only") == Caller("127.0.0.1", proxied=True)


def test_a_huge_header_is_read_from_its_right_end_only():
    proxies = TrustedProxies("127.0.0.1")
    forged = b"".join(b"%d.%d.%d.%d, " % (i % 256, 1, 2, 3) for i in range(20_000)) + b"198.51.100.7"
    assert len(forged) > 100 * identity.MAX_FORWARDED_BYTES
    assert proxies.caller("127.0.0.1", forged).address == "198.51.100.7"
    # The window starts mid-entry, inside 2001:db8::1: its tail "db8::1" parses as an address, and must be dropped.
    window = b"db8::1," + b" " * (identity.MAX_FORWARDED_BYTES - 15) + b"10.0.0.1"
    assert len(window) == identity.MAX_FORWARDED_BYTES
    clipped = b"x" * 5000 + b", 2001:" + window
    assert TrustedProxies("127.0.0.1,10.0.0.0/8").caller("127.0.0.1", clipped).address == "10.0.0.1"


def test_star_trusts_everyone_and_bad_entries_are_refused():
    assert TrustedProxies("*").caller("192.0.2.1", b"198.51.100.7") == Caller("198.51.100.7", proxied=True)
    with pytest.raises(ValueError, match="'ingress' is not an IP address or network"):
        TrustedProxies("127.0.0.1, ingress")


def test_the_table_of_peers_is_bounded(monkeypatch):
    monkeypatch.setattr(identity, "MAX_REMEMBERED_PEERS", 10)
    proxies = TrustedProxies("10.0.0.0/8")
    for index in range(100):
        assert not proxies.trusts(f"192.0.2.{index}")
    assert len(proxies._peers) <= 10
    assert proxies.trusts("10.2.3.4")
