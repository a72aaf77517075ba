"""Bytes from wherever a user has them: upload, base64, ``data:`` URI, a confined local path, or URL.

The URL fetcher is SSRF-guarded by default: https only (unless ``allow_http``), no userinfo, the host
is resolved once and every address must be public (or in the operator's allow-list), the connection
goes to the address that was checked (no DNS rebinding: the URL's host is replaced by the IP, and
the name travels in the Host header and TLS SNI), and each redirect is re-checked the same way.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import os
import re
import socket
import ssl
import stat
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx

from dsocr.errors import FetchFailed, InputTooLarge, InvalidInput, UnsupportedMediaType
from dsocr.inputs.formats import ACCEPTED_MEDIA_TYPES, normalise_media_type
from dsocr.settings import FetchSettings, LimitSettings

__all__ = [
    "Base64Source",
    "BytesSource",
    "IPAddress",
    "PathSource",
    "RawInput",
    "Resolver",
    "Source",
    "UrlSource",
    "address_refusal",
    "fetch_url",
    "read_local_file",
    "read_source",
    "system_resolver",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# (host, port) → the addresses to try. Injected in tests; the default asks the event loop.
Resolver = Callable[[str, int], Awaitable[Sequence[IPAddress]]]


# --------------------------------------------------------------------------------------------------
# Sources: a small discriminated union, so no front end guesses from a string's length or shape.


@dataclass(frozen=True, slots=True)
class UrlSource:
    """An http(s) URL to fetch (``image_url``)."""

    url: str
    field: str = "image_url"
    kind: Literal["url"] = "url"


@dataclass(frozen=True, slots=True)
class Base64Source:
    """Base64 text, plain or a ``data:<media type>;base64,`` URI (``image_base64``)."""

    data: str
    field: str = "image_base64"
    kind: Literal["base64"] = "base64"


@dataclass(frozen=True, slots=True)
class BytesSource:
    """Raw bytes: a multipart upload, a request body, or a file the CLI read."""

    data: bytes
    filename: str | None = None
    content_type: str | None = None
    field: str = "file"
    kind: Literal["bytes"] = "bytes"


@dataclass(frozen=True, slots=True)
class PathSource:
    """A server-side path, confined to ``LimitSettings.local_path_root`` (off unless that is set)."""

    path: str
    field: str = "path"
    kind: Literal["path"] = "path"


Source = UrlSource | Base64Source | BytesSource | PathSource


@dataclass(frozen=True, slots=True)
class RawInput:
    """Undecoded bytes plus what the source said about them."""

    data: bytes
    field: str
    name: str | None = None
    declared_type: str | None = None


async def read_source(
    source: Source,
    *,
    limits: LimitSettings,
    fetch: FetchSettings,
    resolver: Resolver | None = None,
    verify: ssl.SSLContext | None = None,
) -> RawInput:
    """Read the bytes of ``source``, enforcing ``limits.max_upload_bytes`` and, for URLs, ``fetch``.

    ``resolver`` and ``verify`` (trusted CAs for https) are passed to ``fetch_url``.
    """
    max_bytes = limits.max_upload_bytes
    if isinstance(source, UrlSource):
        return await fetch_url(
            source.url, fetch=fetch, max_bytes=max_bytes, field=source.field, resolver=resolver, verify=verify
        )
    if isinstance(source, Base64Source):
        # A page-sized payload takes milliseconds to validate and decode: not on the event loop.
        # (dsocr.inputs' loaders decode it together with its image instead, in one thread job.)
        return await asyncio.to_thread(decode_base64, source.data, max_bytes=max_bytes, field=source.field)
    if isinstance(source, BytesSource):
        _check_size(len(source.data), max_bytes, source.field)
        declared = normalise_media_type(source.content_type)
        _check_declared_type(declared, source.field)
        return RawInput(source.data, source.field, source.filename, declared)
    if isinstance(source, PathSource):
        return await asyncio.to_thread(
            read_confined_path, source.path, root=limits.local_path_root, max_bytes=max_bytes,
            field=source.field,
        )  # fmt: skip
    raise InvalidInput(f"unknown source type {type(source).__name__}")


def _check_size(size: int, max_bytes: int, field: str) -> None:
    if size > max_bytes:
        raise InputTooLarge(
            f"input is {size:,} bytes; limit is {max_bytes:,} (DSOCR_LIMITS__MAX_UPLOAD_BYTES)", field=field
        )
    if size == 0:
        raise InvalidInput("input is empty", field=field)


def _check_declared_type(declared: str | None, field: str) -> None:
    if declared is not None and declared not in ACCEPTED_MEDIA_TYPES:
        raise UnsupportedMediaType(
            f"media type {declared!r} is not accepted; send an image (PNG, JPEG, WebP, TIFF, BMP, GIF) "
            "or a PDF",
            field=field,
        )


# --------------------------------------------------------------------------------------------------
# base64 and data: URIs

_DATA_URI = re.compile(r"^data:(?P<type>[^;,]*)(?P<params>(?:;[^;,]*)*?)(?P<b64>;base64)?,", re.IGNORECASE)
# Dropped with bytes.translate, not a regex: C speed on a page-sized payload (0.1 ms vs 1.7 ms
# for an A4 PNG), and the regex held the GIL that the engine's preprocessing threads share.
_WHITESPACE = b" \t\r\n"


def decode_base64(text: str, *, max_bytes: int, field: str = "image_base64") -> RawInput:
    """Strictly decode base64 or a base64 ``data:`` URI, checking the length *before* decoding.

    Line breaks and spaces (as ``base64`` wraps its output) are ignored; any other character
    outside the standard alphabet, or bad padding, is an ``InvalidInput``.
    """
    declared: str | None = None
    payload = text
    if text[:5].lower() == "data:":
        match = _DATA_URI.match(text[:512])
        if match is None:
            raise InvalidInput("malformed data: URI; expected data:<type>;base64,<data>", field=field)
        if match.group("b64") is None:
            raise InvalidInput("data: URI must be base64-encoded (…;base64,…)", field=field)
        declared = normalise_media_type(match.group("type"))
        if declared is None:
            raise UnsupportedMediaType(
                "data: URI has no media type; use e.g. data:image/png;base64,", field=field
            )
        _check_declared_type(declared, field)
        payload = text[match.end() :]
    # Four characters carry three bytes: refuse before allocating anything for the decoded data.
    limit_chars = 4 * -(-max_bytes // 3)
    if len(payload) > limit_chars + limit_chars // 76 * 2 + 2:  # room for CRLF line wrapping
        raise InputTooLarge(
            f"base64 data is {len(payload):,} characters, more than {max_bytes:,} bytes decoded "
            "(DSOCR_LIMITS__MAX_UPLOAD_BYTES)",
            field=field,
        )
    try:
        raw = payload.encode("ascii")
    except UnicodeEncodeError as exc:
        raise InvalidInput("base64 data contains non-ASCII characters", field=field) from exc
    raw = raw.translate(None, _WHITESPACE)
    try:
        data = base64.b64decode(raw, validate=True)
    except binascii.Error as exc:
        raise InvalidInput(f"invalid base64: {exc}", field=field) from exc
    _check_size(len(data), max_bytes, field)
    return RawInput(data, field, None, declared)


# --------------------------------------------------------------------------------------------------
# Local paths


def read_confined_path(path: str, *, root: Path | None, max_bytes: int, field: str = "path") -> RawInput:
    """Read ``path`` (relative to ``root``, or absolute inside it) without escaping ``root``.

    ``..`` components are refused outright; symlinks are resolved and must still land inside
    ``root``. Disabled (``InvalidInput``) when no root is configured.
    """
    if root is None:
        raise InvalidInput(
            "local paths are disabled; set DSOCR_LIMITS__LOCAL_PATH_ROOT to allow a directory", field=field
        )
    if "\x00" in path or not path.strip():
        raise InvalidInput("path is empty or contains a NUL byte", field=field)
    candidate = Path(path)
    if ".." in candidate.parts:
        raise InvalidInput("path must not contain '..'", field=field)
    try:
        real_root = root.resolve(strict=True)
        target = (real_root / candidate).resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise InvalidInput(f"path {path!r} does not exist under the allowed root", field=field) from exc
    if not target.is_relative_to(real_root):
        raise InvalidInput(f"path {path!r} is outside the allowed root", field=field)
    return _read_regular_file(target, max_bytes=max_bytes, field=field, shown=path)


def read_local_file(path: Path, *, limits: LimitSettings, field: str = "file") -> BytesSource:
    """Read a file the *local user* named (CLI, batch manifests): no root confinement.

    Never use this for paths that come from a network request; use ``PathSource`` instead.
    """
    raw = _read_regular_file(path, max_bytes=limits.max_upload_bytes, field=field, shown=str(path))
    return BytesSource(raw.data, filename=path.name, field=field)


def _read_regular_file(path: Path, *, max_bytes: int, field: str, shown: str) -> RawInput:
    try:
        # O_NONBLOCK so that opening a FIFO does not hang; the regular-file check follows.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise InvalidInput(f"cannot open {shown!r}: {exc.strerror}", field=field) from exc
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise InvalidInput(f"{shown!r} is not a regular file", field=field)
    with os.fdopen(fd, "rb") as handle:
        _check_size(info.st_size, max_bytes, field)
        data = handle.read(max_bytes + 1)
    _check_size(len(data), max_bytes, field)
    return RawInput(data, field, path.name, None)


# --------------------------------------------------------------------------------------------------
# The SSRF guard

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address a v6 address stands for (mapped, compatible, 6to4, NAT64), if any."""
    if ip.ipv4_mapped is not None:
        return "IPv4-mapped", ip.ipv4_mapped
    value = int(ip)
    if value >> 32 == 0 and value > 1:
        return "IPv4-compatible", ipaddress.IPv4Address(value)
    if ip.sixtofour is not None:
        return "6to4", ip.sixtofour
    if any(ip in net for net in _NAT64):
        return "NAT64", ipaddress.IPv4Address(value & 0xFFFFFFFF)
    return None


