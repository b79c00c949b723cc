"""Who is calling: an API key's tier, or the anonymous tier keyed by client address.

Keys are compared as SHA-256 hashes and never logged. The client address is the socket peer, or, only when
the peer is a configured trusted proxy, the right-most untrusted hop of X-Forwarded-For, all its header lines
joined in order (RFC 9110: a proxy such as HAProxy appends a line of its own). A hop that is not an address
(`unknown`, `1.2.3.4:5678`) is an untrusted client of its own, never the proxy's shared bucket. IPv4 callers
are keyed per address (/32), IPv6 callers per /64, since one host commonly holds a whole /64.

An address never appears in clear past this module: the caller's identity is an HMAC of it under the
deployment's identity secret, so neither Redis key names nor the ledger can be swept back to addresses."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Awaitable, Callable, Mapping, Sequence

from starlette.requests import Request

from router.core.budgets import Budget
from router.core.tiers import Caller, Tier
from router.errors import AuthenticationFailed, InvalidRequest

__all__ = ["Authenticator", "hash_key"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _address(text: str) -> IPAddress | None:
    try:
        ip = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class Authenticator:
    def __init__(
        self,
        *,
        tiers: Mapping[str, Tier],
        keys: Mapping[str, str],  # sha256 -> tier name
        key_budgets: Mapping[str, tuple[str, Budget]] | None = None,  # sha256 -> (key name, its own budget)
        anonymous_tier: str,
        trusted_proxies: Sequence[str] = (),
        key_store: Callable[[str], Awaitable[str | None]] | None = None,  # sha256 -> tier name, e.g. Redis
        identity_secret: bytes,
    ) -> None:
        self._secret = identity_secret
        self._tiers = dict(tiers)
        self._keys = dict(keys)
        self._budgets = dict(key_budgets or {})
        self._anonymous = self._tiers[anonymous_tier]
        self._trusted: list[Network] = [ipaddress.ip_network(c, strict=False) for c in trusted_proxies]
        self._key_store = key_store
        self._identities: dict[str, str] = {}  # client network -> its HMAC identity (computed once per address)
        self._peers: dict[str, str] = {}  # socket peer -> its network, for peers that are not trusted proxies
        # With no key anywhere, keys mean nothing: SDKs must send one, so it is ignored rather than refused.
        self._keys_in_use = bool(self._keys) or key_store is not None

    async def identify(self, request: Request) -> Caller:
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        name = "authorization"
        if not token:  # Anthropic's SDK sends its key as x-api-key
            token, name = request.headers.get("x-api-key", "").strip(), "x-api-key"
        if token and self._keys_in_use:
            if len(request.headers.getlist(name)) > 1:
                # Which one counts would be this gateway's guess, and a proxy in front may have guessed otherwise.
                header_name = "Authorization" if name == "authorization" else name
                raise InvalidRequest(f"the {header_name} header was sent more than once", param=name)
            digest = hash_key(token)
            tier_name = self._keys.get(digest)
            if tier_name is None and self._key_store is not None:
                tier_name = await self._key_store(digest)
            tier = self._tiers.get(tier_name or "")
            if tier is None:
                raise AuthenticationFailed("Incorrect API key provided.")
            own = self._budgets.get(digest)
            if own is not None:
                return Caller(tier, "key:" + digest[:32], key=own[0], budget=own[1])
            return Caller(tier, "key:" + digest[:32])
        client = self.client_network(request)
        identity = self._identities.get(client)
        if identity is None:
            digest = hmac.new(self._secret, client.encode("utf-8", "replace"), hashlib.sha256).hexdigest()
            identity = "ip:" + digest[:32]
            if len(self._identities) >= 65_536:  # bounded: a flood of new addresses only costs the HMAC again
                self._identities.clear()
            self._identities[client] = identity
        return Caller(self._anonymous, identity)

    def _trusted_peer(self, ip: IPAddress | None) -> bool:
        return ip is not None and any(ip in net for net in self._trusted)

    def client_network(self, request: Request) -> str:
        """The caller's network in clear (only for keying): a masked address, or `hop:<text>` for an
        unparseable X-Forwarded-For hop."""
        client = request.scope.get("client")
        host: str | None = client[0] if client else None
        known = self._peers.get(host) if host is not None else None
        if known is not None:  # a peer seen before and not a trusted proxy: no parsing on the hot path
            return known
        peer = _address(host) if host is not None else None
        if not self._trusted_peer(peer):
            network = _network(peer)
            if host is not None:
                if len(self._peers) >= 65_536:  # bounded like the identities
                    self._peers.clear()
                self._peers[host] = network
            return network
        ip = peer
        hops = [h.strip() for line in request.headers.getlist("x-forwarded-for") for h in line.split(",")]
        for hop in reversed([h for h in hops if h]):  # from the nearest proxy outwards
            parsed = _address(hop)
            if parsed is None:
                return "hop:" + hop[:128]
            ip = parsed
            if not self._trusted_peer(parsed):
                break
        return _network(ip)


def _network(ip: IPAddress | None) -> str:
    if ip is None:
        return "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)
