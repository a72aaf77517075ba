"""Where jobs live: one SQLite database and a folder per job (its input, its finished pages).

A page's JSON file is written (atomically) before its row says it is done, and each write
commits on its own, as the batch manifest does: a server killed at any moment loses no page it
finished, and never counts a page whose file is missing. WAL journaling lets several server
processes share the database; ``claim`` takes a queued job in one transaction, so two processes
never run the same job.

Every method blocks (SQLite, files): the job manager calls them in worker threads.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = ["ACTIVE", "FINISHED", "JobRecord", "JobStatus", "JobStore", "StoredInput"]

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
ACTIVE: tuple[JobStatus, ...] = ("queued", "running")
FINISHED: tuple[JobStatus, ...] = ("succeeded", "failed", "cancelled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id            TEXT PRIMARY KEY,
    owner         TEXT NOT NULL,      -- the tenant (a hash of the API key; '' without keys)
    status        TEXT NOT NULL,      -- queued | running | succeeded | failed | cancelled
    cancel        INTEGER NOT NULL DEFAULT 0,  -- asked to stop; the process running it stops it
    request_json  TEXT NOT NULL,      -- the request's fields, without its source
    input_json    TEXT NOT NULL,      -- the stored input: file name, media type, field
    callback_url  TEXT,
    kind          TEXT,               -- image | pdf, once opened
    page_numbers  TEXT,               -- JSON list of the pages the job reads, once opened
    pages_done    INTEGER NOT NULL DEFAULT 0,
    pages_failed  INTEGER NOT NULL DEFAULT 0,
    error_json    TEXT,               -- why the job failed
    callback_json TEXT,               -- the completion callback's delivery
    disk_bytes    INTEGER NOT NULL DEFAULT 0,
    worker        TEXT,               -- the process running it
    lease_until   REAL,               -- its lease; past it, another process may take the job over
    created_at    REAL NOT NULL,
    started_at    REAL,
    finished_at   REAL,
    expires_at    REAL
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, created_at);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs(owner, created_at);
CREATE TABLE IF NOT EXISTS pages (
    job_id  TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    page    INTEGER NOT NULL,
    ok      INTEGER NOT NULL,
    PRIMARY KEY (job_id, page)
);
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredInput:
    """What a job's input file is (for reading it back as the source it came as)."""

    filename: str | None
    content_type: str | None
    field: str


@dataclass(frozen=True, slots=True, kw_only=True)
class JobRecord:
    """One job's row."""

    id: str
    owner: str
    status: JobStatus
    cancel: bool
    request: dict[str, Any]
    input: StoredInput
    callback_url: str | None
    kind: str | None
    page_numbers: list[int] | None
    pages_done: int
    pages_failed: int
    error: dict[str, Any] | None
    callback: dict[str, Any] | None
    disk_bytes: int
    worker: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    expires_at: float | None

    @property
    def finished(self) -> bool:
        """True once the job ended (succeeded, failed or cancelled)."""
        return self.status in FINISHED


