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
import idna

from dsocr.errors import FetchFailed, InputTooLarge, InvalidInput, UnsupportedMediaType
from dsocr.inputs.formats import ACCEPTED_MEDIA_TYPES, normalise_media_type
from dsocr.settings import FetchSettings, LimitSettings

__all__ = [
    "Base64Source",
    "BytesSource",
    "CheckedHop",
    "IPAddress",
    "PathSource",
    "RawInput",
    "Resolver",
    "Source",
    "SourceKind",
    "UrlSource",
    "address_refusal",
    "checked_hop",
    "fetch_timeout",
    "fetch_url",
    "one_source",
    "read_local_file",
    "read_source",
    "source_of",
    "system_resolver",
    "url_host",
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


SourceKind = Literal["url", "base64", "path", "bytes"]
"""What a request field holds: ``url`` an http(s) URL or a ``data:`` URL, ``base64`` base64 text or a
data URI, ``path`` a confined server-side path, ``bytes`` raw bytes (or base64 text over JSON)."""


def source_of(value: object, *, kind: SourceKind, field: str) -> Source:
    """The source a request field's value names: the one place a string becomes a source.

    Nothing is guessed from a string's length or look: the field says what it holds, and only a
    ``url`` field also takes a ``data:`` URL (as OpenAI's ``image_url`` does).
    """
    if kind == "bytes" and isinstance(value, bytes | bytearray):
        return BytesSource(bytes(value), field=field)
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be a string, not {type(value).__name__}", field=field)
    if kind == "path":
        return PathSource(value, field=field)
    if kind == "url":
        scheme = value.partition(":")[0].strip().lower()
        if scheme == "data":
            return Base64Source(value, field=field)
        if scheme not in ("http", "https"):
            raise InvalidInput(f"{field} must be an http(s) URL or a base64 data: URL", field=field)
        return UrlSource(value, field=field)
    return Base64Source(value, field=field)


def one_source(values: dict[str, object], kinds: dict[str, SourceKind]) -> Source:
    """The one source among a request's source fields (``kinds``: field name → what it holds).

    ``values`` holds the fields as sent; ``None`` and ``""`` count as not sent. Exactly one must be.
    """
    given = [name for name in kinds if values.get(name) not in (None, "", b"")]
    if not given:
        names = list(kinds)
        listed = ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]
        raise InvalidInput(f"send an image or PDF: one of {listed}", field=names[0])
    if len(given) > 1:
        raise InvalidInput(f"send only one source; got {', '.join(given)}", field=given[1])
    name = given[0]
    return source_of(values[name], kind=kinds[name], field=name)


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
    # One answer for "missing" and for "outside the root", echoing nothing: two answers would tell a
    # client which paths exist anywhere on the server.
    not_inside = InvalidInput(
        "path does not name a file inside the allowed root (DSOCR_LIMITS__LOCAL_PATH_ROOT)", field=field
    )
    try:
        real_root = root.resolve(strict=True)
        if candidate.is_absolute() and not (
            candidate.is_relative_to(root) or candidate.is_relative_to(real_root)
        ):
            raise not_inside  # without even looking at it
        target = (real_root / candidate).resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise not_inside from exc
    if not target.is_relative_to(real_root):
        raise not_inside
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
# The SSRF guard: which addresses may be fetched
#
# Python's ipaddress flags (is_global, is_private) lag the IANA registries and differ between
# Python versions, so the guard decides from the tables below and uses the flags only as a
# backstop for blocks registered after them.

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _blocks(*entries: tuple[str, str]) -> tuple[tuple[_Network, str], ...]:
    """(network, why it is refused), most specific first, so a refusal names the narrowest block."""
    table = [(ipaddress.ip_network(network), why) for network, why in entries]
    return tuple(sorted(table, key=lambda entry: -entry[0].prefixlen))


