"""Inbound media through a gateway: the contract every fetcher fulfils, and the guarded HTTP they share.

A fetcher turns a media reference (WPPConnect/Evolution message id, Cloud API media id) into the file's
bytes. Failures are FetchFailed, split like SendFailed into retryable (timeouts, connection errors, 5xx, 429:
the same request may well work later) and final (4xx, missing credentials, an answer we cannot read, a file
over the size limit, a destination we refuse). No reason ever contains the instance's token.

Where requests may go is `destinations.py`'s call: the configured gateway origin, or https to public
addresses. Redirects are never followed by httpx; at most MAX_REDIRECTS are followed here, each target
checked, and credentials go only to the origin they were meant for.

Sizes. Bodies are streamed and abandoned as soon as they pass the limit (a Content-Length above it is refused
before reading); base64 answers are held to the encoded size of `max_bytes` and decoded only once their
length shows the file fits.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import httpx
import msgspec

from app.domain.gateways.destinations import (
    HTTP_SCHEMES,
    RefusedDestination,
    check_destination,
    origin_of,
    redirect_target,
)
from app.domain.gateways.sending import ErrorReader, GatewayError, redact

T = TypeVar("T")

DEFAULT_TIMEOUT_SECONDS = 30.0
MAX_REDIRECTS = 3
# Room for the fields around the base64 string in a JSON answer (mimetype, file name, caption, …).
_JSON_OVERHEAD = 64 * 1024
# A JSON answer that carries no file (Cloud API media info) needs no more than this.
_SMALL_ANSWER_LIMIT = 256 * 1024
# Of an error answer only the start is read: enough for the gateway's message.
_ERROR_BODY_LIMIT = 16 * 1024
_REDACTED = "[redacted]"


@dataclass(frozen=True)
class FetchTarget:
    """Which file, from where and as whom: copied by the caller from the instance row and the media row."""

    gateway: str  # "wppconnect" | "evolution" | "cloudapi"
    instance_name: str  # WPPConnect session / Evolution instance name
    api_base_url: str | None
    api_token: str | None = field(repr=False)
    gateway_ref: str  # Cloud API media id, WPPConnect/Evolution message id (MediaRef.gateway_ref)


@dataclass(frozen=True)
class FetchedMedia:
    data: bytes = field(repr=False)
    mime_type: str | None  # as the gateway declares it, unverified
    sha256: str | None  # lower-case hex, only when the gateway states one (Cloud API); unverified
    filename: str | None


class FetchFailed(Exception):
    """The file could not be had. `reason` is short, human-readable and free of secrets."""

    def __init__(self, reason: str, *, retryable: bool, status_code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.status_code = status_code  # HTTP status, when the gateway answered at all

    def __repr__(self) -> str:
        return f"FetchFailed({self.reason!r}, retryable={self.retryable})"


class MediaFetcher(Protocol):
    async def __call__(
        self, http: httpx.AsyncClient, target: FetchTarget, *, max_bytes: int, request_timeout: float
    ) -> FetchedMedia: ...


async def fetch_media(
    http: httpx.AsyncClient,
    target: FetchTarget,
    *,
    max_bytes: int,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,  # noqa: ASYNC109  (applied below with asyncio.timeout)
) -> FetchedMedia:
    """The file behind `target.gateway_ref`, at most `max_bytes` long, within `timeout` seconds overall.

    `timeout` bounds the whole fetch (every request, redirect and the body download together), so a server
    dripping bytes cannot hold a worker indefinitely; it is also each request's httpx timeout.
    """
    # Imported here: the fetchers import this module for the contract.
    from app.domain.gateways.cloudapi.media import fetch_cloudapi_media
    from app.domain.gateways.evolution.media import fetch_evolution_media
    from app.domain.gateways.wppconnect.media import fetch_wppconnect_media

    fetchers: dict[str, MediaFetcher] = {
        "wppconnect": fetch_wppconnect_media,
        "evolution": fetch_evolution_media,
        "cloudapi": fetch_cloudapi_media,
    }
    fetcher = fetchers.get(target.gateway)
    if fetcher is None:
        raise FetchFailed(f"unknown gateway {target.gateway!r}", retryable=False)
    if not target.gateway_ref or not target.gateway_ref.strip():
        raise FetchFailed(f"{target.gateway} media has no gateway reference to fetch it by", retryable=False)
    try:
        async with asyncio.timeout(timeout):
            return await fetcher(http, target, max_bytes=max_bytes, request_timeout=timeout)
    except TimeoutError:
        raise FetchFailed(
            f"{target.gateway} did not deliver the file within {timeout:g}s", retryable=True
        ) from None
    except FetchFailed as exc:
        # The last guard on the no-secrets rule, whatever path the reason took: a gateway may echo the
        # token anywhere, even into a redirect's host name (which URL parsing lower-cases).
        reason = _without_secret(exc.reason, target.api_token)
        if reason == exc.reason:
            raise
        raise FetchFailed(reason, retryable=exc.retryable, status_code=exc.status_code) from None


def _without_secret(reason: str, secret: str | None) -> str:
    secret = (secret or "").strip()
    if secret:
        reason = re.sub(re.escape(secret), _REDACTED, reason, flags=re.IGNORECASE)
    return redact(reason, None)  # length cap


def require(value: str | None, what: str, target: FetchTarget) -> str:
    """A credential or setting the fetch cannot do without; missing is final until someone configures it."""
    if value is None or not value.strip():
        raise FetchFailed(
            f"{target.gateway} instance {target.instance_name!r} has no {what} configured", retryable=False
        )
    return value.strip()


def require_url(value: str | None, target: FetchTarget) -> str:
    """The gateway's base URL, without trailing slash; a malformed one is as final as a missing one."""
    url = require(value, "API base URL", target).rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in HTTP_SCHEMES or not parts.hostname:
        raise FetchFailed(
            f"{target.gateway} instance {target.instance_name!r} has no valid API base URL configured "
            "(http:// or https:// expected)",
            retryable=False,
        )
    return url


