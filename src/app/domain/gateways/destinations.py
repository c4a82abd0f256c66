"""Where a worker's HTTP requests to gateways may go (SSRF guard).

The instance's configured base URL is trusted as it stands (self-hosted gateways and tests live on private
addresses on purpose; an admin typed it in). Anything else — a redirect to another origin, a Cloud API media
URL off the configured origin — must be https and its host must resolve only to public addresses: no
loopback, private, link-local (cloud metadata at 169.254.169.254), multicast, reserved or unspecified ones,
including IPv6 spellings of such IPv4 addresses. Requiring https for foreign hosts also defeats DNS
rebinding between this check and httpx's own lookup: an internal service reached that way cannot present a
certificate for the attacker's host name.

A destination that cannot be valid — a redirect without a usable Location, a host name no DNS can hold —
is refused for good, not retried: the gateway would answer the same again (issue 12, finding 12 saw a
malformed Location retried five times). Only failing to resolve a well-formed name is retryable.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket

import httpx

HTTP_SCHEMES = {"http": 80, "https": 443}  # and their default ports
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_DNS_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")  # letters, digits, hyphens (IDNs come punycoded)

Origin = tuple[str, str, int]  # scheme, host (lower case), port


class RefusedDestination(Exception):
    """A URL we will not contact; `retryable` when only resolving its host failed (DNS may recover)."""

    def __init__(self, reason: str, *, retryable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


def redirect_target(current: httpx.URL, location: str | None) -> httpx.URL:
    """Where a redirect from `current` points; RefusedDestination (never retryable) if it points nowhere."""
    location = (location or "").strip()
    if not location:
        raise RefusedDestination("no Location")
    try:
        target = current.join(location)
    except httpx.InvalidURL:
        raise RefusedDestination("not a valid URL") from None
    if not target.host:
        raise RefusedDestination("not an http(s) URL")
    if target == current:
        raise RefusedDestination("the URL it came from")
    return target


def _valid_host_name(url: httpx.URL) -> bool:
    try:
        name = url.raw_host.decode("ascii").lower()
    except UnicodeDecodeError:
        return False
    labels = name[:-1].split(".") if name.endswith(".") else name.split(".")
    return len(name) <= 253 and all(_DNS_LABEL.fullmatch(label) for label in labels)


def origin_of(url: httpx.URL | str) -> Origin:
    url = httpx.URL(url) if isinstance(url, str) else url
    return url.scheme, url.host.lower(), url.port or HTTP_SCHEMES.get(url.scheme, 0)


async def check_destination(url: httpx.URL, *, trusted: frozenset[Origin]) -> None:
    """Refuse a URL outside the trusted origins unless it is https to public addresses only."""
    host = url.host
    if url.scheme not in HTTP_SCHEMES or not host:
        raise RefusedDestination("not an http(s) URL")
    if origin_of(url) in trusted:
        return
    literal = _ip_literal(host)
    if literal is not None:
        _check_address(literal, host)
    if url.scheme != "https":
        raise RefusedDestination(f"plain http to {host}, which is not the configured gateway")
    if literal is not None:
        return
    if not _valid_host_name(url):
        raise RefusedDestination(f"{host} is not a valid host name")
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, url.port or HTTP_SCHEMES["https"], type=socket.SOCK_STREAM
        )
    except UnicodeError:  # a name the IDNA codec refuses: no DNS will ever hold it
        raise RefusedDestination(f"{host} is not a valid host name") from None
    except OSError as exc:  # socket.gaierror is an OSError
        detail = exc.strerror or type(exc).__name__
        raise RefusedDestination(f"cannot resolve {host} ({detail})", retryable=True) from None
    if not infos:
        raise RefusedDestination(f"cannot resolve {host}", retryable=True)
    for *_, sockaddr in infos:
        address = sockaddr[0]
        parsed = _ip_literal(address) if isinstance(address, str) else None
        if parsed is None:
            raise RefusedDestination(f"{host} resolves to an unusable address")
        _check_address(parsed, host)


def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _check_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, host: str) -> None:
    kind = _forbidden_kind(ip)
    if kind is not None:
        shown = host if host == str(ip) else f"{host} ({ip})"
        raise RefusedDestination(f"{shown} is not public ({kind})")


def _forbidden_kind(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why `ip` must not be contacted, or None for a public unicast address."""
    if isinstance(ip, ipaddress.IPv6Address):
        # IPv6 spellings of IPv4 addresses are judged by the IPv4 address they reach.
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            inner = _forbidden_kind(embedded)
            if inner is not None:
                return inner
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
    )
    for kind, matches in checks:
        if matches:
            return kind
    return None if ip.is_global else "non-public"
