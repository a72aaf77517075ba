"""Job webhooks: signed as Standard Webhooks, SSRF-guarded, retried within bounds.

A real HTTP(S) receiver on loopback records every POST; signatures are checked with the
``standardwebhooks`` package, the spec's own Python library.
"""

from __future__ import annotations

import base64
import email.utils
import ipaddress
import json
import socket
import ssl
import time
from collections.abc import Iterator, Sequence

import pytest
import trustme
from jobs_support import Received, Receiver, serving
from standardwebhooks import Webhook, WebhookVerificationError

from dsocr.errors import FetchFailed, InvalidInput
from dsocr.inputs.sources import IPAddress, Resolver
from dsocr.jobs.webhooks import check_callback_url, deliver, retry_delay, signed_headers
from dsocr.settings import FetchSettings

SECRET = "whsec_" + base64.b64encode(b"a 32-byte key for the test server").decode()
PAYLOAD = {"id": "job_1", "status": "succeeded", "note": "reçu ✓", "pages": [1, 2]}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with serving() as receiver:
        yield receiver


@pytest.fixture
def loopback() -> FetchSettings:
    """Settings that trust loopback, as an operator trusts an internal receiver."""
    return FetchSettings(allow_http=True, allow_networks=["127.0.0.0/8"], total_timeout_s=10)


def _verified(secret: str | bytes, request: Received) -> object:
    return Webhook(secret).verify(request.body, request.headers)


def _resolver(*answers: str | OSError) -> tuple[list[str], Resolver]:
    """A resolver giving ``answers`` in turn (the last repeats); an OSError is raised."""
    calls: list[str] = []

    async def resolve(host: str, port: int) -> Sequence[IPAddress]:
        calls.append(host)
        answer = answers[min(len(calls), len(answers)) - 1]
        if isinstance(answer, OSError):
            raise answer
        return [ipaddress.ip_address(answer)]

    return calls, resolve


# ---------------------------------------------------------------------------------------- signing


def test_signature_matches_the_specs_published_example() -> None:
    # The Standard Webhooks / Svix documentation's example, independent of any library.
    headers = signed_headers(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
    )
    assert headers == {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }


@pytest.mark.parametrize("secret", ["whsec_", "", "whsec_not*base64"])
def test_an_empty_or_malformed_secret_is_refused(secret: str) -> None:
    with pytest.raises(ValueError, match="secret"):
        signed_headers(secret, "msg_1", 1, b"{}")


async def test_delivered_json_verifies_with_the_standard_webhooks_library(
    receiver: Receiver, loopback: FetchSettings
) -> None:
    result = await deliver(
        receiver.url(), PAYLOAD, secret=SECRET, message_id="job_1.done", fetch=loopback, backoff_s=0.001
    )
    assert (result.delivered, result.attempts, result.last_status, result.error) == (True, 1, 200, None)
    [request] = receiver.requests
    assert request.path == "/hook"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["webhook-id"] == "job_1.done"
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 300
    assert _verified(SECRET, request) == PAYLOAD  # the bytes signed are the bytes sent


async def test_a_plain_string_secret_signs_with_its_utf8_bytes(
    receiver: Receiver, loopback: FetchSettings
) -> None:
    secret = "not base64: a passphrase ✓"
    result = await deliver(receiver.url(), PAYLOAD, secret=secret, message_id="m", fetch=loopback)
    assert result.delivered
    assert _verified(secret.encode(), receiver.requests[0]) == PAYLOAD


async def test_a_tampered_body_or_another_secret_fails_verification(
    receiver: Receiver, loopback: FetchSettings
) -> None:
    await deliver(receiver.url(), PAYLOAD, secret=SECRET, message_id="m", fetch=loopback)
    [request] = receiver.requests
    tampered = Received(request.path, request.headers, request.body.replace(b"succeeded", b"cancelled"))
    assert tampered.body != request.body
    with pytest.raises(WebhookVerificationError):
        _verified(SECRET, tampered)
    other = "whsec_" + base64.b64encode(b"another key entirely, 32 bytes!").decode()
    with pytest.raises(WebhookVerificationError):
        _verified(other, request)


