"""The URL fetcher refuses internal addresses, re-checks redirects and connects only where it checked."""

from __future__ import annotations

import base64
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import trustme
from inputs_support import LoopbackServer, png_bytes, text_page
from pydantic import ValidationError

from dsocr.engine.fake import FakeEngine
from dsocr.errors import FetchFailed, InputTooLarge, InvalidInput, UnsupportedMediaType
from dsocr.inputs import UrlSource, load_document
from dsocr.inputs.sources import IPAddress, Resolver, address_refusal, fetch_url
from dsocr.settings import FetchSettings, LimitSettings, Settings
from server_support import running_server

MiB = 1024 * 1024


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),  # v4-mapped
        ("::127.0.0.1", "loopback"),  # v4-compatible
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("::ffff:192.168.1.1", "private"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("100.127.255.254", "carrier-grade NAT"),
        ("::ffff:100.64.0.1", "carrier-grade NAT"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("::ffff:169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("fc00::1", "unique-local"),
        ("fd12:3456::1", "unique-local"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("192.0.2.1", "documentation"),  # TEST-NET-1
        ("198.18.0.1", "benchmarking"),
        ("2001:db8::1", "documentation"),
        ("2002:7f00:1::", "loopback"),  # 6to4 wrapping 127.0.0.1
        ("2002:a00:1::", "private"),  # 6to4 wrapping 10.0.0.1
        ("64:ff9b::7f00:1", "loopback"),  # NAT64 wrapping 127.0.0.1
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 wrapping 169.254.169.254
        ("::8.8.8.8", "IPv4-compatible"),  # deprecated form, refused even for public addresses
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
    ],
)
def test_internal_addresses_are_refused_with_their_category(address: str, reason: str) -> None:
    refusal = address_refusal(ipaddress.ip_address(address))
    assert refusal is not None
    assert reason in refusal


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"],
)
def test_public_unicast_addresses_are_allowed(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address)) is None


def test_every_ipv4_loopback_and_private_block_boundary_is_refused() -> None:
    for network in [
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
    ]:
        net = ipaddress.ip_network(network)
        for ip in (net.network_address, net.network_address + 1, net.broadcast_address):
            assert address_refusal(ip) is not None, ip
            assert address_refusal(ipaddress.ip_address(f"::ffff:{ip}")) is not None, ip


def _resolver(table: dict[str, list[str]]) -> tuple[list[str], Resolver]:
    calls: list[str] = []

    async def resolve(host: str, port: int) -> Sequence[IPAddress]:
        calls.append(host)
        return [ipaddress.ip_address(a) for a in table[host]]

    return calls, resolve


async def test_url_resolving_to_loopback_is_refused_by_default(limits: LimitSettings) -> None:
    _, resolve = _resolver({"images.example": ["127.0.0.1"]})
    with pytest.raises(FetchFailed) as info:
        await load_document(
            UrlSource("https://images.example/page.png"),
            limits=limits,
            fetch=FetchSettings(),
            resolver=resolve,
        )
    assert "loopback" in info.value.message
    assert info.value.field == "image_url"
    assert info.value.code == "fetch_failed"


async def test_a_name_with_any_internal_address_is_refused() -> None:
    _, resolve = _resolver({"mixed.example": ["93.184.216.34", "10.0.0.5"]})
    with pytest.raises(FetchFailed, match="private"):
        await fetch_url("https://mixed.example/x.png", fetch=FetchSettings(), max_bytes=MiB, resolver=resolve)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x.png",
        "https://[::1]/x.png",
        "https://169.254.169.254/latest/meta-data/",
        "https://0.0.0.0/",
    ],
)
async def test_ip_literal_urls_to_internal_addresses_are_refused(url: str) -> None:
    settings = FetchSettings(allow_http=True)
    with pytest.raises(FetchFailed, match="refusing"):
        await fetch_url(url, fetch=settings, max_bytes=MiB)