def address_refusal(ip: IPAddress) -> str | None:
    """Why the SSRF guard refuses to connect to ``ip``, or None if it is a public unicast address."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return "a scoped (link-local) IPv6 address"
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            form, inner = embedded
            reason = address_refusal(inner)
            if reason is not None:
                return f"{reason} ({form} form)"
            if form == "IPv4-compatible":
                return "a deprecated IPv4-compatible IPv6 address"
            if form in ("IPv4-mapped", "NAT64"):
                return None
        if ip.teredo is not None:
            return "a Teredo tunnel address"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address (e.g. cloud metadata)"
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "a carrier-grade NAT (100.64.0.0/10) address"
    if isinstance(ip, ipaddress.IPv6Address) and ip in ipaddress.IPv6Network("fc00::/7"):
        return "a unique-local (fc00::/7) address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "a site-local address"
    if ip.is_reserved:
        return "a reserved address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "not a globally routable address"
    return None


async def system_resolver(host: str, port: int) -> Sequence[IPAddress]:
    """Resolve with the event loop's ``getaddrinfo`` (runs in the loop's executor)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


@dataclass(frozen=True, slots=True)
class _Hop:
    url: httpx.URL  # what the user (or a redirect) asked for
    connect_url: httpx.URL  # the same, with the host replaced by the checked IP
    host_header: str