# Every block of the IANA IPv4 Special-Purpose Address Registry
# (https://www.iana.org/assignments/iana-ipv4-special-registry, as of 2025-10) plus multicast
# (IPv4 Multicast Address Space registry). The registry marks a few anycast services globally
# reachable (PCP and TURN in 192.0.0.0/24, AS112, AMT); they are refused all the same: the nearest
# instance answers, which may sit inside the operator's network, and none of them serves documents.
_IPV4_BLOCKS = _blocks(
    ("0.0.0.0/8", "a 'this network' address (0.0.0.0/8)"),
    ("10.0.0.0/8", "a private address (10.0.0.0/8)"),
    ("100.64.0.0/10", "a carrier-grade NAT (100.64.0.0/10) address"),
    ("127.0.0.0/8", "a loopback address"),
    ("169.254.0.0/16", "a link-local address (e.g. cloud metadata)"),
    ("172.16.0.0/12", "a private address (172.16.0.0/12)"),
    ("192.0.0.0/24", "an IETF protocol assignment (192.0.0.0/24)"),
    ("192.0.2.0/24", "a documentation address (192.0.2.0/24)"),
    ("192.31.196.0/24", "an AS112 DNS anycast address (192.31.196.0/24)"),
    ("192.52.193.0/24", "an AMT relay anycast address (192.52.193.0/24)"),
    ("192.88.99.0/24", "a deprecated 6to4 relay anycast address (192.88.99.0/24)"),
    ("192.168.0.0/16", "a private address (192.168.0.0/16)"),
    ("192.175.48.0/24", "an AS112 DNS anycast address (192.175.48.0/24)"),
    ("198.18.0.0/15", "a benchmarking address (198.18.0.0/15)"),
    ("198.51.100.0/24", "a documentation address (198.51.100.0/24)"),
    ("203.0.113.0/24", "a documentation address (203.0.113.0/24)"),
    ("224.0.0.0/4", "a multicast address"),
    ("240.0.0.0/4", "a reserved address (240.0.0.0/4)"),
    ("255.255.255.255/32", "a reserved address (limited broadcast)"),
)

# The IANA IPv6 Special-Purpose Address Registry
# (https://www.iana.org/assignments/iana-ipv6-special-registry, as of 2025-10), plus multicast and
# the deprecated site-local block. The blocks that embed an IPv4 address (::ffff:0:0/96,
# 64:ff9b::/96, 64:ff9b:1::/48, 2002::/16, Teredo 2001::/32) are judged by that address first.
# As for IPv4, the anycast services in 2001::/23 and 2620:4f:8000::/48 are refused, and so are the
# ORCHID and DRIP identifier blocks, which name hosts but do not locate them.
_IPV6_BLOCKS = _blocks(
    ("::1/128", "a loopback address"),
    ("100::/64", "a discard-only address (100::/64)"),
    ("100:0:0:1::/64", "a dummy address (100:0:0:1::/64)"),
    ("2001::/23", "an IETF protocol assignment (2001::/23)"),
    ("2001:2::/48", "a benchmarking address (2001:2::/48)"),
    ("2001:10::/28", "an ORCHID identifier (2001:10::/28), not a locator"),
    ("2001:20::/28", "an ORCHIDv2 identifier (2001:20::/28), not a locator"),
    ("2001:30::/28", "a drone remote ID tag (2001:30::/28), not a locator"),
    ("2001:db8::/32", "a documentation address (2001:db8::/32)"),
    ("2620:4f:8000::/48", "an AS112 DNS anycast address (2620:4f:8000::/48)"),
    ("3fff::/20", "a documentation address (3fff::/20)"),
    ("5f00::/16", "a segment routing (SRv6) SID (5f00::/16)"),
    ("fc00::/7", "a unique-local (fc00::/7) address"),
    ("fe80::/10", "a link-local address"),
    ("fec0::/10", "a site-local address (fec0::/10, deprecated)"),
    ("ff00::/8", "a multicast address"),
)
# IANA allocates global unicast only from 2000::/3 (IPv6 Address Space registry).
_IPV6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052 §2.1
_NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215
# RFC 8215 lets an operator carve any RFC 6052 prefix out of the local-use /48, so an address there
# is read with every layout whose prefix fits in it.
_LOCAL_USE_LAYOUTS = (48, 56, 64, 96)
# "This network": never a destination (RFC 1122 §3.2.1.3), so no translator delivers to it.
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")


def _rfc6052_ipv4(ip: ipaddress.IPv6Address, prefix_length: int) -> ipaddress.IPv4Address:
    """The IPv4 address in ``ip`` under a NAT64 prefix of ``prefix_length`` bits (RFC 6052 §2.2).

    It starts right after the prefix; bits 64-71 (the "u" octet) never hold any of it.
    """
    packed = ip.packed
    if prefix_length == 96:
        return ipaddress.IPv4Address(packed[12:])
    without_u = packed[:8] + packed[9:]
    start = prefix_length // 8
    return ipaddress.IPv4Address(without_u[start : start + 4])


def _nat64_refusal(ip: ipaddress.IPv6Address) -> str | None:
    """Why a NAT64 address is refused: the IPv4 address the translator would connect to."""
    if ip.packed[8]:
        return "not a NAT64 address (RFC 6052: bits 64-71 must be zero)"
    layouts = (96,) if ip in _NAT64_WELL_KNOWN else _LOCAL_USE_LAYOUTS
    readings = [(length, _rfc6052_ipv4(ip, length)) for length in layouts]
    destinations = [(length, v4) for length, v4 in readings if v4 not in _THIS_NETWORK]
    if not destinations:
        return "a NAT64 address without an IPv4 destination (it reads as 0.0.0.0/8)"
    for length, inner in destinations:
        reason = _ipv4_refusal(inner)
        if reason is not None:
            return f"{reason} (NAT64 form of {inner}, prefix length {length})"
    return None


