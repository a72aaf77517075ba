"""The batch manifest: which pages of which documents are done, failed or still to do (SQLite).

A document is keyed by the SHA-256 of its bytes plus a hash of the settings that change its
output (the runner's: :mod:`dsocr.fingerprint`, the result cache's keying scheme), so renaming a
file does not redo it, while changing the mode, the prompt or the dsocr version does. Each page
has a status (``pending``, ``done``, ``failed`` + reason) and an ``attempts`` count, bumped when
a run hands the page to the engine.

The manifest is written by one process (the batch driver) and committed after every page, once
that page's files are on disk: a run killed at any moment (Ctrl-C, ``kill -9``) loses no page it
finished, and a page is never marked done without its files. WAL journaling makes a commit cheap
(no fsync per commit) and still durable against a killed process.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

__all__ = ["DocumentRecord", "Manifest", "PageRecord", "PageStatus"]

PageStatus = Literal["pending", "done", "failed"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    doc_key       TEXT PRIMARY KEY,   -- sha256:settings_hash
    sha256        TEXT NOT NULL,
    settings_hash TEXT NOT NULL,
    path          TEXT NOT NULL,      -- where it was last seen
    out_name      TEXT NOT NULL,      -- its folder under the output directory
    page_count    INTEGER,            -- selected pages; NULL when the file could not be opened
    status        TEXT NOT NULL,      -- pending | done | failed (failed: could not be opened)
    reason        TEXT,
    message       TEXT,
    attempts      INTEGER NOT NULL DEFAULT 0,
    updated_at    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS pages (
    doc_key    TEXT NOT NULL REFERENCES documents(doc_key),
    page       INTEGER NOT NULL,      -- 1-based page number in the document
    status     TEXT NOT NULL,         -- pending | done | failed
    reason     TEXT,                  -- error code of a failed page (undecodable_input, ...)
    message    TEXT,
    attempts   INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL,
    PRIMARY KEY (doc_key, page)
);
CREATE TABLE IF NOT EXISTS settings (
    settings_hash TEXT PRIMARY KEY,
    settings_json TEXT NOT NULL
);
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class PageRecord:
    """One page row."""

    doc_key: str
    page: int
    status: PageStatus
    reason: str | None
    message: str | None
    attempts: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DocumentRecord:
    """One document row."""

    doc_key: str
    sha256: str
    path: str
    out_name: str
    page_count: int | None
    status: PageStatus
    reason: str | None
    message: str | None
    attempts: int


class Manifest:
    """The SQLite manifest of a batch run. Use from one thread; close it (or use ``with``)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # isolation_level=None: we open transactions ourselves, so each page commits on its own.
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database; idempotent."""
        self._db.close()

    def __enter__(self) -> Manifest:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ writes (each one commits)

    def record_settings(self, key: str, config: Mapping[str, Any]) -> None:
        """Keep the settings behind a hash, so a manifest explains its own keys."""
        self._db.execute(
            "INSERT OR IGNORE INTO settings VALUES (?, ?)",
            (key, json.dumps(config, sort_keys=True, default=str)),
        )

    def register_document(
        self, *, doc_key: str, sha256: str, settings_key: str, path: str, out_name: str, pages: Iterable[int]
    ) -> None:
        """Add (or refresh: path, folder) a document that opened, and a pending row for each new page."""
        now = time.time()
        page_list = list(pages)
        with self._transaction():
            self._db.execute(
                """INSERT INTO documents (doc_key, sha256, settings_hash, path, out_name, page_count,
                                          status, reason, message, attempts, updated_at)
                   VALUES (?, ?, ?, ?, ?, ?, 'pending', NULL, NULL, 1, ?)
                   ON CONFLICT(doc_key) DO UPDATE SET
                       path = excluded.path, out_name = excluded.out_name,
                       page_count = excluded.page_count,
                       status = CASE WHEN documents.status = 'failed' THEN 'pending'
                                     ELSE documents.status END,
                       reason = NULL, message = NULL, attempts = documents.attempts + 1,
                       updated_at = excluded.updated_at""",
                (doc_key, sha256, settings_key, path, out_name, len(page_list), now),
            )
            self._db.executemany(
                "INSERT OR IGNORE INTO pages VALUES (?, ?, 'pending', NULL, NULL, 0, ?)",
                [(doc_key, page, now) for page in page_list],
            )

    def fail_document(
        self,
        *,
        doc_key: str,
        sha256: str,
        settings_key: str,
        path: str,
        out_name: str,
        reason: str,
        message: str,
    ) -> None:
        """Record a document that could not be read or opened (no pages)."""
        with self._transaction():
            self._db.execute(
                """INSERT INTO documents (doc_key, sha256, settings_hash, path, out_name, page_count,
                                          status, reason, message, attempts, updated_at)
                   VALUES (?, ?, ?, ?, ?, NULL, 'failed', ?, ?, 1, ?)
                   ON CONFLICT(doc_key) DO UPDATE SET
                       path = excluded.path, out_name = excluded.out_name, status = 'failed',
                       reason = excluded.reason, message = excluded.message,
                       attempts = documents.attempts + 1, updated_at = excluded.updated_at""",
                (doc_key, sha256, settings_key, path, out_name, reason, message, time.time()),
            )

    def mark_started(self, doc_key: str, pages: Iterable[int]) -> None:
        """Count an attempt for each page handed to the engine."""
        now = time.time()
        with self._transaction():
            self._db.executemany(
                "UPDATE pages SET attempts = attempts + 1, updated_at = ? WHERE doc_key = ? AND page = ?",
                [(now, doc_key, page) for page in pages],
            )

    def mark_page(
        self,
        doc_key: str,
        page: int,
        status: PageStatus,
        *,
        reason: str | None = None,
        message: str | None = None,
    ) -> None:
        """Set a page's final status for this attempt; call only after its files are written."""
        with self._transaction():
            self._db.execute(
                "UPDATE pages SET status = ?, reason = ?, message = ?, updated_at = ? "
                "WHERE doc_key = ? AND page = ?",
                (status, reason, message, time.time(), doc_key, page),
            )
            self._db.execute(
                """UPDATE documents SET status = CASE
                       WHEN EXISTS (SELECT 1 FROM pages WHERE doc_key = ? AND status = 'pending')
                       THEN 'pending' ELSE 'done' END, updated_at = ?
                   WHERE doc_key = ?""",
                (doc_key, time.time(), doc_key),
            )

    # ------------------------------------------------------------------ reads

    def document(self, doc_key: str) -> DocumentRecord | None:
        """One document, or None if the manifest has never seen it."""
        row = self._db.execute(
            "SELECT doc_key, sha256, path, out_name, page_count, status, reason, message, attempts "
            "FROM documents WHERE doc_key = ?",
            (doc_key,),
        ).fetchone()
        if row is None:
            return None
        return DocumentRecord(
            doc_key=row[0],
            sha256=row[1],
            path=row[2],
            out_name=row[3],
            page_count=row[4],
            status=row[5],
            reason=row[6],
            message=row[7],
            attempts=row[8],
        )

    def out_names(self) -> dict[str, str]:
        """Output folder name → the content hash that owns it."""
        return {name: sha for name, sha in self._db.execute("SELECT out_name, sha256 FROM documents")}

    def out_name_of(self, sha256: str) -> str | None:
        """The folder already given to this content, if any (settings changes reuse it)."""
        row = self._db.execute(
            "SELECT out_name FROM documents WHERE sha256 = ? ORDER BY updated_at DESC LIMIT 1", (sha256,)
        ).fetchone()
        return None if row is None else str(row[0])

    def pages(self, doc_key: str) -> list[PageRecord]:
        """The pages of a document, in page order."""
        rows = self._db.execute(
            "SELECT doc_key, page, status, reason, message, attempts FROM pages "
            "WHERE doc_key = ? ORDER BY page",
            (doc_key,),
        ).fetchall()
        return [
            PageRecord(doc_key=r[0], page=r[1], status=r[2], reason=r[3], message=r[4], attempts=r[5])
            for r in rows
        ]

    # ------------------------------------------------------------------ helpers

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT, or ROLLBACK on error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