# --- guarded requests ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    body: bytes = field(repr=False)
    content_type: str | None


class GatewayHttp:
    """One fetch's requests: destination checks, manual redirects, streamed size limits, safe reasons."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        gateway: str,
        trusted_urls: Iterable[str],
        secret: str,
        timeout: float,
        read_error: ErrorReader,
    ) -> None:
        self._http = http
        self._gateway = gateway
        self._trusted = frozenset(origin_of(url) for url in trusted_urls)
        self._secret = secret
        self._timeout = timeout
        self._read_error = read_error

    async def fetch_json(
        self,
        method: str,
        url: str,
        *,
        auth: Mapping[str, str],
        payload: Mapping[str, Any] | None = None,
        file_limit: int | None = None,
    ) -> bytes:
        """A 2xx JSON answer's body. With `file_limit`, the answer carries the file as base64."""
        if file_limit is None:
            limit = _SMALL_ANSWER_LIMIT
            too_large = f"{self._gateway} answer larger than {_SMALL_ANSWER_LIMIT} bytes"
        else:
            limit, too_large = base64_length(file_limit) + _JSON_OVERHEAD, _too_large(file_limit)
        answer = await self._request(
            method,
            url,
            auth=auth,
            content=None if payload is None else msgspec.json.encode(payload),
            accept="application/json",
            limit=limit,
            too_large=too_large,
        )
        return answer.body

    async def download(self, url: str, *, auth: Mapping[str, str], max_bytes: int, what: str) -> Answer:
        """The raw body of a GET, at most `max_bytes` long."""
        return await self._request(
            "GET",
            url,
            auth=auth,
            content=None,
            accept="*/*",
            limit=max_bytes,
            too_large=_too_large(max_bytes),
            what=what,
        )

    async def _request(
        self,
        method: str,
        url_text: str,
        *,
        auth: Mapping[str, str],
        content: bytes | None,
        accept: str,
        limit: int,
        too_large: str,
        what: str = "request",
    ) -> Answer:
        try:
            url = httpx.URL(url_text)
        except httpx.InvalidURL:
            raise FetchFailed(f"{self._gateway} {what} refused: not a valid URL", retryable=False) from None
        # Credentials belong to the origin they were given for; a redirect elsewhere goes without them.
        auth_origin = origin_of(url)
        for hop in range(MAX_REDIRECTS + 1):
            try:
                await check_destination(url, trusted=self._trusted)
            except RefusedDestination as refused:
                label = f"{self._gateway} {what if hop == 0 else 'redirect'}"
                message = (
                    f"{label} refused: {refused.reason}"
                    if not refused.retryable
                    else f"{label}: {refused.reason}"
                )
                raise FetchFailed(message, retryable=refused.retryable) from None
            headers = {"accept": accept, "accept-encoding": "identity"}
            if content is not None:
                headers["content-type"] = "application/json"
            if origin_of(url) == auth_origin:
                headers.update(auth)
            try:
                async with self._http.stream(
                    method,
                    url,
                    content=content,
                    headers=headers,
                    timeout=self._timeout,
                    follow_redirects=False,
                ) as response:
                    if response.is_redirect:
                        if hop == MAX_REDIRECTS:
                            raise FetchFailed(
                                f"{self._gateway} redirected more than {MAX_REDIRECTS} times", retryable=False
                            )
                        url = self._redirect_target(url, response.headers.get("location"))
                        if response.status_code == 303 or (
                            response.status_code in (301, 302) and method != "GET"
                        ):
                            method, content = "GET", None
                        continue
                    if not response.is_success:
                        raise await self._http_failure(response)
                    body = await _read_limited(response, limit, too_large)
                    return Answer(body, response.headers.get("content-type"))
            # `from None`: httpx errors hold the request, and with it the auth header.
            except httpx.TimeoutException:
                raise FetchFailed(
                    f"{self._gateway} did not answer within {self._timeout:g}s", retryable=True
                ) from None
            except httpx.TransportError as exc:
                # httpx parses a redirect's Location even when not following it: a malformed one is final.
                if str(exc).startswith("Invalid URL in location header"):
                    raise self._redirect_refused("not a valid URL") from None
                detail = redact(f"{type(exc).__name__}: {exc}", self._secret)
                raise FetchFailed(f"{self._gateway} unreachable ({detail})", retryable=True) from None
            except httpx.HTTPError as exc:  # e.g. a body that fails to decompress
                detail = redact(f"{type(exc).__name__}: {exc}", self._secret)
                raise FetchFailed(f"{self._gateway} answer unreadable ({detail})", retryable=False) from None
        raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover

    def _redirect_target(self, url: httpx.URL, location: str | None) -> httpx.URL:
        try:
            return redirect_target(url, location)
        except RefusedDestination as refused:
            raise self._redirect_refused(refused.reason) from None

    def _redirect_refused(self, reason: str) -> FetchFailed:
        return FetchFailed(f"{self._gateway} redirect refused: {reason}", retryable=False)

    async def _http_failure(self, response: httpx.Response) -> FetchFailed:
        status = response.status_code
        body = await _read_prefix(response, _ERROR_BODY_LIMIT)
        try:
            error = self._read_error(msgspec.json.decode(body))
        except msgspec.DecodeError:
            error = GatewayError(_snippet(body))
        # 408/429 and 5xx: the gateway (or a proxy in front of it) is busy or down, not refusing the file.
        retryable = status in (408, 429) or status >= 500
        if error.retryable is not None:
            retryable = error.retryable
        reason = f"{self._gateway} answered HTTP {status}"
        if error.text:
            reason += f": {error.text}"
        return FetchFailed(redact(reason, self._secret), retryable=retryable, status_code=status)