class _Guard:
    def __init__(self, fetch: FetchSettings, resolver: Resolver, field: str) -> None:
        self._fetch = fetch
        self._resolver = resolver
        self._field = field
        self._allow_hosts = {h.lower().rstrip(".") for h in fetch.allow_hosts}
        # FetchSettings validated every entry at start-up.
        self._allow_networks = [ipaddress.ip_network(n, strict=False) for n in fetch.allow_networks]

    def _refuse(self, message: str) -> FetchFailed:
        return FetchFailed(message, field=self._field)

    def _allowed_by_operator(self, ip: IPAddress) -> bool:
        candidates: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        return any(c.version == n.version and c in n for c in candidates for n in self._allow_networks)

    async def check(self, url: httpx.URL) -> _Hop:
        if url.scheme not in ("http", "https"):
            raise self._refuse(f"URL scheme {url.scheme!r} is not allowed; use https")
        if url.scheme == "http" and not self._fetch.allow_http:
            raise self._refuse("plain http URLs are disabled; use https (or set DSOCR_FETCH__ALLOW_HTTP)")
        if url.userinfo:
            raise self._refuse("URLs with credentials (user:password@) are not allowed")
        host = url.host.lower().rstrip(".")
        if not host:
            raise self._refuse("URL has no host")
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            literal: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            addresses: Sequence[IPAddress] = [literal]
        else:
            try:
                addresses = await self._resolver(host, port)
            except (OSError, UnicodeError) as exc:
                raise self._refuse(f"cannot resolve host {host!r}") from exc
            if not addresses:
                raise self._refuse(f"host {host!r} has no addresses")
        if host not in self._allow_hosts:
            # Every address must pass: a name that also points inside is refused outright.
            for address in addresses:
                reason = None if self._allowed_by_operator(address) else address_refusal(address)
                if reason is not None:
                    raise self._refuse(f"refusing to fetch {host!r}: it resolves to {address}, {reason}")
        pinned = addresses[0]
        named = f"[{host}]" if ":" in host else host  # an IPv6 literal keeps its brackets
        host_header = named if url.port is None else f"{named}:{url.port}"
        return _Hop(url, url.copy_with(host=str(pinned)), host_header)


