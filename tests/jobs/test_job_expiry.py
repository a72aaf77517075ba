"""A finished job is gone for its owner the moment it expires, whenever the sweep next runs."""

from __future__ import annotations

import time
from pathlib import Path

from dsocr.jobs.store import JobRecord, JobStore, StoredInput


def _store_job(store: JobStore, job_id: str, owner: str) -> None:
    created = store.create(
        job_id=job_id,
        owner=owner,
        request={},
        data=b"%PDF-1.4 stand-in",
        stored=StoredInput(filename="a.pdf", content_type="application/pdf", field="file"),
        callback_url=None,
        max_active=10,
        max_active_per_owner=10,
        max_disk_bytes=1_000_000,
    )
    assert isinstance(created, JobRecord)


def test_an_expired_job_is_gone_for_its_owner_before_the_sweep_deletes_it(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs")
    try:
        for job_id in ("expired", "kept", "running"):
            _store_job(store, job_id, "owner-a")
        assert store.finish("expired", "succeeded", ttl_s=0.0)
        assert store.finish("kept", "succeeded", ttl_s=3600.0)

        assert store.get("expired", "owner-a") is None
        assert [job.id for job in store.owned("owner-a")] == ["running", "kept"]
        assert store.get("kept", "owner-a") is not None
        assert store.get("running", "owner-a") is not None
        # Still on disk for the sweep, which finds it and deletes row and folder.
        assert store.expired(time.time() + 1) == ["expired"]
        assert store.get("expired") is not None
        store.delete("expired")
        assert store.get("expired") is None and not store.job_dir("expired").exists()
    finally:
        store.close()