async def test_plain_http_is_refused_unless_enabled(loopback_server: LoopbackServer) -> None:
    loopback_server.serve("/page.png", png_bytes(text_page()))
    with pytest.raises(FetchFailed, match="http URLs are disabled"):
        await fetch_url(
            loopback_server.url("/page.png"),
            fetch=FetchSettings(allow_networks=["127.0.0.0/8"]),
            max_bytes=MiB,
        )
    assert loopback_server.requests == []


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://user:secret@example.com/x.png", "credentials"),
        ("ftp://example.com/x.png", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("gopher://example.com/", "scheme"),
    ],
)
async def test_urls_with_credentials_or_other_schemes_are_refused(url: str, message: str) -> None:
    with pytest.raises(FetchFailed, match=message):
        await fetch_url(url, fetch=FetchSettings(), max_bytes=MiB)


async def test_malformed_url_is_invalid_input() -> None:
    with pytest.raises(InvalidInput) as info:
        await fetch_url("https://exa mple.com:99999/", fetch=FetchSettings(), max_bytes=MiB)
    assert info.value.field == "image_url"


async def test_allow_listed_loopback_server_is_fetched_and_decoded(
    loopback_server: LoopbackServer, loopback_fetch: FetchSettings, limits: LimitSettings
) -> None:
    page = text_page((300, 200))
    loopback_server.serve("/page.png", png_bytes(page))
    async with await load_document(
        UrlSource(loopback_server.url("/page.png")), limits=limits, fetch=loopback_fetch
    ) as doc:
        pages = [p async for p in doc.pages()]
    assert doc.kind == "image"
    assert doc.name == "page.png"
    assert [p.size for p in pages] == [(300, 200)]
    assert pages[0].image.tobytes() == page.tobytes()


async def test_redirect_to_loopback_is_refused_before_connecting(
    loopback_server: LoopbackServer, limits: LimitSettings
) -> None:
    # The first hop is trusted by name (an internal object store); its redirect to 127.0.0.1 is not.
    loopback_server.redirect("/start", loopback_server.url("/secret"))
    loopback_server.serve("/secret", b"internal data", content_type="image/png")
    _, resolve = _resolver({"store.internal": ["127.0.0.1"]})
    fetch = FetchSettings(allow_http=True, allow_hosts=["store.internal"])
    with pytest.raises(FetchFailed, match="loopback"):
        await fetch_url(
            loopback_server.url("/start", host="store.internal"), fetch=fetch, max_bytes=MiB, resolver=resolve
        )
    assert [path for path, _ in loopback_server.requests] == ["/start"]


async def test_redirect_to_cloud_metadata_is_refused(loopback_server: LoopbackServer) -> None:
    loopback_server.redirect("/start", "http://169.254.169.254/latest/meta-data/iam/")
    fetch = FetchSettings(allow_http=True, allow_networks=["127.0.0.0/8"])
    with pytest.raises(FetchFailed, match="link-local"):
        await fetch_url(loopback_server.url("/start"), fetch=fetch, max_bytes=MiB)


async def test_redirects_are_followed_and_rechecked_up_to_the_limit(
    loopback_server: LoopbackServer, loopback_fetch: FetchSettings
) -> None:
    body = png_bytes(text_page())
    loopback_server.serve("/final.png", body)
    loopback_server.redirect("/r3", "/final.png", status=301)  # relative: resolved against the asked URL
    loopback_server.redirect("/r2", loopback_server.url("/r3"), status=307)
    loopback_server.redirect("/r1", loopback_server.url("/r2"), status=308)
    raw = await fetch_url(loopback_server.url("/r1"), fetch=loopback_fetch, max_bytes=MiB)
    assert raw.data == body
    assert [path for path, _ in loopback_server.requests] == ["/r1", "/r2", "/r3", "/final.png"]

    loopback_server.redirect("/r0", loopback_server.url("/r1"))
    with pytest.raises(FetchFailed, match="more than 3 redirects"):
        await fetch_url(loopback_server.url("/r0"), fetch=loopback_fetch, max_bytes=MiB)


