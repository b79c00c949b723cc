"""Caller identification from headers and peer address."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from router.api.auth import Authenticator, hash_key
from router.core.tiers import Tier
from router.errors import AuthenticationFailed

TIERS = {"anonymous": Tier("anonymous"), "paid": Tier("paid")}


def request(peer: str, **headers: str) -> Request:
    raw = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "headers": raw, "client": (peer, 5555), "method": "POST", "path": "/"})


def auth(keys: dict[str, str] | None = None, trusted: tuple[str, ...] = ()) -> Authenticator:
    return Authenticator(tiers=TIERS, keys=keys or {}, anonymous_tier="anonymous", trusted_proxies=trusted)


async def test_keys_map_to_tiers_by_hash_and_unknown_keys_are_refused() -> None:
    a = auth({hash_key("sk-good"): "paid"})
    caller = await a.identify(request("192.0.2.1", authorization="Bearer sk-good"))
    assert caller.tier.name == "paid"
    assert "sk-good" not in caller.identity
    with pytest.raises(AuthenticationFailed):
        await a.identify(request("192.0.2.1", authorization="Bearer sk-bad"))
    anon = await a.identify(request("192.0.2.1"))
    assert (anon.tier.name, anon.identity) == ("anonymous", "ip:192.0.2.1")


async def test_with_no_keys_configured_a_bearer_token_is_ignored() -> None:
    caller = await auth().identify(request("192.0.2.9", authorization="Bearer sk-anything"))
    assert (caller.tier.name, caller.identity) == ("anonymous", "ip:192.0.2.9")


async def test_ipv6_callers_are_keyed_per_64_and_mapped_ipv4_unwrapped() -> None:
    a = auth()
    one = await a.identify(request("2001:db8:1:2::1"))
    two = await a.identify(request("2001:db8:1:2:ffff::9"))
    other = await a.identify(request("2001:db8:1:3::1"))
    assert one.identity == two.identity == "ip:2001:db8:1:2::/64"
    assert other.identity != one.identity
    assert (await a.identify(request("::ffff:192.0.2.5"))).identity == "ip:192.0.2.5"


async def test_forwarded_for_only_from_trusted_proxies() -> None:
    untrusted = auth()
    trusted = auth(trusted=("10.0.0.0/8",))
    xff = {"x_forwarded_for": "203.0.113.9, 10.0.0.7"}
    assert (await untrusted.identify(request("10.0.0.1", **xff))).identity == "ip:10.0.0.1"
    assert (await trusted.identify(request("10.0.0.1", **xff))).identity == "ip:203.0.113.9"
    assert (await trusted.identify(request("192.0.2.1", **xff))).identity == "ip:192.0.2.1"
    garbage = {"x_forwarded_for": "not-an-ip"}
    assert (await trusted.identify(request("10.0.0.1", **garbage))).identity == "ip:10.0.0.1"
