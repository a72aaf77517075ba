"""A server killed with SIGKILL mid-job, started again on the same jobs folder, finishes the job
without running again the pages it had finished (``dsocr serve`` processes, fake engine)."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import httpx
from jobs_support import pdf, wait_job

from server_support import dsocr_serve_with_env


def _pages_run(base: str) -> float:
    """Pages this server process ran (its ``dsocr_pages_total`` over every outcome)."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return sum(float(m.group(1)) for m in re.finditer(r"^dsocr_pages_total\{[^}]*\} (\S+)$", text, re.M))


def test_a_job_survives_sigkill_and_restart_without_redoing_finished_pages(tmp_path: Path) -> None:
    env = {
        "DSOCR_ENGINE__KIND": "fake",
        "DSOCR_ENGINE__FAKE__DELAY_S": "0.3",
        "DSOCR_JOBS__DIR": str(tmp_path / "jobs"),
        "DSOCR_JOBS__WINDOW": "1",
    }
    pages = 12
    with dsocr_serve_with_env(env, log=tmp_path / "first.log") as (base, process):
        with httpx.Client(base_url=base, timeout=30) as client:
            job = client.post("/v1/jobs", files={"file": ("long.pdf", pdf(pages), "application/pdf")}).json()
            before = wait_job(client, job["id"], until=lambda j: j["progress"]["pages_done"] >= 3)
        process.send_signal(signal.SIGKILL)
        process.wait()
    done_before = before["progress"]["pages_done"]
    assert done_before < pages

    with (
        dsocr_serve_with_env(env, log=tmp_path / "second.log") as (base, _),
        httpx.Client(base_url=base, timeout=30) as client,
    ):
        done = wait_job(client, job["id"], timeout_s=60)
        assert done["status"] == "succeeded", done
        assert done["progress"] == {"pages_total": pages, "pages_done": pages, "pages_failed": 0}
        result = client.get(f"/v1/jobs/{job['id']}/result").json()
        assert [p["page"] for p in result["pages"]] == list(range(1, pages + 1))
        assert all(p["ok"] for p in result["pages"])
        # The second server ran only the pages the first had not finished when it was killed
        # (at most those it had not finished at the last poll before the kill).
        assert _pages_run(base) <= pages - done_before


def test_sigterm_stops_a_server_whose_jobs_are_followed(tmp_path: Path) -> None:
    env = {
        "DSOCR_ENGINE__KIND": "fake",
        "DSOCR_ENGINE__FAKE__DELAY_S": "1.0",
        "DSOCR_JOBS__DIR": str(tmp_path / "jobs"),
        "DSOCR_JOBS__WINDOW": "1",
    }
    with dsocr_serve_with_env(env, log=tmp_path / "serve.log") as (base, process):
        with httpx.Client(base_url=base, timeout=30) as client:
            job = client.post("/v1/jobs", files={"file": ("long.pdf", pdf(30), "application/pdf")}).json()
            with client.stream("GET", f"/v1/jobs/{job['id']}/events") as events:
                lines = events.iter_lines()
                assert next(lines) == "event: job"
                process.send_signal(signal.SIGTERM)
                # The stream ends (without a last event) instead of holding the shutdown for the
                # job's 30 s; the client reconnects to the restarted server.
                rest = list(lines)
        assert "event: done" not in rest
        # uvicorn ends a graceful shutdown by raising the signal it stopped on again.
        assert process.wait(timeout=20) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in (tmp_path / "serve.log").read_text()