def _wrapped_refusal(inner: ipaddress.IPv4Address, form: str) -> str | None:
    reason = _ipv4_refusal(inner)
    return None if reason is None else f"{reason} ({form} form of {inner})"


def _flags_refusal(ip: IPAddress) -> str | None:
    # A backstop only: a newer Python may know blocks registered after the tables above.
    if ip.is_private or ip.is_reserved or not ip.is_global:
        return "not a globally routable address"
    return None


def _ipv4_refusal(ip: ipaddress.IPv4Address) -> str | None:
    if ip.is_unspecified:
        return "the unspecified address"
    for network, why in _IPV4_BLOCKS:
        if ip in network:
            return why
    return _flags_refusal(ip)


def _ipv6_refusal(ip: ipaddress.IPv6Address) -> str | None:
    if ip.scope_id:
        return "a scoped (link-local) IPv6 address"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.ipv4_mapped is not None:
        return _wrapped_refusal(ip.ipv4_mapped, "IPv4-mapped")
    value = int(ip)
    if value >> 32 == 0 and value > 1:
        inner = ipaddress.IPv4Address(value)
        return _wrapped_refusal(inner, "IPv4-compatible") or "a deprecated IPv4-compatible IPv6 address"
    if ip in _NAT64_WELL_KNOWN or ip in _NAT64_LOCAL_USE:
        return _nat64_refusal(ip)
    if ip.sixtofour is not None:
        # Refused even around a public address: 6to4 relays are deprecated (RFC 7526) and the
        # registry does not call 2002::/16 globally reachable.
        return _wrapped_refusal(ip.sixtofour, "6to4") or "a 6to4 address (2002::/16, deprecated)"
    if ip.teredo is not None:
        return "a Teredo tunnel address"
    for network, why in _IPV6_BLOCKS:
        if ip in network:
            return why
    if ip not in _IPV6_GLOBAL_UNICAST:
        return "outside the IPv6 global unicast space (2000::/3)"
    return _flags_refusal(ip)


def address_refusal(ip: IPAddress) -> str | None:
    """Why the SSRF guard refuses to connect to ``ip``, or None if it is a public unicast address."""
    if isinstance(ip, ipaddress.IPv4Address):
        return _ipv4_refusal(ip)
    return _ipv6_refusal(ip)


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


# A DNS label; "_" is not in the host name grammar but occurs in real names (e.g. S3 buckets).
_HOST_LABEL = re.compile(r"[a-z0-9_-]{1,63}")


def url_host(url: httpx.URL) -> str:
    """The host of ``url`` as DNS and TLS see it: IDNA A-labels, lower case, no trailing dot.

    Raises ``ValueError`` saying why it is not a usable host: missing, malformed punycode, a
    label over 63 or a name over 253 characters, or characters no host name has. (``url.host``
    itself decodes punycode and raises ``idna.IDNAError`` on a bad label, so it is never used.)
    """
    try:
        host = url.raw_host.decode("ascii").lower()
    except UnicodeDecodeError:
        raise ValueError("its host is not ASCII after IDNA encoding") from None
    host = host.removesuffix(".")
    if not host:
        raise ValueError("it has no host")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return host
    if len(host) > 253:
        raise ValueError("its host name is longer than 253 characters")
    for label in host.split("."):
        if not _HOST_LABEL.fullmatch(label):
            raise ValueError(f"its host {host!r} is not a valid host name")
        if label.startswith("xn--"):
            try:
                idna.decode(label)
            except UnicodeError as exc:  # idna.IDNAError and the punycode codec's own error
                raise ValueError(f"its host {host!r} holds a malformed internationalised label") from exc
    return host


def _allow_list_form(name: str) -> str:
    """An ``allow_hosts`` entry as ``url_host`` spells hosts, so ``bücher.example`` matches too."""
    try:
        return url_host(httpx.URL(scheme="http", host=name.strip().rstrip("."), path="/"))
    except (httpx.InvalidURL, ValueError):
        return name.strip().lower().rstrip(".")


@dataclass(frozen=True, slots=True)
class CheckedHop:
    """A URL the SSRF guard let through, and how to connect to the address it checked."""

    url: httpx.URL  # what the user (or a redirect) asked for
    host: str  # its host, as url_host spells it
    connect_url: httpx.URL  # the same, with the host replaced by the checked IP
    host_header: str