async def _read_limited(response: httpx.Response, limit: int, too_large: str) -> bytes:
    declared = response.headers.get("content-length", "").strip()
    if declared.isdigit() and int(declared) > limit:
        raise FetchFailed(too_large, retryable=False)
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit:
            # Leaving the stream unread closes the connection: the rest is never downloaded.
            raise FetchFailed(too_large, retryable=False)
    return bytes(body)


async def _read_prefix(response: httpx.Response, limit: int) -> bytes:
    body = bytearray()
    try:
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) >= limit:
                break
    except httpx.HTTPError:
        pass  # the status already says what went wrong; the body is a bonus
    return bytes(body[:limit])


def _too_large(max_bytes: int) -> str:
    return f"file larger than {max_bytes} bytes"


def _snippet(body: bytes) -> str | None:
    text = body.decode("utf-8", errors="replace").strip()
    return " ".join(text.split())[:120] or None


# --- answers ---------------------------------------------------------------------------------------------


def decode_json(decoder: msgspec.json.Decoder[T], body: bytes, gateway: str) -> T:
    try:
        return decoder.decode(body)
    except msgspec.DecodeError as exc:  # ValidationError included
        raise FetchFailed(f"{gateway} answer unreadable: {exc}", retryable=False) from None


def base64_length(size: int) -> int:
    """Length of the padded standard base64 encoding of `size` bytes."""
    return (size + 2) // 3 * 4


def decode_base64_file(value: str | None, *, max_bytes: int, gateway: str) -> tuple[bytes, str | None]:
    """The file a gateway sent as base64 (plain or as a data: URL) and the data URL's MIME type, if any.

    The length is checked before decoding, so an oversized answer costs no decoded copy.
    """
    text = (value or "").strip()
    mime_type = None
    if text.startswith("data:"):
        header, comma, text = text.partition(",")
        if not comma or not header.endswith(";base64"):
            raise FetchFailed(f"{gateway} answer has a data URL that is not base64", retryable=False)
        mime_type = header[len("data:") : -len(";base64")].strip() or None
    if not text:
        raise FetchFailed(f"{gateway} answer has no file data (base64)", retryable=False)
    if len(text) * 3 // 4 - text[-2:].count("=") > max_bytes:
        raise FetchFailed(_too_large(max_bytes), retryable=False)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise FetchFailed(f"{gateway} answer has invalid base64 file data", retryable=False) from None
    if not data:
        raise FetchFailed(f"{gateway} answer has an empty file", retryable=False)
    return data, mime_type


def content_type_of(header: str | None) -> str | None:
    """The MIME type of a Content-Type header, without parameters."""
    mime_type = (header or "").partition(";")[0].strip().lower()
    return mime_type or None
