"""Caller identification from headers and peer address."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from starlette.requests import Request

from router.api.auth import Authenticator, hash_key
from router.core.tiers import Tier
from router.errors import AuthenticationFailed, InvalidRequest

TIERS = {"anonymous": Tier("anonymous"), "paid": Tier("paid")}
SECRET = b"test-identity-secret-0123456789"


def request(peer: str, *lines: tuple[str, str], **headers: str) -> Request:
    raw = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    raw += [(k.encode(), v.encode()) for k, v in lines]  # repeated header lines, in order
    return Request({"type": "http", "headers": raw, "client": (peer, 5555), "method": "POST", "path": "/"})


def auth(keys: dict[str, str] | None = None, trusted: tuple[str, ...] = ()) -> Authenticator:
    return Authenticator(
        tiers=TIERS, keys=keys or {}, anonymous_tier="anonymous", trusted_proxies=trusted, identity_secret=SECRET
    )


def ip(network: str) -> str:
    """The identity an anonymous caller from `network` gets: an HMAC, never the address."""
    return "ip:" + hmac.new(SECRET, network.encode(), hashlib.sha256).hexdigest()[:32]


async def test_keys_map_to_tiers_by_hash_and_unknown_keys_are_refused() -> None:
    a = auth({hash_key("sk-good"): "paid"})
    caller = await a.identify(request("192.0.2.1", authorization="Bearer sk-good"))
    assert caller.tier.name == "paid"
    assert "sk-good" not in caller.identity
    with pytest.raises(AuthenticationFailed):
        await a.identify(request("192.0.2.1", authorization="Bearer sk-bad"))
    anon = await a.identify(request("192.0.2.1"))
    assert (anon.tier.name, anon.identity) == ("anonymous", ip("192.0.2.1"))


async def test_a_repeated_authorization_header_is_refused_where_keys_count() -> None:
    """Which of two keys counts would be a guess (a proxy in front may read the other): 400, either order."""
    a = auth({hash_key("sk-good"): "paid"})
    for first, second in (("sk-good", "sk-bad"), ("sk-bad", "sk-good")):
        twice = request("192.0.2.1", ("authorization", f"Bearer {first}"), ("authorization", f"Bearer {second}"))
        with pytest.raises(InvalidRequest) as refused:
            await a.identify(twice)
        assert refused.value.param == "authorization"
    # With no keys configured, authorization is ignored, repeated or not.
    anon = await auth().identify(request("192.0.2.1", ("authorization", "Bearer a"), ("authorization", "Bearer b")))
    assert anon.tier.name == "anonymous"


async def test_with_no_keys_configured_a_bearer_token_is_ignored() -> None:
    caller = await auth().identify(request("192.0.2.9", authorization="Bearer sk-anything"))
    assert (caller.tier.name, caller.identity) == ("anonymous", ip("192.0.2.9"))


async def test_ipv6_callers_are_keyed_per_64_and_mapped_ipv4_unwrapped() -> None:
    a = auth()
    one = await a.identify(request("2001:db8:1:2::1"))
    two = await a.identify(request("2001:db8:1:2:ffff::9"))
    other = await a.identify(request("2001:db8:1:3::1"))
    assert one.identity == two.identity == ip("2001:db8:1:2::/64")
    assert other.identity != one.identity
    assert (await a.identify(request("::ffff:192.0.2.5"))).identity == ip("192.0.2.5")


async def test_forwarded_for_only_from_trusted_proxies() -> None:
    untrusted = auth()
    trusted = auth(trusted=("10.0.0.0/8",))
    xff = {"x_forwarded_for": "203.0.113.9, 10.0.0.7"}
    assert (await untrusted.identify(request("10.0.0.1", **xff))).identity == ip("10.0.0.1")
    assert (await trusted.identify(request("10.0.0.1", **xff))).identity == ip("203.0.113.9")
    assert (await trusted.identify(request("192.0.2.1", **xff))).identity == ip("192.0.2.1")


async def test_peers_remembered_between_requests_never_mix_trusted_and_untrusted() -> None:
    """Untrusted peers' networks are kept between requests (parsed once); a trusted proxy's never are, since
    each of its requests names another client."""
    a = auth(trusted=("10.0.0.0/8",))
    for _ in range(2):
        assert a.client_network(request("192.0.2.1", x_forwarded_for="203.0.113.1")) == "192.0.2.1"
        assert a.client_network(request("2001:db8:1:2::1")) == "2001:db8:1:2::/64"
        assert a.client_network(request("10.0.0.1", x_forwarded_for="203.0.113.2")) == "203.0.113.2"
        assert a.client_network(request("10.0.0.1", x_forwarded_for="203.0.113.3")) == "203.0.113.3"
        assert a.client_network(request("10.0.0.1")) == "10.0.0.1"


async def test_forwarded_for_lines_are_joined_before_the_right_most_untrusted_hop_is_taken() -> None:
    """HAProxy's `option forwardfor` appends a line of its own: reading only the first line let a client pick
    its identity (regression: 6 of 6 admitted at 3 rpm)."""
    a = auth(trusted=("127.0.0.1/32",))
    seen = set()
    for i in range(6):
        spoofed = request("127.0.0.1", ("x-forwarded-for", f"10.2.2.{i}"), ("x-forwarded-for", "10.1.1.1"))
        assert a.client_network(spoofed) == "10.1.1.1"
        seen.add((await a.identify(spoofed)).identity)
    assert seen == {ip("10.1.1.1")}


@pytest.mark.parametrize("hop", ["not-an-ip", "unknown", "1.2.3.4:5678"])
async def test_an_unparseable_hop_is_a_client_of_its_own_not_the_proxys_bucket(hop: str) -> None:
    a = auth(trusted=("10.0.0.0/8",))
    caller = await a.identify(request("10.0.0.1", x_forwarded_for=f"203.0.113.9, {hop}"))
    assert a.client_network(request("10.0.0.1", x_forwarded_for=f"203.0.113.9, {hop}")) == f"hop:{hop}"
    assert caller.identity not in {ip("10.0.0.1"), ip("203.0.113.9")}


async def test_identities_are_keyed_hashes_that_change_with_the_secret() -> None:
    one = await auth().identify(request("192.0.2.1"))
    other = Authenticator(tiers=TIERS, keys={}, anonymous_tier="anonymous", identity_secret=b"another-secret-xyz")
    two = await other.identify(request("192.0.2.1"))
    assert "192.0.2.1" not in one.identity
    assert one.identity != two.identity
    assert one.identity != "ip:" + hashlib.sha256(b"192.0.2.1").hexdigest()[:32]