async def test_without_a_secret_the_post_is_sent_unsigned(
    receiver: Receiver, loopback: FetchSettings
) -> None:
    result = await deliver(receiver.url(), PAYLOAD, secret=None, message_id="m", fetch=loopback)
    assert result.delivered
    [request] = receiver.requests
    assert "webhook-signature" not in request.headers
    assert request.headers["webhook-id"] == "m"
    assert json.loads(request.body) == PAYLOAD


# ---------------------------------------------------------------------------------------- retries


async def test_503_twice_then_200_is_delivered_on_the_third_attempt_with_one_id(
    receiver: Receiver, loopback: FetchSettings
) -> None:
    receiver.answers = [(503, {}), (503, {}), (200, {})]
    result = await deliver(
        receiver.url(), PAYLOAD, secret=SECRET, message_id="job_7", fetch=loopback, backoff_s=0.001
    )
    assert (result.delivered, result.attempts, result.last_status) == (True, 3, 200)
    assert receiver.ids == ["job_7"] * 3
    for request in receiver.requests:  # each attempt is signed afresh, and verifies
        assert _verified(SECRET, request) == PAYLOAD


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_timeouts_overload_and_server_errors_are_retried(
    receiver: Receiver, loopback: FetchSettings, status: int
) -> None:
    receiver.answers = [(status, {}), (204, {})]
    result = await deliver(
        receiver.url(), PAYLOAD, secret=SECRET, message_id="m", fetch=loopback, backoff_s=0.001
    )
    assert (result.delivered, result.attempts, result.last_status) == (True, 2, 204)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422])
async def test_other_client_errors_are_not_retried(
    receiver: Receiver, loopback: FetchSettings, status: int
) -> None:
    receiver.answers = [(status, {}), (200, {})]
    result = await deliver(
        receiver.url(), PAYLOAD, secret=SECRET, message_id="m", fetch=loopback, backoff_s=0.001
    )
    assert (result.delivered, result.attempts, result.last_status) == (False, 1, status)
    assert result.error is not None and str(status) in result.error
    assert len(receiver.requests) == 1


async def test_a_receiver_always_failing_is_given_up_after_the_attempts(
    receiver: Receiver, loopback: FetchSettings
) -> None:
    receiver.answers = [(500, {})]
    result = await deliver(
        receiver.url(), PAYLOAD, secret=SECRET, message_id="m", fetch=loopback, attempts=4, backoff_s=0.001
    )
    assert (result.delivered, result.attempts, result.last_status) == (False, 4, 500)
    assert receiver.ids == ["m"] * 4


@pytest.mark.parametrize("status", [302, 307])
async def test_a_redirect_is_not_followed_and_fails(
    receiver: Receiver, loopback: FetchSettings, status: int
) -> None:
    receiver.answers = [(status, {"Location": receiver.url("/elsewhere")})]
    result = await deliver(
        receiver.url(), PAYLOAD, secret=SECRET, message_id="m", fetch=loopback, backoff_s=0.001
    )
    assert (result.delivered, result.attempts, result.last_status) == (False, 1, status)
    assert result.error is not None and "redirect" in result.error
    assert [r.path for r in receiver.requests] == ["/hook"]


async def test_no_listener_is_retried_then_reported(loopback: FetchSettings) -> None:
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = await deliver(
        f"http://127.0.0.1:{port}/hook", PAYLOAD, secret=SECRET, message_id="m", fetch=loopback,
        attempts=3, backoff_s=0.001,
    )  # fmt: skip
    assert (result.delivered, result.attempts, result.last_status) == (False, 3, None)
    assert result.error is not None and "could not post" in result.error


