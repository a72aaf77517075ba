"""The URL fetcher refuses internal addresses, re-checks redirects and connects only where it checked."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import trustme
from inputs_support import LoopbackServer, png_bytes, text_page
from pydantic import ValidationError

from dsocr.errors import FetchFailed, InputTooLarge, InvalidInput, UnsupportedMediaType
from dsocr.inputs import UrlSource, load_document
from dsocr.inputs.sources import IPAddress, Resolver, address_refusal, fetch_url
from dsocr.settings import FetchSettings, LimitSettings, Settings

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
        ("192.0.2.1", "private"),  # TEST-NET-1 documentation range
        ("198.18.0.1", "private"),  # benchmarking range
        ("2001:db8::1", "private"),  # IPv6 documentation range
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
    assert info.value.status == 422


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
    assert info.value.status == 413


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
    assert info.value.status == 415


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
