"""The result cache: finished pages' engine outputs on disk, so that a page seen before skips the engine.

A page is found by a key made of three hashes (:func:`page_key`):

* the request's fingerprint (:mod:`dsocr.fingerprint`: engine, model and revision, prompt, mode,
  sampling and n-gram rule, retry policy, dsocr version), the scheme ``dsocr batch`` keys its
  manifest with;
* the page's pixels (:func:`pixel_hash`: mode, size and every pixel, after decoding or
  rasterising), so one rule serves images and PDFs, and the same page inside another PDF hits;
* the scope: the caller's tenant (an opaque id of its API key), so that one tenant cannot learn
  whether another sent a document; ``""`` for all when the cache is shared.

What is stored is the engine's output (text, finish reason, token counts, repetition score), not
a rendered answer: on a hit the pipeline parses and draws exactly as on a miss, so every output
format is the same. Pages that failed, were aborted or streamed their text (``stream="text"``,
which skips the retry policy) are not stored; a page that ended on ``length`` or was flagged
repetitive is stored as it is (the same inputs give the same output).

Storage is one SQLite file (``pages.sqlite``) in ``DSOCR_CACHE__DIR``, bounded by
``DSOCR_CACHE__MAX_BYTES``: past it the least recently used pages are deleted. Several server
processes share it (WAL journaling). Every call is blocking (run it in a worker thread) and
thread-safe. A cache that cannot be opened, read or written is logged and then behaves as
empty: it never fails a request.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast, get_args

from PIL import Image

from dsocr.engine.base import EngineOutput, FinishReason
from dsocr.fingerprint import fingerprint_hash, request_fingerprint
from dsocr.request import OcrRequest
from dsocr.settings import EngineSettings, Settings

__all__ = [
    "CACHE_FILE",
    "PageCache",
    "RequestCache",
    "default_cache_dir",
    "open_cache",
    "page_key",
    "pixel_hash",
]

logger = logging.getLogger(__name__)

CACHE_FILE = "pages.sqlite"

# Rows of pixels hashed at a time: a band's copy stays small even for a 60 MP page.
_HASH_ROWS = 256
# How long a call waits for another process's write lock before giving up (a miss).
_BUSY_TIMEOUT_S = 5.0
_FINISH_REASONS = frozenset(get_args(FinishReason))

# ``total`` keeps the stored bytes up to date in the same transactions as the rows, whichever
# process writes them, so eviction never has to sum the table.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS pages (
    key       TEXT PRIMARY KEY,  -- page_key(): fingerprint, scope and pixels
    scope     TEXT NOT NULL,     -- the tenant id that stored it ("" when shared or without keys)
    value     TEXT NOT NULL,     -- the engine output, JSON
    size      INTEGER NOT NULL,  -- bytes of key, scope and value
    last_used REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS pages_last_used ON pages (last_used);
CREATE TABLE IF NOT EXISTS total (id INTEGER PRIMARY KEY CHECK (id = 0), bytes INTEGER NOT NULL);
INSERT OR IGNORE INTO total (id, bytes) VALUES (0, 0);
CREATE TRIGGER IF NOT EXISTS pages_added AFTER INSERT ON pages
    BEGIN UPDATE total SET bytes = bytes + NEW.size WHERE id = 0; END;
CREATE TRIGGER IF NOT EXISTS pages_removed AFTER DELETE ON pages
    BEGIN UPDATE total SET bytes = bytes - OLD.size WHERE id = 0; END;
CREATE TRIGGER IF NOT EXISTS pages_resized AFTER UPDATE OF size ON pages
    BEGIN UPDATE total SET bytes = bytes - OLD.size + NEW.size WHERE id = 0; END;
"""


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/dsocr``, else ``~/.cache/dsocr``."""
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "dsocr"


def pixel_hash(image: Image.Image) -> str:
    """SHA-256 (hex) of a page's mode, size and pixels (blocking: a worker thread's job)."""
    width, height = image.size
    digest = hashlib.sha256(f"{image.mode}\0{width}x{height}\0".encode())
    for top in range(0, height, _HASH_ROWS):
        digest.update(image.crop((0, top, width, min(height, top + _HASH_ROWS))).tobytes())
    return digest.hexdigest()


def page_key(fingerprint: str, scope: str, pixels: str) -> str:
    """The cache key of a page: its request's fingerprint hash, the scope and its pixel hash."""
    return hashlib.sha256(f"{fingerprint}\0{scope}\0{pixels}".encode()).hexdigest()