async def test_a_stalled_receiver_times_out_and_is_retried(receiver: Receiver) -> None:
    receiver.stall = True
    fetch = FetchSettings(allow_http=True, allow_networks=["127.0.0.0/8"], read_timeout_s=0.2)
    result = await deliver(
        receiver.url(), PAYLOAD, secret=SECRET, message_id="m", fetch=fetch, attempts=2, backoff_s=0.001
    )
    assert (result.delivered, result.attempts, result.last_status) == (False, 2, None)
    assert result.error is not None and "timed out" in result.error
    assert len(receiver.requests) == 2


async def test_a_long_retry_after_is_honoured_within_the_cap(
    receiver: Receiver, loopback: FetchSettings
) -> None:
    receiver.answers = [(429, {"Retry-After": "3600"}), (200, {})]
    result = await deliver(
        receiver.url(), PAYLOAD, secret=SECRET, message_id="m", fetch=loopback, backoff_s=0.001,
        max_delay_s=0.05,
    )  # fmt: skip
    assert (result.delivered, result.attempts) == (True, 2)


def test_the_delay_grows_exponentially_with_jitter_and_stays_under_the_cap() -> None:
    for retry in range(4):
        delay = retry_delay(retry, backoff_s=1.0, retry_after=None, cap=60)
        assert 0.5 * 2**retry <= delay <= 2**retry
    assert retry_delay(40, backoff_s=1.0, retry_after=None, cap=60) <= 60
    assert len({retry_delay(2, backoff_s=1.0, retry_after=None) for _ in range(20)}) > 1  # jitter


def test_retry_after_in_seconds_or_as_a_date_sets_a_longer_delay_up_to_the_cap() -> None:
    assert retry_delay(0, backoff_s=0.001, retry_after="30", cap=60) == 30
    assert retry_delay(0, backoff_s=0.001, retry_after="3600", cap=60) == 60
    in_20_s = email.utils.formatdate(time.time() + 20, usegmt=True)
    assert 10 <= retry_delay(0, backoff_s=0.001, retry_after=in_20_s, cap=60) <= 20
    for unreadable in ("soon", "-5", "١٢"):  # the backoff applies
        assert retry_delay(0, backoff_s=1.0, retry_after=unreadable, cap=60) <= 1.0


# ------------------------------------------------------------------------------------- SSRF guard


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1/hook", "plain http"),
        ("https://127.0.0.1/hook", "loopback"),
        ("https://10.0.0.1/hook", "private"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
        ("https://[::1]/hook", "loopback"),
        ("https://user:secret@hooks.example/hook", "credentials"),
        ("ftp://hooks.example/hook", "scheme"),
    ],
)
async def test_callback_urls_the_guard_refuses_are_refused_at_submit_time(url: str, reason: str) -> None:
    with pytest.raises(FetchFailed) as info:
        await check_callback_url(url, fetch=FetchSettings())
    assert info.value.field == "callback_url"
    assert reason in info.value.message


async def test_a_name_resolving_inside_is_refused_and_http_needs_allow_http() -> None:
    _, resolve = _resolver("192.168.1.20")
    with pytest.raises(FetchFailed, match="private") as info:
        await check_callback_url("https://hooks.example/hook", fetch=FetchSettings(), resolver=resolve)
    assert info.value.field == "callback_url"
    with pytest.raises(FetchFailed, match="loopback"):
        await check_callback_url("http://127.0.0.1/hook", fetch=FetchSettings(allow_http=True))


@pytest.mark.parametrize("url", ["https://", "not a url", "https://exa mple.com/hook"])
async def test_a_malformed_callback_url_is_invalid_input(url: str) -> None:
    with pytest.raises(InvalidInput) as info:
        await check_callback_url(url, fetch=FetchSettings(), field="callback_url")
    assert info.value.field == "callback_url"


async def test_loopback_is_accepted_when_the_operator_allows_it(loopback: FetchSettings) -> None:
    await check_callback_url("http://127.0.0.1:8080/hook", fetch=loopback)
    _, resolve = _resolver("127.0.0.1")
    allowed_host = FetchSettings(allow_http=True, allow_hosts=["hooks.internal"])
    await check_callback_url("http://hooks.internal/hook", fetch=allowed_host, resolver=resolve)


