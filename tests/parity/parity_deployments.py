"""The servers behind the HTTP doors, one per settings configuration, started when first needed.

Each configuration is a set of ``DSOCR_*`` variables, the way a user configures every front end:
``dsocr serve`` and the Truss deployment get them as their environment, ``dsocr ocr`` and
``dsocr batch`` too. A configuration's ``dsocr serve`` and its Truss deployment (Truss's proxy in
nginx in front of Truss's own start command) are each started once, at the first test that needs
them, and stopped at the end of the session.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from parity_samples import MAX_IMAGE_PIXELS, MAX_UPLOAD_BYTES
from prometheus_client.parser import text_string_to_metric_families

from server_support import NGINX, dsocr_serve_with_env, truss_docker_server

__all__ = [
    "DEADLINE",
    "DEFAULT",
    "ENGINE_DELAY_S",
    "SLOW",
    "Config",
    "Deployments",
    "Series",
    "counters",
    "gauge",
    "wait_for",
    "wait_idle",
]

# How long the slow fake engine takes per page: far longer than any test waits for anything.
ENGINE_DELAY_S = 30


@dataclass(frozen=True)
class Config:
    """A named set of DSOCR_* settings."""

    name: str
    env: Mapping[str, str]


# Every configuration runs each page through the engine: these servers live for the whole session
# and the tests send the same pages again and again, which the result cache would answer (its own
# parity across doors: tests/cache).
_NO_CACHE = {"DSOCR_CACHE__ENABLED": "false"}

DEFAULT = Config(
    "default",
    {
        "DSOCR_ENGINE__KIND": "fake",
        "DSOCR_LIMITS__MAX_IMAGE_PIXELS": str(MAX_IMAGE_PIXELS),
        "DSOCR_LIMITS__MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
        # The render bomb's page fails after this; ordinary pages render in milliseconds.
        "DSOCR_LIMITS__RENDER_TIMEOUT_S": "3",
        **_NO_CACHE,
    },
)
# One page slot, no waiting for room: a second request while one runs is refused at once.
SLOW = Config(
    "slow",
    {
        "DSOCR_ENGINE__KIND": "fake",
        "DSOCR_ENGINE__FAKE__DELAY_S": str(ENGINE_DELAY_S),
        "DSOCR_LIMITS__MAX_QUEUE": "1",
        "DSOCR_LIMITS__ADMISSION_WAIT_S": "0",
        **_NO_CACHE,
    },
)
# A deadline far shorter than the engine's first token.
DEADLINE = Config(
    "deadline",
    {
        "DSOCR_ENGINE__KIND": "fake",
        "DSOCR_ENGINE__FAKE__DELAY_S": str(ENGINE_DELAY_S),
        "DSOCR_LIMITS__REQUEST_TIMEOUT_S": "1",
        **_NO_CACHE,
    },
)


class Deployments:
    """Starts each configuration's servers once, on first use; ``close`` stops them all."""

    def __init__(self, work: Path) -> None:
        self._work = work
        self._stack = ExitStack()
        self._servers: dict[str, str] = {}
        self._trusses: dict[str, str] = {}

    def server(self, config: Config) -> str:
        """Root URL of ``dsocr serve`` with ``config``."""
        if config.name not in self._servers:
            log = self._work / f"serve-{config.name}.log"
            url, _ = self._stack.enter_context(dsocr_serve_with_env(config.env, log=log))
            self._servers[config.name] = url
        return self._servers[config.name]

    def truss(self, config: Config) -> str:
        """Root URL of Truss's proxy in front of the Truss deployment with ``config``."""
        if NGINX is None:
            pytest.skip("nginx is not installed (scripts/test.sh installs Debian's nginx)")
        if config.name not in self._trusses:
            work = self._work / f"truss-{config.name}"
            work.mkdir()
            proxy = self._stack.enter_context(truss_docker_server(work, config.env))
            self._trusses[config.name] = proxy.url
        return self._trusses[config.name]

    def close(self) -> None:
        """Stop every server started."""
        self._stack.close()


# ---------------------------------------------------------------- /metrics

Series = tuple[str, tuple[tuple[str, str], ...]]

# The series that say what was done (pages, tokens, errors, aborts), whichever route did it.
# Route-labelled series (requests, latency) differ between doors by design and are left out.
_COUNTED = (
    "dsocr_pages_total",
    "dsocr_prompt_tokens_total",
    "dsocr_vision_tokens_total",
    "dsocr_output_tokens_total",
    "dsocr_errors_total",
    "dsocr_aborted_requests_total",
    "dsocr_page_duration_seconds_count",
)


def _samples(root: str) -> dict[Series, float]:
    response = httpx.get(f"{root}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    values: dict[Series, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def counters(root: str) -> dict[Series, float]:
    """The counted series (pages, tokens, errors, aborts) as the server reports them now."""
    return {series: value for series, value in _samples(root).items() if series[0] in _COUNTED}


def gauge(root: str, name: str) -> float:
    """An unlabelled gauge's value now."""
    return _samples(root).get((name, ()), 0.0)


def wait_for(predicate: Callable[[], bool], *, within_s: float, what: str) -> None:
    """Poll ``predicate`` until it holds; fail naming ``what`` if it does not within ``within_s``."""
    deadline = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within_s:g} s")
        time.sleep(0.05)


def wait_idle(root: str) -> None:
    """Wait until the server holds no page and serves no request but this poll (a slow engine's
    pages from an earlier test finish within its delay)."""
    wait_for(
        lambda: (
            gauge(root, "dsocr_queue_depth_pages") == 0 and gauge(root, "dsocr_http_requests_in_flight") <= 1
        ),
        within_s=ENGINE_DELAY_S + 10,
        what=f"{root} idle (no page admitted, no request in flight)",
    )