def _record(row: sqlite3.Row) -> JobRecord:
    def loaded(name: str) -> Any:
        value = row[name]
        return None if value is None else json.loads(value)

    return JobRecord(
        id=row["id"],
        owner=row["owner"],
        status=row["status"],
        cancel=bool(row["cancel"]),
        request=json.loads(row["request_json"]),
        input=StoredInput(**json.loads(row["input_json"])),
        callback_url=row["callback_url"],
        kind=row["kind"],
        page_numbers=loaded("page_numbers"),
        pages_done=row["pages_done"],
        pages_failed=row["pages_failed"],
        error=loaded("error_json"),
        callback=loaded("callback_json"),
        disk_bytes=row["disk_bytes"],
        worker=row["worker"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        expires_at=row["expires_at"],
    )


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class JobStore:
    """The jobs under ``root``. Thread-safe; every call commits on its own."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self._lock = threading.Lock()
        # isolation_level=None: transactions are ours (claim's BEGIN IMMEDIATE), the rest autocommit.
        self._db = sqlite3.connect(root / "jobs.db", isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database; idempotent."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _one(self, sql: str, *args: Any) -> sqlite3.Row | None:
        with self._lock:
            row: sqlite3.Row | None = self._db.execute(sql, args).fetchone()
            return row

    def _execute(self, sql: str, *args: Any) -> int:
        with self._lock:
            return self._db.execute(sql, args).rowcount

    # ------------------------------------------------------------------ files

    def job_dir(self, job_id: str) -> Path:
        """The folder of one job."""
        return self.root / job_id

    def input_path(self, job_id: str) -> Path:
        """The job's input, as it was received."""
        return self.job_dir(job_id) / "input"

    def page_path(self, job_id: str, page: int) -> Path:
        """A finished page's JSON."""
        return self.job_dir(job_id) / "pages" / f"{page:06d}.json"

    # ------------------------------------------------------------------ jobs

    def create(
        self,
        *,
        job_id: str,
        owner: str,
        request: dict[str, Any],
        data: bytes,
        stored: StoredInput,
        callback_url: str | None,
        max_active: int,
        max_active_per_owner: int,
        max_disk_bytes: int,
    ) -> JobRecord | str:
        """Store a new queued job with its input; or, without storing anything, why not:
        ``"queue"`` (too many active jobs in total), ``"owner"`` (too many of this owner's) or
        ``"disk"`` (over the quota)."""
        folder = self.job_dir(job_id)
        (folder / "pages").mkdir(parents=True)
        try:
            _write_atomic(self.input_path(job_id), data)
            with self._transaction() as db:
                active = db.execute(
                    "SELECT COUNT(*), SUM(owner = ?) FROM jobs WHERE status IN ('queued', 'running')",
                    (owner,),
                ).fetchone()
                used = db.execute("SELECT COALESCE(SUM(disk_bytes), 0) FROM jobs").fetchone()[0]
                refusal = (
                    "queue"
                    if active[0] >= max_active
                    else "owner"
                    if (active[1] or 0) >= max_active_per_owner
                    else "disk"
                    if used + len(data) > max_disk_bytes
                    else None
                )
                if refusal is None:
                    db.execute(
                        "INSERT INTO jobs (id, owner, status, request_json, input_json, callback_url,"
                        " disk_bytes, created_at) VALUES (?, ?, 'queued', ?, ?, ?, ?, ?)",
                        (
                            job_id,
                            owner,
                            json.dumps(request),
                            json.dumps(
                                {
                                    "filename": stored.filename,
                                    "content_type": stored.content_type,
                                    "field": stored.field,
                                }
                            ),
                            callback_url,
                            len(data),
                            time.time(),
                        ),
                    )
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        if refusal is not None:
            shutil.rmtree(folder, ignore_errors=True)
            return refusal
        job = self.get(job_id)
        assert job is not None
        return job

    def get(self, job_id: str, owner: str | None = None) -> JobRecord | None:
        """The job, if it exists. With ``owner`` (a caller's view), only a job of that owner that
        has not expired: an expired job is gone for its owner at once, not at the next sweep."""
        if owner is None:
            row = self._one("SELECT * FROM jobs WHERE id = ?", job_id)
        else:
            row = self._one(
                "SELECT * FROM jobs WHERE id = ? AND owner = ? AND (expires_at IS NULL OR expires_at > ?)",
                job_id,
                owner,
                time.time(),
            )
        return None if row is None else _record(row)

    def owned(self, owner: str, *, limit: int = 100) -> list[JobRecord]:
        """The owner's jobs that have not expired, newest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE owner = ? AND (expires_at IS NULL OR expires_at > ?)"
                " ORDER BY created_at DESC LIMIT ?",
                (owner, time.time(), limit),
            ).fetchall()
        return [_record(row) for row in rows]

    def claim(self, worker: str, lease_s: float) -> JobRecord | None:
        """Take the next job to run, for ``worker``: a queued one, or a running one whose lease
        ran out (its process died). Owners take turns: one with no job running comes first."""
        now = time.time()
        with self._transaction() as db:
            row = db.execute(
                """
                SELECT id FROM jobs AS j
                WHERE j.cancel = 0 AND (j.status = 'queued' OR (j.status = 'running' AND j.lease_until < ?))
                ORDER BY EXISTS (
                    SELECT 1 FROM jobs AS r WHERE r.owner = j.owner AND r.status = 'running'
                    AND r.lease_until >= ? AND r.id != j.id
                ), j.created_at
                LIMIT 1
                """,
                (now, now),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET status = 'running', worker = ?, lease_until = ?,"
                " started_at = COALESCE(started_at, ?) WHERE id = ?",
                (worker, now + lease_s, now, row["id"]),
            )
        return self.get(row["id"])

    def renew(self, worker: str, lease_s: float) -> list[str]:
        """Extend the leases of ``worker``'s running jobs; the ids of those asked to cancel."""
        now = time.time()
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET lease_until = ? WHERE worker = ? AND status = 'running'",
                (now + lease_s, worker),
            )
            rows = self._db.execute(
                "SELECT id FROM jobs WHERE worker = ? AND status = 'running' AND cancel = 1", (worker,)
            ).fetchall()
        return [row["id"] for row in rows]

    def running_workers(self) -> list[tuple[str, str]]:
        """``(job id, worker)`` of every running job."""
        with self._lock:
            rows = self._db.execute("SELECT id, worker FROM jobs WHERE status = 'running'").fetchall()
        return [(row["id"], row["worker"] or "") for row in rows]

    def release(self, job_id: str, worker: str) -> None:
        """Give a job back to the queue if ``worker`` still holds it (its process is gone)."""
        self._execute(
            "UPDATE jobs SET status = 'queued', worker = NULL, lease_until = NULL"
            " WHERE id = ? AND status = 'running' AND worker = ?",
            job_id,
            worker,
        )

    def opened(self, job_id: str, kind: str, page_numbers: list[int]) -> None:
        """Record what the job's input turned out to be (first run only)."""
        self._execute(
            "UPDATE jobs SET kind = ?, page_numbers = COALESCE(page_numbers, ?) WHERE id = ?",
            kind,
            json.dumps(page_numbers),
            job_id,
        )

    def save_page(self, job_id: str, page: int, ok: bool, data: bytes) -> None:
        """A finished page: its file, then its row (so a row always has its file)."""
        path = self.page_path(job_id, page)
        _write_atomic(path, data)
        with self._transaction() as db:
            done = db.execute("SELECT 1 FROM pages WHERE job_id = ? AND page = ?", (job_id, page)).fetchone()
            if done is not None:
                return
            db.execute("INSERT INTO pages (job_id, page, ok) VALUES (?, ?, ?)", (job_id, page, int(ok)))
            db.execute(
                "UPDATE jobs SET pages_done = pages_done + ?, pages_failed = pages_failed + ?,"
                " disk_bytes = disk_bytes + ? WHERE id = ?",
                (int(ok), int(not ok), len(data), job_id),
            )

    def done_pages(self, job_id: str) -> list[int]:
        """The pages finished (succeeded or failed), in order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT page FROM pages WHERE job_id = ? ORDER BY page", (job_id,)
            ).fetchall()
        return [row["page"] for row in rows]

    def read_page(self, job_id: str, page: int) -> dict[str, Any]:
        """A finished page's JSON."""
        data: dict[str, Any] = json.loads(self.page_path(job_id, page).read_bytes())
        return data

    def finish(
        self, job_id: str, status: JobStatus, *, ttl_s: float, error: dict[str, Any] | None = None
    ) -> bool:
        """End an active job; False if it had already ended."""
        now = time.time()
        return (
            self._execute(
                "UPDATE jobs SET status = ?, error_json = ?, finished_at = ?, expires_at = ?, worker = NULL,"
                " lease_until = NULL WHERE id = ? AND status IN ('queued', 'running')",
                status,
                None if error is None else json.dumps(error),
                now,
                now + ttl_s,
                job_id,
            )
            == 1
        )

    def request_cancel(self, job_id: str, *, ttl_s: float) -> JobRecord | None:
        """Cancel a job: a queued one ends now; a running one is flagged, and the process running
        it stops it (and ends it as cancelled)."""
        now = time.time()
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET status = 'cancelled', cancel = 1, finished_at = ?, expires_at = ?"
                " WHERE id = ? AND status = 'queued'",
                (now, now + ttl_s, job_id),
            )
            db.execute("UPDATE jobs SET cancel = 1 WHERE id = ? AND status = 'running'", (job_id,))
        return self.get(job_id)

    def requeue(self, job_id: str) -> None:
        """Give a running job back to the queue (its process is stopping); done pages stay done."""
        self._execute(
            "UPDATE jobs SET status = 'queued', worker = NULL, lease_until = NULL"
            " WHERE id = ? AND status = 'running'",
            job_id,
        )

    def set_callback(self, job_id: str, delivery: dict[str, Any]) -> None:
        """Record the completion callback's delivery."""
        self._execute("UPDATE jobs SET callback_json = ? WHERE id = ?", json.dumps(delivery), job_id)

    def undelivered(self) -> list[JobRecord]:
        """Finished jobs with a callback not attempted yet (their server stopped before sending)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE status IN ('succeeded', 'failed', 'cancelled')"
                " AND callback_url IS NOT NULL AND callback_json IS NULL"
            ).fetchall()
        return [_record(row) for row in rows]

    def delete(self, job_id: str) -> None:
        """Remove a job: its row, its pages and its folder."""
        self._execute("DELETE FROM jobs WHERE id = ?", job_id)
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def expired(self, now: float) -> list[str]:
        """Finished jobs past their expiry."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM jobs WHERE expires_at IS NOT NULL AND expires_at < ?", (now,)
            ).fetchall()
        return [row["id"] for row in rows]

    def used_bytes(self) -> int:
        """Bytes the stored jobs take (inputs and pages)."""
        row = self._one("SELECT COALESCE(SUM(disk_bytes), 0) FROM jobs")
        assert row is not None
        return int(row[0])