async def test_delivery_with_default_settings_never_reaches_loopback(receiver: Receiver) -> None:
    for fetch in (FetchSettings(), FetchSettings(allow_http=True)):
        result = await deliver(receiver.url(), PAYLOAD, secret=SECRET, message_id="m", fetch=fetch)
        assert (result.delivered, result.attempts, result.last_status) == (False, 1, None)
    assert receiver.requests == []


async def test_every_attempt_is_checked_again_so_a_changed_dns_answer_is_refused(
    receiver: Receiver, loopback: FetchSettings
) -> None:
    receiver.answers = [(503, {})]
    calls, resolve = _resolver("127.0.0.1", "10.0.0.1")
    result = await deliver(
        receiver.url(host="hooks.example"), PAYLOAD, secret=SECRET, message_id="m", fetch=loopback,
        backoff_s=0.001, resolver=resolve,
    )  # fmt: skip
    assert (result.delivered, result.attempts, result.last_status) == (False, 2, None)
    assert result.error is not None and "10.0.0.1" in result.error
    assert calls == ["hooks.example", "hooks.example"]
    assert len(receiver.requests) == 1


async def test_a_failed_lookup_is_retried(receiver: Receiver, loopback: FetchSettings) -> None:
    calls, resolve = _resolver(socket.gaierror("temporary failure"), "127.0.0.1")
    result = await deliver(
        receiver.url(host="hooks.example"), PAYLOAD, secret=SECRET, message_id="m", fetch=loopback,
        backoff_s=0.001, resolver=resolve,
    )  # fmt: skip
    assert (result.delivered, result.attempts) == (True, 2)
    assert calls == ["hooks.example", "hooks.example"]
    assert len(receiver.requests) == 1


async def test_the_post_goes_to_the_checked_address_with_the_name_as_host(
    receiver: Receiver, loopback: FetchSettings
) -> None:
    calls, resolve = _resolver("127.0.0.1")
    result = await deliver(
        receiver.url(host="hooks.example"), PAYLOAD, secret=SECRET, message_id="m", fetch=loopback,
        resolver=resolve,
    )  # fmt: skip
    assert result.delivered
    assert calls == ["hooks.example"]
    assert receiver.requests[0].headers["host"] == f"hooks.example:{receiver.port}"


async def test_https_sends_sni_and_checks_the_certificate_for_the_name() -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("hooks.test").configure_cert(server_context)
    seen_sni: list[str | None] = []
    server_context.sni_callback = lambda _sock, name, _ctx: seen_sni.append(name)  # type: ignore[assignment]
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    fetch = FetchSettings(allow_networks=["127.0.0.0/8"], total_timeout_s=10)
    _, resolve = _resolver("127.0.0.1")
    with serving(server_context) as receiver:
        result = await deliver(
            receiver.url(host="hooks.test"), PAYLOAD, secret=SECRET, message_id="m", fetch=fetch,
            resolver=resolve, verify=client_context,
        )  # fmt: skip
        assert result.delivered
        assert seen_sni == ["hooks.test"]
        assert _verified(SECRET, receiver.requests[0]) == PAYLOAD
        # The certificate names hooks.test only: the bare address fails verification, untried again.
        result = await deliver(
            receiver.url(), PAYLOAD, secret=SECRET, message_id="m", fetch=fetch, attempts=1,
            verify=client_context,
        )  # fmt: skip
        assert not result.delivered
        assert result.error is not None and "certificate" in result.error.lower()


async def test_caller_mistakes_raise() -> None:
    fetch = FetchSettings()
    with pytest.raises(ValueError, match="attempts"):
        await deliver("https://hooks.example/", PAYLOAD, secret=None, message_id="m", fetch=fetch, attempts=0)
    with pytest.raises(ValueError, match="secret"):
        await deliver("https://hooks.example/", PAYLOAD, secret="whsec_%%", message_id="m", fetch=fetch)