async def fetch_url(
    url: str,
    *,
    fetch: FetchSettings,
    max_bytes: int,
    field: str = "image_url",
    resolver: Resolver | None = None,
    verify: ssl.SSLContext | None = None,
) -> RawInput:
    """Fetch ``url`` through the SSRF guard; at most ``max_bytes`` bytes are read.

    ``resolver`` replaces DNS (tests); ``verify`` replaces the trusted CAs (default: certifi's),
    e.g. for an internal object store with a private CA. Certificates are always checked against
    the URL's host name, even though the socket goes to the checked IP.

    Raises ``FetchFailed`` (refused, unreachable, bad status, timeout), ``InputTooLarge`` and
    ``UnsupportedMediaType`` (a Content-Type that is not an image or PDF).
    """
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise InvalidInput(f"not a valid URL: {exc}", field=field) from exc
    guard = _Guard(fetch, resolver or system_resolver, field)
    try:
        return await asyncio.wait_for(
            _fetch_with_redirects(
                parsed, guard, fetch=fetch, max_bytes=max_bytes, field=field, verify=verify
            ),
            timeout=fetch.total_timeout_s,
        )
    except asyncio.TimeoutError as exc:
        raise FetchFailed(
            f"fetching the URL took longer than {fetch.total_timeout_s:g} s (DSOCR_FETCH__TOTAL_TIMEOUT_S)",
            field=field,
        ) from exc


_REDIRECTS = frozenset({301, 302, 303, 307, 308})


async def _fetch_with_redirects(
    url: httpx.URL,
    guard: _Guard,
    *,
    fetch: FetchSettings,
    max_bytes: int,
    field: str,
    verify: ssl.SSLContext | None,
) -> RawInput:
    timeout = httpx.Timeout(
        connect=fetch.connect_timeout_s,
        read=fetch.read_timeout_s,
        write=fetch.read_timeout_s,
        pool=fetch.connect_timeout_s,
    )
    # trust_env=False: an environment proxy would connect to the name, bypassing the pinned IP.
    tls: ssl.SSLContext | bool = True if verify is None else verify
    async with httpx.AsyncClient(
        timeout=timeout, follow_redirects=False, trust_env=False, verify=tls
    ) as client:
        for _ in range(fetch.max_redirects + 1):
            hop = await guard.check(url)
            extensions = {"sni_hostname": hop.url.host} if hop.url.scheme == "https" else {}
            request = client.build_request(
                "GET",
                hop.connect_url,
                headers={
                    "Host": hop.host_header,
                    "Accept": "image/*, application/pdf",
                    # Counted bytes are then the bytes on the wire: no decompression bomb.
                    "Accept-Encoding": "identity",
                },
                extensions=extensions,
            )
            try:
                response = await client.send(request, stream=True)
                try:
                    if response.status_code in _REDIRECTS:
                        location = response.headers.get("location")
                        if not location:
                            message = f"redirect {response.status_code} without a Location"
                            raise FetchFailed(message, field=field)
                        # Relative locations resolve against the URL asked for, never the IP.
                        url = hop.url.join(location)
                        continue
                    return await _read_body(response, hop.url, max_bytes=max_bytes, field=field)
                finally:
                    await response.aclose()
            except httpx.TimeoutException as exc:
                raise FetchFailed(f"timed out fetching {hop.url.host!r}", field=field) from exc
            except httpx.HTTPError as exc:
                raise FetchFailed(f"could not fetch from {hop.url.host!r}: {exc}", field=field) from exc
    raise FetchFailed(f"more than {fetch.max_redirects} redirects (DSOCR_FETCH__MAX_REDIRECTS)", field=field)


async def _read_body(response: httpx.Response, url: httpx.URL, *, max_bytes: int, field: str) -> RawInput:
    if response.status_code != 200:
        raise FetchFailed(f"{url.host!r} answered HTTP {response.status_code}", field=field)
    declared = normalise_media_type(response.headers.get("content-type"))
    if declared is not None and declared not in ACCEPTED_MEDIA_TYPES:
        raise UnsupportedMediaType(f"URL returned {declared!r}, not an image or PDF", field=field)
    length = response.headers.get("content-length")
    if length is not None and length.isdigit():
        _check_size(int(length), max_bytes, field)
    chunks: list[bytes] = []
    received = 0
    async for chunk in response.aiter_bytes():
        received += len(chunk)
        if received > max_bytes:
            raise InputTooLarge(
                f"URL body is over {max_bytes:,} bytes (DSOCR_LIMITS__MAX_UPLOAD_BYTES)", field=field
            )
        chunks.append(chunk)
    data = b"".join(chunks)
    _check_size(len(data), max_bytes, field)
    name = url.path.rsplit("/", 1)[-1] or None
    return RawInput(data, field, name, declared)
