"""Webhooks: a POST of a finished job's JSON to its ``callback_url``.

Signed as Standard Webhooks specify (https://www.standardwebhooks.com): ``webhook-id``,
``webhook-timestamp`` (unix seconds) and ``webhook-signature`` = ``v1,`` + base64 of
HMAC-SHA256(key, ``{id}.{timestamp}.{body}``). The key comes from the server secret
(``webhook_key``): ``whsec_<base64>`` as the spec writes secrets, else the string's UTF-8 bytes.
Without a secret the POST carries the id and timestamp but no signature.

The URL goes through the image fetcher's SSRF guard, at submit time (``check_callback_url``) and
again before every attempt, since the DNS answer can change: the POST goes to the address checked,
with the name in the Host header and TLS SNI. Redirects are not followed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import hashlib
import hmac
import json
import logging
import random
import ssl
import time
from dataclasses import dataclass
from datetime import timezone
from typing import Any

import httpx

from dsocr import __version__
from dsocr.errors import FetchFailed, InvalidInput
from dsocr.inputs.sources import Resolver, checked_hop, fetch_timeout
from dsocr.settings import FetchSettings

__all__ = [
    "DeliveryResult",
    "check_callback_url",
    "deliver",
    "retry_delay",
    "signed_headers",
    "webhook_key",
]

logger = logging.getLogger(__name__)

FIELD = "callback_url"
SECRET_PREFIX = "whsec_"  # noqa: S105 (the spec's prefix, not a secret)
# The longest wait between two attempts, whatever the backoff or a Retry-After asks for.
MAX_DELAY_S = 60.0


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """How a delivery ended: ``last_status`` is the last HTTP status (None: no answer)."""

    delivered: bool
    attempts: int
    last_status: int | None
    error: str | None


async def check_callback_url(
    url: str, *, fetch: FetchSettings, field: str = FIELD, resolver: Resolver | None = None
) -> None:
    """Refuse at submit time what delivery would refuse: the image URL rules of ``fetch``.

    Raises ``InvalidInput`` (malformed) or ``FetchFailed`` (a scheme other than https, or http
    without ``allow_http``; credentials; a host that does not resolve or resolves to an internal
    address outside ``allow_hosts``/``allow_networks``), naming ``field``.
    """
    await checked_hop(url, fetch=fetch, field=field, resolver=resolver)


def webhook_key(secret: str) -> bytes:
    """The HMAC key of a configured secret.

    ``whsec_<base64>`` (the spec's form; padding optional) is the decoded bytes; any other string
    is its UTF-8 bytes. Raises ``ValueError`` for an empty key or bad base64 after ``whsec_``:
    settings can call this to refuse a bad secret at start-up.
    """
    if secret.startswith(SECRET_PREFIX):
        encoded = secret.removeprefix(SECRET_PREFIX)
        try:
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except binascii.Error as exc:
            raise ValueError(
                f"a webhook secret starting with {SECRET_PREFIX} must be base64 after it"
            ) from exc
    else:
        key = secret.encode()
    if not key:
        raise ValueError("the webhook secret is empty")
    return key


def signed_headers(secret: str, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body``, signed with ``secret`` (see ``webhook_key``)."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(webhook_key(secret), signed, hashlib.sha256).digest()
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": "v1," + base64.b64encode(digest).decode("ascii"),
    }


@dataclass(frozen=True, slots=True)
class _Attempt:
    status: int | None
    error: str | None  # None: delivered
    retry: bool = False
    retry_after: str | None = None


async def deliver(
    url: str,
    payload: dict[str, Any],
    *,
    secret: str | None,
    message_id: str,
    fetch: FetchSettings,
    attempts: int = 5,
    backoff_s: float = 1.0,
    max_delay_s: float = MAX_DELAY_S,
    resolver: Resolver | None = None,
    verify: ssl.SSLContext | None = None,
) -> DeliveryResult:
    """POST ``payload`` as JSON to ``url``, retrying up to ``attempts`` times in all.

    Retried: no connection, a timeout, a failed DNS lookup, HTTP 408, 429 and 5xx, after
    ``backoff_s * 2**n`` seconds (with jitter) or the receiver's Retry-After on 429/503 if longer,
    never more than ``max_delay_s``. Not retried: other statuses (a 3xx too: redirects are not
    followed) and URLs the SSRF guard refuses. Every attempt sends the same ``webhook-id``
    (receivers dedupe by it) with a fresh timestamp and signature; timeouts are ``fetch``'s.

    A failed delivery is logged and returned, never raised. Raises only on a caller's mistake:
    ``payload`` not JSON (``TypeError``/``ValueError``), a malformed ``secret`` or ``attempts`` < 1
    (``ValueError``).
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    if secret is not None:
        webhook_key(secret)  # a bad secret is the caller's mistake, not the receiver's
    outcome = _Attempt(None, "not attempted")
    for attempt in range(1, attempts + 1):
        outcome = await _post(url, body, secret, message_id, fetch, resolver, verify)
        if outcome.error is None:
            return DeliveryResult(True, attempt, outcome.status, None)
        if not outcome.retry or attempt == attempts:
            logger.warning(
                "webhook %s not delivered after %d attempt(s): %s", message_id, attempt, outcome.error
            )
            return DeliveryResult(False, attempt, outcome.status, outcome.error)
        delay = retry_delay(
            attempt - 1, backoff_s=backoff_s, retry_after=outcome.retry_after, cap=max_delay_s
        )
        logger.info(
            "webhook %s attempt %d failed (%s); retrying in %.1f s", message_id, attempt, outcome.error, delay
        )
        await asyncio.sleep(delay)
    raise AssertionError("unreachable: the last attempt returns")


async def _post(
    url: str,
    body: bytes,
    secret: str | None,
    message_id: str,
    fetch: FetchSettings,
    resolver: Resolver | None,
    verify: ssl.SSLContext | None,
) -> _Attempt:
    try:
        hop = await checked_hop(url, fetch=fetch, field=FIELD, resolver=resolver)
    except FetchFailed as exc:
        # A lookup that failed may pass later; a refused scheme or address will not.
        return _Attempt(None, exc.message, retry=isinstance(exc.__cause__, OSError))
    except InvalidInput as exc:
        return _Attempt(None, exc.message)
    timestamp = int(time.time())
    headers = {
        "Host": hop.host_header,
        "Content-Type": "application/json",
        "User-Agent": f"dsocr/{__version__}",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
    }
    if secret is not None:
        headers.update(signed_headers(secret, message_id, timestamp, body))
    timeout = fetch_timeout(fetch)
    # As fetch_url: no environment proxy (it would connect to the name, not the checked address).
    tls: ssl.SSLContext | bool = True if verify is None else verify
    extensions = {"sni_hostname": hop.host} if hop.url.scheme == "https" else {}
    try:
        async with httpx.AsyncClient(
            timeout=timeout, follow_redirects=False, trust_env=False, verify=tls
        ) as client:
            request = client.build_request(
                "POST", hop.connect_url, headers=headers, content=body, extensions=extensions
            )
            # The answer's body is not read: only its status counts.
            response = await asyncio.wait_for(client.send(request, stream=True), fetch.total_timeout_s)
            await response.aclose()
    except (httpx.TimeoutException, asyncio.TimeoutError):
        return _Attempt(None, f"timed out posting to {hop.host!r}", retry=True)
    except httpx.HTTPError as exc:
        return _Attempt(None, f"could not post to {hop.host!r}: {exc}", retry=True)
    except UnicodeError as exc:  # httpx decodes a redirect's Location even when not following it
        return _Attempt(None, f"{hop.host!r} sent a redirect to an invalid URL: {exc}")
    status = response.status_code
    if 200 <= status < 300:
        return _Attempt(status, None)
    if 300 <= status < 400:
        return _Attempt(status, f"{hop.host!r} answered HTTP {status}; redirects are not followed")
    retry_after = response.headers.get("retry-after") if status in (429, 503) else None
    retry = status in (408, 429) or status >= 500
    return _Attempt(status, f"{hop.host!r} answered HTTP {status}", retry=retry, retry_after=retry_after)


def retry_delay(retry: int, *, backoff_s: float, retry_after: str | None, cap: float = MAX_DELAY_S) -> float:
    """Seconds before retry ``retry`` (0 first): ``backoff_s * 2**retry`` times 0.5-1 (jitter, so
    receivers back from an outage are not hit by every sender at once), or a longer Retry-After
    (seconds or an HTTP date); never more than ``cap``."""
    delay = min(backoff_s * 2.0 ** min(retry, 30), cap) * random.uniform(0.5, 1.0)
    asked = _retry_after_s(retry_after)
    if asked is not None:
        delay = max(delay, asked)
    return min(delay, cap)


def _retry_after_s(value: str | None) -> float | None:
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None  # unreadable: the backoff applies
    if when.tzinfo is None:  # "-0000": UTC, as HTTP dates always are
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, float(when.timestamp()) - time.time())