async def test_connection_goes_to_the_checked_address_not_a_second_lookup(
    loopback_server: LoopbackServer,
) -> None:
    # DNS rebinding: a second lookup would answer an address nobody checked (or, here, nothing
    # reachable). Only one lookup per hop happens and the socket goes to the answer that was checked.
    answers = iter([["127.0.0.1"], ["203.0.113.7"], ["203.0.113.7"]])
    lookups: list[str] = []

    async def rebinding_resolver(host: str, port: int) -> Sequence[IPAddress]:
        lookups.append(host)
        return [ipaddress.ip_address(a) for a in next(answers)]

    loopback_server.serve("/page.png", png_bytes(text_page()))
    fetch = FetchSettings(allow_http=True, allow_networks=["127.0.0.0/8"], connect_timeout_s=2)
    raw = await fetch_url(
        loopback_server.url("/page.png", host="rebind.example"),
        fetch=fetch,
        max_bytes=MiB,
        resolver=rebinding_resolver,
    )
    assert raw.data.startswith(b"\x89PNG")
    assert lookups == ["rebind.example"]
    # The server saw the name the user asked for, not the IP.
    assert loopback_server.requests[0][1]["host"] == f"rebind.example:{loopback_server.port}"


async def test_body_over_the_byte_cap_is_refused(
    loopback_server: LoopbackServer, loopback_fetch: FetchSettings
) -> None:
    loopback_server.serve("/big.png", b"\x89PNG\r\n\x1a\n" + bytes(200_000))
    with pytest.raises(InputTooLarge) as info:
        await fetch_url(loopback_server.url("/big.png"), fetch=loopback_fetch, max_bytes=100_000)
    assert info.value.code == "input_too_large"