def _encode(output: EngineOutput) -> str:
    return json.dumps(
        {
            "text": output.text,
            "finish_reason": output.finish_reason,
            "prompt_tokens": output.prompt_tokens,
            "vision_tokens": output.vision_tokens,
            "completion_tokens": output.completion_tokens,
            "repetition_score": output.repetition_score,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )


def _decode(value: str) -> EngineOutput:
    """The stored output; ``ValueError`` for a value this version cannot read."""
    data: Any = json.loads(value)
    if not isinstance(data, dict):
        raise ValueError("not an object")
    text, finish, score = data.get("text"), data.get("finish_reason"), data.get("repetition_score")
    prompt, vision, completion = (
        data.get(name) for name in ("prompt_tokens", "vision_tokens", "completion_tokens")
    )
    if not (
        isinstance(text, str)
        and finish in _FINISH_REASONS
        and isinstance(prompt, int)
        and isinstance(vision, int)
        and isinstance(completion, int)
        and (score is None or isinstance(score, int | float))
    ):
        raise ValueError("unexpected fields")
    return EngineOutput(
        request_id="",
        text=text,
        finish_reason=cast(FinishReason, finish),
        prompt_tokens=prompt,
        vision_tokens=vision,
        completion_tokens=completion,
        repetition_score=None if score is None else float(score),
    )


class PageCache:
    """Engine outputs by :func:`page_key`, in SQLite under ``directory``; see the module docstring.

    ``engine`` are the settings of the engine whose outputs it holds (they name the default model
    and its revision). ``shared`` puts every caller in one scope. Blocking and thread-safe; close it
    when done.
    """

    def __init__(
        self, directory: Path, *, engine: EngineSettings, max_bytes: int = 1024**3, shared: bool = False
    ) -> None:
        self.path = directory / CACHE_FILE
        self.engine = engine
        self.max_bytes = max_bytes
        self.shared = shared
        self._lock = threading.Lock()
        self._failing = False
        self._db: sqlite3.Connection | None = None
        try:
            # The pages' text is the documents' text: a folder made here is for its owner only.
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._db = self._connect()
        except (sqlite3.Error, OSError) as exc:
            logger.warning(
                "result cache %s cannot be opened, so pages are not cached: %s "
                "(if the file is damaged, delete it; DSOCR_CACHE__DIR, DSOCR_CACHE__ENABLED)",
                self.path,
                exc,
            )

    def _connect(self) -> sqlite3.Connection:
        # One connection shared by the worker threads, serialised by ``_lock``.
        db = sqlite3.connect(
            self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        try:
            # Before the first table: freed pages can then be given back to the file system.
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            # The WAL file is cut back to this after each checkpoint, so it does not stay large.
            db.execute(f"PRAGMA journal_size_limit={16 * 1024 * 1024}")
            db.executescript(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    @property
    def available(self) -> bool:
        """Whether the cache file could be opened (otherwise every lookup misses)."""
        return self._db is not None

    def for_request(self, request: OcrRequest, *, engine: str) -> RequestCache | None:
        """The cache as ``request`` uses it, run by the ``engine`` kind; ``None`` when the request
        does not use the cache (``cache_scope`` is ``None``)."""
        if request.cache_scope is None:
            return None
        fingerprint = fingerprint_hash(request_fingerprint(request, engine=engine, settings=self.engine))
        scope = "" if self.shared else request.cache_scope
        return RequestCache(self, fingerprint=fingerprint, scope=scope)

    def get(self, key: str) -> EngineOutput | None:
        """The stored output under ``key`` (now the most recently used), or ``None``."""
        if self._db is None:
            return None
        try:
            with self._lock:
                row = self._db.execute("SELECT value FROM pages WHERE key = ?", (key,)).fetchone()
                if row is None:
                    self._working()
                    return None
                self._db.execute("UPDATE pages SET last_used = ? WHERE key = ?", (time.time(), key))
                self._working()
        except sqlite3.Error as exc:
            self._failed("read", exc)
            return None
        try:
            return _decode(row[0])
        except (ValueError, TypeError) as exc:
            logger.warning("result cache %s: an unreadable entry is ignored: %s", self.path, exc)
            return None

    def put(self, key: str, scope: str, output: EngineOutput) -> None:
        """Store ``output`` under ``key``, then delete the least recently used pages past ``max_bytes``."""
        if self._db is None:
            return
        try:
            value = _encode(output)
            size = len(key) + len(scope.encode()) + len(value.encode())
        except ValueError as exc:  # text that is no valid Unicode (a lone surrogate) is not kept
            logger.warning("result cache %s: a page that cannot be stored is skipped: %s", self.path, exc)
            return
        if size > self.max_bytes:
            return  # it would push out everything, itself included
        try:
            with self._lock:
                db = self._db
                db.execute("BEGIN IMMEDIATE")
                try:
                    db.execute(
                        "INSERT INTO pages (key, scope, value, size, last_used) VALUES (?, ?, ?, ?, ?) "
                        "ON CONFLICT (key) DO UPDATE SET value = excluded.value, size = excluded.size, "
                        "last_used = excluded.last_used",
                        (key, scope, value, size, time.time()),
                    )
                    evicted = self._evict(db)
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                if evicted:
                    db.execute("PRAGMA incremental_vacuum")
                self._working()
        except sqlite3.Error as exc:
            self._failed("write", exc)

    def _evict(self, db: sqlite3.Connection) -> bool:
        """Delete the least recently used pages until the rest fit in ``max_bytes``."""
        excess = db.execute("SELECT bytes FROM total WHERE id = 0").fetchone()[0] - self.max_bytes
        if excess <= 0:
            return False
        oldest: list[tuple[str]] = []
        rows = db.execute("SELECT key, size FROM pages ORDER BY last_used, rowid")
        for key, size in rows:
            oldest.append((key,))
            excess -= size
            if excess <= 0:
                break
        rows.close()
        db.executemany("DELETE FROM pages WHERE key = ?", oldest)
        return True

    def stored_bytes(self) -> int:
        """The bytes the stored pages take (what ``max_bytes`` bounds); 0 when unavailable."""
        if self._db is None:
            return 0
        try:
            with self._lock:
                return int(self._db.execute("SELECT bytes FROM total WHERE id = 0").fetchone()[0])
        except sqlite3.Error as exc:
            self._failed("read", exc)
            return 0

    def close(self) -> None:
        """Close the file; idempotent (later calls miss)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _failed(self, action: str, exc: sqlite3.Error) -> None:
        # Logged once per spell of failures, so a broken disk does not flood the log.
        if not self._failing:
            self._failing = True
            logger.warning(
                "result cache %s could not %s, treated as a miss: %s "
                "(if the file is damaged, delete it; DSOCR_CACHE__DIR, DSOCR_CACHE__ENABLED)",
                self.path,
                action,
                exc,
            )
        else:
            logger.debug("result cache %s could not %s: %s", self.path, action, exc)

    def _working(self) -> None:
        if self._failing:
            self._failing = False
            logger.info("result cache %s works again", self.path)


@dataclass(frozen=True, slots=True)
class RequestCache:
    """The cache as one request uses it: its fingerprint and scope are fixed, pages vary."""

    cache: PageCache
    fingerprint: str
    scope: str

    def lookup(self, image: Image.Image) -> tuple[str, EngineOutput | None]:
        """The page's key and its stored output, if any (blocking: hashes every pixel)."""
        key = page_key(self.fingerprint, self.scope, pixel_hash(image))
        return key, self.cache.get(key)

    def store(self, key: str, output: EngineOutput) -> None:
        """Store a page's final output, unless the engine aborted it (blocking)."""
        if output.finish_reason != "abort":
            self.cache.put(key, self.scope, output)


def open_cache(settings: Settings, *, default: bool) -> PageCache | None:
    """The cache ``settings.cache`` configures, or ``None`` when it is off.

    ``default`` is whether this front end caches when ``DSOCR_CACHE__ENABLED`` is unset (the
    server and ``dsocr ocr`` do, ``dsocr batch`` does not). Blocking (it opens the file).
    """
    config = settings.cache
    enabled = default if config.enabled is None else config.enabled
    if not enabled:
        return None
    return PageCache(
        config.dir if config.dir is not None else default_cache_dir(),
        engine=settings.engine,
        max_bytes=config.max_bytes,
        shared=config.shared,
    )