class _Guard:
    def __init__(self, fetch: FetchSettings, resolver: Resolver, field: str) -> None:
        self._fetch = fetch
        self._resolver = resolver
        self._field = field
        self._allow_hosts = {_allow_list_form(h) for h in fetch.allow_hosts}
        # FetchSettings validated every entry at start-up.
        self._allow_networks = [ipaddress.ip_network(n, strict=False) for n in fetch.allow_networks]

    def _refuse(self, message: str) -> FetchFailed:
        return FetchFailed(message, field=self._field)

    def _allowed_by_operator(self, ip: IPAddress) -> bool:
        candidates: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        return any(c.version == n.version and c in n for c in candidates for n in self._allow_networks)

    async def check(self, url: httpx.URL) -> CheckedHop:
        if url.scheme not in ("http", "https"):
            raise self._refuse(f"URL scheme {url.scheme!r} is not allowed; use https")
        if url.scheme == "http" and not self._fetch.allow_http:
            raise self._refuse("plain http URLs are disabled; use https (or set DSOCR_FETCH__ALLOW_HTTP)")
        if url.userinfo:
            raise self._refuse("URLs with credentials (user:password@) are not allowed")
        try:
            host = url_host(url)
        except ValueError as exc:
            raise self._refuse(f"not a valid URL: {exc}") from exc
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
        return CheckedHop(url, host, url.copy_with(host=str(pinned)), host_header)


def _parse_url(url: str, field: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
        if parsed.scheme in ("http", "https"):  # other schemes are refused by name by the guard
            url_host(parsed)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise InvalidInput(f"not a valid URL: {exc}", field=field) from exc
    return parsed


async def checked_hop(
    url: str, *, fetch: FetchSettings, field: str, resolver: Resolver | None = None
) -> CheckedHop:
    """Check ``url`` as ``fetch_url`` checks each hop, for a request made elsewhere (webhooks).

    Raises ``InvalidInput`` for a malformed URL and ``FetchFailed`` for one the guard refuses,
    both naming ``field``. Connect to ``connect_url``, sending ``host_header`` as Host and, for
    https, ``host`` as the TLS SNI name; follow no redirect without checking it again.
    """
    return await _Guard(fetch, resolver or system_resolver, field).check(_parse_url(url, field))


def fetch_timeout(fetch: FetchSettings) -> httpx.Timeout:
    """The per-phase timeouts of an outgoing request (URL inputs, job callbacks)."""
    return httpx.Timeout(
        connect=fetch.connect_timeout_s,
        read=fetch.read_timeout_s,
        write=fetch.read_timeout_s,
        pool=fetch.connect_timeout_s,
    )


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
    parsed = _parse_url(url, field)
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
    timeout = fetch_timeout(fetch)
    # trust_env=False: an environment proxy would connect to the name, bypassing the pinned IP.
    tls: ssl.SSLContext | bool = True if verify is None else verify
    async with httpx.AsyncClient(
        timeout=timeout, follow_redirects=False, trust_env=False, verify=tls
    ) as client:
        for _ in range(fetch.max_redirects + 1):
            hop = await guard.check(url)
            extensions = {"sni_hostname": hop.host} if hop.url.scheme == "https" else {}
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
                        url = _redirect_target(hop.url, location, field)
                        continue
                    return await _read_body(response, hop, max_bytes=max_bytes, field=field)
                finally:
                    await response.aclose()
            except httpx.TimeoutException as exc:
                raise FetchFailed(f"timed out fetching {hop.host!r}", field=field) from exc
            except httpx.HTTPError as exc:
                raise FetchFailed(f"could not fetch from {hop.host!r}: {exc}", field=field) from exc
            except UnicodeError as exc:
                # httpx decodes a redirect's Location host inside send(), even without following
                # it; malformed punycode there raises idna's error, not an httpx one.
                raise FetchFailed(
                    f"{hop.host!r} sent a redirect to an invalid URL: {exc}", field=field
                ) from exc
    raise FetchFailed(f"more than {fetch.max_redirects} redirects (DSOCR_FETCH__MAX_REDIRECTS)", field=field)


def _redirect_target(base: httpx.URL, location: str, field: str) -> httpx.URL:
    """Where a redirect points; relative locations resolve against the URL asked for, never the IP."""
    try:
        target = base.join(location)
        if target.scheme in ("http", "https"):
            url_host(target)
    except (httpx.InvalidURL, ValueError) as exc:
        raise FetchFailed(f"redirect to an invalid URL: {exc}", field=field) from exc
    return target


async def _read_body(response: httpx.Response, hop: CheckedHop, *, max_bytes: int, field: str) -> RawInput:
    if response.status_code != 200:
        raise FetchFailed(f"{hop.host!r} answered HTTP {response.status_code}", field=field)
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
    name = hop.url.path.rsplit("/", 1)[-1] or None
    return RawInput(data, field, name, declared)