async def test_streamed_body_without_length_is_cut_at_the_cap(
    loopback_server: LoopbackServer, loopback_fetch: FetchSettings
) -> None:
    # A server that lies about nothing but sends no Content-Length: the streamed count stops it.
    def chunked(_path: str, _headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        return 200, {"Content-Type": "image/png"}, bytes(300_000)

    loopback_server.routes["/stream.png"] = chunked
    loopback_server.omit_length = True
    with pytest.raises(InputTooLarge):
        await fetch_url(loopback_server.url("/stream.png"), fetch=loopback_fetch, max_bytes=100_000)


@pytest.mark.parametrize("content_type", ["text/html", "application/json", "image/svg+xml"])
async def test_non_image_content_type_is_unsupported(
    loopback_server: LoopbackServer, loopback_fetch: FetchSettings, content_type: str
) -> None:
    loopback_server.serve("/x", b"<html></html>", content_type=content_type)
    with pytest.raises(UnsupportedMediaType):
        await fetch_url(loopback_server.url("/x"), fetch=loopback_fetch, max_bytes=MiB)


async def test_bytes_that_are_not_an_image_are_unsupported_even_with_an_image_type(
    loopback_server: LoopbackServer, loopback_fetch: FetchSettings, limits: LimitSettings
) -> None:
    loopback_server.serve("/fake.png", b"<html>not really a png</html>", content_type="image/png")
    with pytest.raises(UnsupportedMediaType) as info:
        await load_document(UrlSource(loopback_server.url("/fake.png")), limits=limits, fetch=loopback_fetch)
    assert info.value.code == "unsupported_media_type"


@pytest.mark.parametrize("status", [404, 500, 403])
async def test_error_status_is_fetch_failed(
    loopback_server: LoopbackServer, loopback_fetch: FetchSettings, status: int
) -> None:
    loopback_server.serve("/x.png", b"nope", status=status)
    with pytest.raises(FetchFailed, match=f"HTTP {status}"):
        await fetch_url(loopback_server.url("/x.png"), fetch=loopback_fetch, max_bytes=MiB)


async def test_unreachable_host_is_fetch_failed(loopback_fetch: FetchSettings) -> None:
    # Port 1 on loopback: nothing listens there, the connection is refused at once.
    with pytest.raises(FetchFailed, match="could not fetch"):
        await fetch_url("http://127.0.0.1:1/x.png", fetch=loopback_fetch, max_bytes=MiB)


@pytest.mark.parametrize(
    ("limit", "message"),
    [("read_timeout_s", "timed out"), ("total_timeout_s", "TOTAL_TIMEOUT")],
    ids=["read-timeout", "total-timeout-bounds-the-whole-fetch"],
)
async def test_stalled_server_hits_the_timeout(
    loopback_server: LoopbackServer, limit: str, message: str
) -> None:
    def stall(_path: str, _headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        time.sleep(1.0)
        return 200, {"Content-Type": "image/png"}, b"late"

    loopback_server.routes["/slow.png"] = stall
    fetch = FetchSettings(allow_http=True, allow_networks=["127.0.0.0/8"], **{limit: 0.2})
    with pytest.raises(FetchFailed, match=message):
        await fetch_url(loopback_server.url("/slow.png"), fetch=fetch, max_bytes=MiB)


# ---------------------------------------------------------------- https: SNI and certificate on the name


@pytest.fixture
def tls_server() -> Iterator[tuple[int, ssl.SSLContext, list[str | None]]]:
    """An https server on 127.0.0.1 whose certificate names only ``images.test`` (private CA)."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("images.test").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    seen_sni: list[str | None] = []
    server_context.sni_callback = lambda _sock, name, _ctx: seen_sni.append(name)  # type: ignore[assignment]
    body = png_bytes(text_page())

    class _Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], client_context, seen_sni
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def test_https_to_the_pinned_ip_sends_sni_and_checks_the_certificate_for_the_name(
    tls_server: tuple[int, ssl.SSLContext, list[str | None]],
) -> None:
    port, trust, seen_sni = tls_server
    _, resolve = _resolver({"images.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    fetch = FetchSettings(allow_networks=["127.0.0.0/8"])
    raw = await fetch_url(
        f"https://images.test:{port}/page.png", fetch=fetch, max_bytes=MiB, resolver=resolve, verify=trust
    )
    assert raw.data.startswith(b"\x89PNG")
    assert seen_sni == ["images.test"]  # the name, although the socket went to 127.0.0.1
    # Same IP, another name: the certificate does not cover it, so the fetch must fail.
    with pytest.raises(FetchFailed, match="could not fetch"):
        await fetch_url(
            f"https://other.test:{port}/page.png", fetch=fetch, max_bytes=MiB, resolver=resolve, verify=trust
        )
    # And without the private CA the default trust store refuses it.
    with pytest.raises(FetchFailed):
        await fetch_url(f"https://images.test:{port}/page.png", fetch=fetch, max_bytes=MiB, resolver=resolve)


async def test_allow_listed_ipv6_literal_is_fetched_with_a_bracketed_host_header() -> None:
    seen_hosts: list[str] = []
    body = png_bytes(text_page())

    class _Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen_hosts.append(self.headers["Host"])
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    class _V6Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6

    server = _V6Server(("::1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        url = f"http://[::1]:{server.server_address[1]}/page.png"
        with pytest.raises(FetchFailed, match="loopback"):
            await fetch_url(url, fetch=FetchSettings(allow_http=True), max_bytes=MiB)
        raw = await fetch_url(
            url, fetch=FetchSettings(allow_http=True, allow_networks=["::1/128"]), max_bytes=MiB
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert raw.data == body
    assert seen_hosts == [f"[::1]:{server.server_address[1]}"]


def test_a_bad_allow_network_setting_fails_at_start_up_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # At start-up (building Settings), not at the first fetch.
    monkeypatch.setenv("DSOCR_FETCH__ALLOW_NETWORKS", '["127.0.0.0/8", "10.0.0.0/33"]')
    with pytest.raises(ValidationError, match=r"DSOCR_FETCH__ALLOW_NETWORKS entry '10\.0\.0\.0/33'"):
        Settings()
    with pytest.raises(ValidationError, match="ALLOW_NETWORKS"):
        FetchSettings(allow_networks=["not-a-network"])


# ---------------------------------------------------------------- special-purpose and embedded addresses


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        # NAT64 (RFC 6052): the IPv4 destination decides. Well-known prefix: the low 32 bits.
        ("64:ff9b::7f00:1", "loopback"),
        ("64:ff9b::a00:1", "private"),
        ("64:ff9b::c000:201", "documentation"),
        # Local-use prefix (RFC 8215) in the /48 layout: IPv4 in bits 48-63 and 72-87, "u" octet
        # (bits 64-71) between. This is 127.0.0.1, although the low 32 bits read 8.8.8.8.
        ("64:ff9b:1:7f00:0:100:808:808", "loopback"),
        ("64:ff9b:1:a9fe:a9:fe00::", "link-local"),  # 169.254.169.254
        ("64:ff9b:1:a00:1:200::", "private"),  # 10.0.1.2
        ("64:ff9b:1::7f00:1", "loopback"),  # the /96 layout inside the local-use prefix
        ("64:ff9b:1:808:108:800::", "NAT64"),  # non-zero "u" octet: not an RFC 6052 address
        ("64:ff9b:2::808:808", "global unicast"),  # under 64:ff9b::/16 but neither NAT64 prefix
        ("64:ff9b::1:0:808:808", "global unicast"),  # bits 64-95 set: outside 64:ff9b::/96
        # 6to4 (2002::/16): internal IPv4 inside, or any (relays deprecated by RFC 7526).
        ("2002:c0a8:101::1", "private"),
        ("2002:808:808::1", "6to4"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", "Teredo"),  # client 127.0.0.1 (obfuscated)
        ("::ffff:10.1.2.3", "private"),
        ("::ffff:0:808:808", "global unicast"),  # SIIT IPv4-translated form: not allocated
        # IPv6 special-purpose registry blocks Python's flags do not know (or not in every version).
        ("3fff::1", "documentation"),
        ("3fff:fff:ffff::1", "documentation"),
        ("5f00::1", "segment routing"),
        ("100::1", "discard-only"),
        ("100:0:0:1::1", "dummy"),
        ("2001:2::1", "benchmarking"),
        ("2001:1::1", "IETF protocol"),  # PCP anycast: answered by the nearest, possibly internal, server
        ("2001:20::1", "ORCHID"),
        ("2001:30::1", "drone"),
        ("2620:4f:8000::1", "AS112"),
        ("fec0::1", "site-local"),
        ("4000::1", "global unicast"),
        ("ff0e::1", "multicast"),
        # IPv4 special-purpose registry.
        ("0.1.2.3", "this network"),
        ("192.0.0.8", "IETF protocol"),
        ("192.0.0.9", "IETF protocol"),  # PCP anycast
        ("192.0.0.170", "IETF protocol"),
        ("192.0.0.255", "IETF protocol"),
        ("198.51.100.7", "documentation"),
        ("203.0.113.200", "documentation"),
        ("192.31.196.1", "AS112"),
        ("192.52.193.1", "AMT"),
        ("192.88.99.1", "6to4 relay"),
        ("192.175.48.1", "AS112"),
        ("198.19.255.255", "benchmarking"),
        ("233.252.0.1", "multicast"),
    ],
)
def test_special_purpose_and_embedded_internal_addresses_are_refused(address: str, reason: str) -> None:
    refusal = address_refusal(ipaddress.ip_address(address))
    assert refusal is not None, address
    assert reason.lower() in refusal.lower(), refusal


@pytest.mark.parametrize(
    "address",
    [
        "64:ff9b::5db8:d822",  # NAT64 well-known prefix: 93.184.216.34
        "64:ff9b:1:808:8:800::",  # local-use prefix, /48 layout: 8.8.8.8
        "64:ff9b:1::808:808",  # local-use prefix, /96 layout: 8.8.8.8
        "64:ff9b:1:abcd::5db8:d822",  # an operator's /96 inside the local-use prefix: 93.184.216.34
        "2a00:1450:4001:80b::200e",
        "2001:4860:4860::8888",  # in 2001::/16 but outside the IETF protocol block 2001::/23
        "3fff:1000::1",  # just past 3fff::/20 (documentation)
        "192.0.1.1",
        "192.0.3.1",
        "100.63.255.255",
        "100.128.0.0",
        "198.20.0.1",
        "223.255.255.254",
    ],
)
def test_public_addresses_next_to_special_blocks_are_allowed(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address)) is None


# ---------------------------------------------------------------- hostile URL forms


def _no_dns(calls: list[str]) -> Resolver:
    async def resolve(host: str, port: int) -> Sequence[IPAddress]:
        calls.append(host)
        raise AssertionError(f"{host!r} should have been refused before any lookup")

    return resolve


@pytest.mark.parametrize(
    "url",
    [
        "http://xn--localhost-:1/",  # punycode label ending in a hyphen
        "https://xn--localhost-.example/x.png",
        "https://images.xn--localhost-/x.png",  # a bad A-label after the first label
        "https://xn--a/",  # decodes to a control character
        "https://xn--/",  # no punycode at all
        "https://xn--ls8h/",  # decodes, but an emoji is not allowed by IDNA 2008
        "https://xn--zz/",
        "https://" + "a" * 64 + ".example/",  # label over 63 characters
        "https://" + ".".join(["a" * 60] * 5) + "/",  # name over 253 characters
        "https:///x.png",  # no host
        "https://a..example/",  # empty label
        "https://.example/",
        "https://exa%00mple.com/",  # percent-escapes are not host name characters
        "https://%6c%6f%63%61%6c%68%6f%73%74/",
        "https://exa!mple.com/",
        "https://\ud800.example/",  # lone surrogate
        "https://ｌｏｃａｌｈｏｓｔ/",  # fullwidth letters
        "https://[v1.fe]/",  # IPvFuture
        "https://999.1.1.1/",
        "http://exa mple.com/",
    ],
)
async def test_malformed_hosts_are_invalid_input_before_any_lookup(url: str) -> None:
    calls: list[str] = []
    with pytest.raises(InvalidInput) as info:
        await fetch_url(url, fetch=FetchSettings(allow_http=True), max_bytes=MiB, resolver=_no_dns(calls))
    assert type(info.value) is InvalidInput
    assert info.value.code == "invalid_input"
    assert info.value.field == "image_url"
    assert "URL" in info.value.message
    assert calls == []


async def test_internationalised_names_are_looked_up_and_sent_in_their_ascii_form(
    loopback_server: LoopbackServer,
) -> None:
    loopback_server.serve("/page.png", png_bytes(text_page()))
    lookups, resolve = _resolver({"xn--bcher-kva.example": ["127.0.0.1"]})
    fetch = FetchSettings(allow_http=True, allow_hosts=["bücher.example"])
    raw = await fetch_url(
        loopback_server.url("/page.png", host="bücher.example"), fetch=fetch, max_bytes=MiB, resolver=resolve
    )
    assert raw.data.startswith(b"\x89PNG")
    assert lookups == ["xn--bcher-kva.example"]
    assert loopback_server.requests[0][1]["host"] == f"xn--bcher-kva.example:{loopback_server.port}"


@pytest.mark.parametrize(
    "location",
    ["http://xn--localhost-:1/", "http://images.xn--a/", "http://exa mple.com:99999/", "http://a..b/"],
)
async def test_redirect_to_a_malformed_url_is_fetch_failed(
    loopback_server: LoopbackServer, loopback_fetch: FetchSettings, location: str
) -> None:
    loopback_server.redirect("/start", location)
    with pytest.raises(FetchFailed, match="redirect") as info:
        await fetch_url(loopback_server.url("/start"), fetch=loopback_fetch, max_bytes=MiB)
    assert info.value.field == "image_url"


@pytest.mark.parametrize("bad_url", ["http://xn--localhost-:1/", "https://xn--a/x.png"])
def test_server_answers_a_malformed_host_with_400_and_keeps_the_connection(bad_url: str) -> None:
    settings = Settings(engine={"kind": "fake"}, fetch={"allow_http": True})
    page = "data:image/png;base64," + base64.b64encode(png_bytes(text_page())).decode()

    def chat(url: str) -> dict[str, Any]:
        content = [{"type": "image_url", "image_url": {"url": url}}]
        return {"model": settings.engine.model, "messages": [{"role": "user", "content": content}]}

    with (
        running_server(settings, FakeEngine()) as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
    ):
        for path, body, field in [
            ("/v1/ocr", {"image_url": bad_url}, "image_url"),
            ("/v1/chat/completions", chat(bad_url), "messages[0].content[0].image_url.url"),
        ]:
            response = client.post(path, json=body)
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["code"] == "invalid_input"
            assert error["field"] == field
            assert "URL" in error["message"]
        # The same keep-alive connection serves the next requests.
        assert client.post("/v1/ocr", json={"image_base64": page}).status_code == 200
        assert client.post("/v1/chat/completions", json=chat(page)).status_code == 200
