"""``/v1/jobs`` on a real loopback server (uvicorn in a thread) with the fake engine."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pypdfium2 as pdfium
import pytest
from jobs_support import pdf, png, serving, wait_job
from standardwebhooks import Webhook, WebhookVerificationError

from dsocr.engine.fake import FakeEngine
from dsocr.settings import Settings
from server_support import Server, running_server


def _settings(tmp_path: Path, **jobs: Any) -> Settings:
    return Settings(engine={"kind": "fake"}, jobs={"dir": tmp_path / "jobs", **jobs})


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with running_server(_settings(tmp_path), FakeEngine()) as running:
        yield running


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def _b64(data: bytes, media: str) -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


def _comparable(body: dict[str, Any]) -> dict[str, Any]:
    """A /v1/ocr body without what differs between two runs of the same request."""
    body = {k: v for k, v in body.items() if k != "request_id"}
    body["pages"] = [
        {k: v for k, v in page.items() if k not in ("request_id", "timings", "cached")}
        for page in body["pages"]
    ]
    return body


def test_a_job_answers_202_with_its_location_and_ends_with_the_result_v1_ocr_gives(
    client: httpx.Client,
) -> None:
    document = pdf(3)
    fields = {"outputs": "markdown,blocks,text", "pages": "1-3"}
    response = client.post("/v1/jobs", files={"file": ("scan.pdf", document, "application/pdf")}, data=fields)
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] in ("queued", "running")
    assert job["object"] == "ocr.job"

    done = wait_job(client, job["id"])
    assert done["status"] == "succeeded"
    assert done["progress"] == {"pages_total": 3, "pages_done": 3, "pages_failed": 0}
    assert done["filename"] == "scan.pdf"
    assert done["pages"] == [1, 2, 3]
    assert done["finished_at"] >= done["started_at"] >= done["created_at"]
    assert done["expires_at"] > done["finished_at"]

    result = client.get(f"/v1/jobs/{job['id']}/result")
    assert result.status_code == 200
    direct = client.post("/v1/ocr", files={"file": ("scan.pdf", document, "application/pdf")}, data=fields)
    assert direct.status_code == 200
    assert _comparable(result.json()) == _comparable(direct.json())
    # The job's pages were cached for its owner: the same request again runs no engine.
    assert [p["cached"] for p in direct.json()["pages"]] == [True, True, True]
    assert direct.headers["x-dsocr-cache"] == "hit"
    assert [p["page"] for p in result.json()["pages"]] == [1, 2, 3]


def test_a_json_body_and_plain_formats_of_the_result(client: httpx.Client) -> None:
    job = client.post("/v1/jobs", json={"image_base64": _b64(png(), "image/png")}).json()
    wait_job(client, job["id"])
    markdown = client.get(f"/v1/jobs/{job['id']}/result", params={"format": "md"})
    assert markdown.status_code == 200
    assert markdown.headers["content-type"].startswith("text/markdown")
    body = client.get(f"/v1/jobs/{job['id']}/result").json()
    assert markdown.text.strip() == body["markdown"].strip()
    text = client.get(f"/v1/jobs/{job['id']}/result", params={"format": "txt"})
    assert text.headers["content-type"].startswith("text/plain")
    unknown = client.get(f"/v1/jobs/{job['id']}/result", params={"format": "docx"})
    assert unknown.status_code == 400
    assert unknown.json()["error"]["field"] == "format"


def test_the_result_of_an_unfinished_job_is_409_and_events_follow_it_to_the_end(tmp_path: Path) -> None:
    with (
        running_server(_settings(tmp_path, window=1), FakeEngine(delay_s=0.5)) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        job = client.post("/v1/jobs", files={"file": ("a.pdf", pdf(4), "application/pdf")}).json()
        early = client.get(f"/v1/jobs/{job['id']}/result")
        assert early.status_code == 409
        assert early.json()["error"]["code"] == "job_not_finished"

        events: list[tuple[str, Any]] = []
        with client.stream("GET", f"/v1/jobs/{job['id']}/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            name = None
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    name = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    events.append((name or "", json.loads(line.removeprefix("data: "))))
        names = [name for name, _ in events]
        assert names[0] == "job"
        assert [data["page"] for name, data in events if name == "page.done"] == [1, 2, 3, 4]
        assert names[-1] == "done"
        assert events[-1][1]["page_count"] == 4
        assert events[-1][1]["failed_pages"] == []
        # The stream ended: the server keeps nothing for it (else every followed job would stay).
        assert server.app is not None
        assert server.app.state.dsocr.jobs._changed == {}


def test_cancelling_a_running_job_stops_its_pages_in_the_engine(tmp_path: Path) -> None:
    engine = FakeEngine(delay_s=2.0)
    with (
        running_server(_settings(tmp_path, window=2), engine) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        job = client.post("/v1/jobs", files={"file": ("a.pdf", pdf(6), "application/pdf")}).json()
        wait_job(client, job["id"], until=lambda j: j["status"] == "running" and engine.request_count > 0)
        cancelled = client.delete(f"/v1/jobs/{job['id']}")
        assert cancelled.status_code == 200
        assert cancelled.json()["status"] == "cancelled"
        assert any(rid.startswith(job["id"]) for rid in engine.aborted)
        assert wait_job(client, job["id"])["status"] == "cancelled"
        seen = engine.request_count
        result = client.get(f"/v1/jobs/{job['id']}/result")
        assert result.status_code == 409
        assert "cancelled" in result.json()["error"]["message"]
        assert engine.request_count == seen  # nothing more ran

        # A finished job is deleted by DELETE, and is gone afterwards.
        deleted = client.delete(f"/v1/jobs/{job['id']}")
        assert deleted.status_code == 200 and deleted.json()["deleted"] is True
        assert client.get(f"/v1/jobs/{job['id']}").status_code == 404
        assert not (tmp_path / "jobs" / job["id"]).exists()


def test_a_key_sees_and_cancels_only_its_own_jobs(tmp_path: Path) -> None:
    settings = Settings(
        engine={"kind": "fake"}, jobs={"dir": tmp_path / "jobs"}, server={"api_keys": ["key-a", "key-b"]}
    )
    a = {"Authorization": "Bearer key-a"}
    b = {"Authorization": "Bearer key-b"}
    with (
        running_server(settings, FakeEngine()) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        assert client.post("/v1/jobs", json={"image_base64": _b64(png(), "image/png")}).status_code == 401
        job = client.post("/v1/jobs", json={"image_base64": _b64(png(), "image/png")}, headers=a).json()
        wait_job(client, job["id"], headers=a)
        for method, path in (
            ("GET", f"/v1/jobs/{job['id']}"),
            ("GET", f"/v1/jobs/{job['id']}/result"),
            ("GET", f"/v1/jobs/{job['id']}/events"),
            ("DELETE", f"/v1/jobs/{job['id']}"),
        ):
            other = client.request(method, path, headers=b)
            assert other.status_code == 404, (method, path, other.text)
            assert other.json()["error"]["code"] == "job_not_found"
        assert client.get("/v1/jobs", headers=b).json()["data"] == []
        assert [j["id"] for j in client.get("/v1/jobs", headers=a).json()["data"]] == [job["id"]]
        assert client.get(f"/v1/jobs/{job['id']}/result", headers=a).status_code == 200


def test_queue_limits_answer_429_with_retry_after(tmp_path: Path) -> None:
    settings = Settings(
        engine={"kind": "fake"},
        jobs={"dir": tmp_path / "jobs", "max_queued_per_key": 1, "max_queued": 2, "concurrency": 1},
        server={"api_keys": ["key-a", "key-b", "key-c"]},
    )
    with (
        running_server(settings, FakeEngine(delay_s=5.0)) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):

        def submit(key: str) -> httpx.Response:
            body = {"image_base64": _b64(png(), "image/png")}
            return client.post("/v1/jobs", json=body, headers={"X-Api-Key": key})

        first = submit("key-a")
        assert first.status_code == 202
        per_key = submit("key-a")
        assert per_key.status_code == 429
        assert per_key.json()["error"]["code"] == "too_many_jobs"
        assert "MAX_QUEUED_PER_KEY" in per_key.json()["error"]["message"]
        assert int(per_key.headers["retry-after"]) >= 1
        assert submit("key-b").status_code == 202
        total = submit("key-c")
        assert total.status_code == 429
        assert "DSOCR_JOBS__MAX_QUEUED" in total.json()["error"]["message"]
        client.delete(f"/v1/jobs/{first.json()['id']}", headers={"X-Api-Key": "key-a"})
        assert submit("key-c").status_code == 202


def test_a_job_over_the_disk_quota_is_refused_with_507_and_nothing_is_stored(tmp_path: Path) -> None:
    document = pdf(2)
    with (
        running_server(_settings(tmp_path, max_disk_bytes=len(document) - 1), FakeEngine()) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        response = client.post("/v1/jobs", files={"file": ("a.pdf", document, "application/pdf")})
        assert response.status_code == 507
        assert response.json()["error"]["code"] == "storage_full"
        assert "DSOCR_JOBS__MAX_DISK_BYTES" in response.json()["error"]["message"]
        assert [p.name for p in (tmp_path / "jobs").iterdir() if p.is_dir()] == []


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"image_base64": "aGVsbG8=", "stream": True}, 400, "stream"),
        ({"image_base64": "aGVsbG8=", "mode": "huge"}, 400, "mode"),
        ({"image_base64": "aGVsbG8=", "outputs": ["nope"]}, 422, "outputs.0"),
        ({"image_base64": "aGVsbG8=", "colour": "red"}, 422, "colour"),
        ({"image_base64": "aGVsbG8=", "callback_url": "http://127.0.0.1:9/hook"}, 422, "callback_url"),
        ({"image_base64": "aGVsbG8=", "callback_url": "https://10.1.2.3/hook"}, 422, "callback_url"),
        ({}, 400, "file"),
    ],
)
def test_bad_job_requests_are_refused_at_once_naming_the_field(
    client: httpx.Client, body: dict[str, Any], status: int, field: str
) -> None:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["field"] == field
    assert client.get("/v1/jobs").json()["data"] == []


def test_an_unreadable_input_fails_the_job_with_the_reason(client: httpx.Client) -> None:
    job = client.post("/v1/jobs", files={"file": ("a.pdf", b"%PDF-1.7 broken", "application/pdf")}).json()
    done = wait_job(client, job["id"])
    assert done["status"] == "failed"
    assert done["error"]["code"] in ("undecodable_input", "unsupported_media_type")
    result = client.get(f"/v1/jobs/{job['id']}/result")
    assert result.status_code == 409
    assert done["error"]["message"] in result.json()["error"]["message"]


def test_finished_jobs_expire_after_their_ttl(tmp_path: Path) -> None:
    with (
        running_server(_settings(tmp_path, ttl_s=0.5), FakeEngine()) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        job = client.post("/v1/jobs", json={"image_base64": _b64(png(), "image/png")}).json()
        wait_job(client, job["id"])
        folder = tmp_path / "jobs" / job["id"]
        # The sweep deletes the row, then the folder: wait for both rather than racing between them.
        answer = httpx.Response(200)
        for _ in range(200):
            answer = client.get(f"/v1/jobs/{job['id']}")
            if answer.status_code == 404 and not folder.exists():
                break
            time.sleep(0.05)
        assert answer.status_code == 404
        assert not folder.exists()


def test_a_finished_job_calls_back_signed_and_the_receiver_verifies_it(tmp_path: Path) -> None:
    secret = "whsec_" + base64.b64encode(b"the receiving service's shared key").decode()
    settings = Settings(
        engine={"kind": "fake"},
        jobs={"dir": tmp_path / "jobs", "webhook_secret": secret},
        # The operator trusts its internal receiver, as it would an internal image store.
        fetch={"allow_http": True, "allow_networks": ["127.0.0.0/8"]},
    )
    with (
        serving() as receiver,
        running_server(settings, FakeEngine()) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        body = {"image_base64": _b64(png(), "image/png"), "callback_url": receiver.url("/dsocr/done")}
        job = client.post("/v1/jobs", json=body).json()
        done = wait_job(client, job["id"], until=lambda j: (j["callback"] or {}).get("delivery") is not None)
        assert done["callback"]["delivery"]["delivered"] is True
        [request] = receiver.requests
        assert request.path == "/dsocr/done"
        event = Webhook(secret).verify(request.body, request.headers)
        assert event["type"] == "job.succeeded"
        assert event["data"]["id"] == job["id"]
        assert event["data"]["status"] == "succeeded"
        with pytest.raises(WebhookVerificationError):
            Webhook(secret).verify(request.body.replace(b"succeeded", b"failed"), request.headers)


def test_an_unusable_jobs_folder_leaves_the_server_up_and_says_why(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the jobs folder should be")
    with (
        running_server(
            Settings(engine={"kind": "fake"}, jobs={"dir": blocker / "jobs"}), FakeEngine()
        ) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        assert client.get("/ready").status_code == 200
        response = client.post("/v1/jobs", json={"image_base64": _b64(png(), "image/png")})
        assert response.status_code == 503
        assert "DSOCR_JOBS__DIR" in response.json()["error"]["message"]
        assert client.post("/v1/ocr", json={"image_base64": _b64(png(), "image/png")}).status_code == 200


def test_a_jobs_result_as_a_searchable_pdf_keeps_the_pages_and_carries_their_text(
    client: httpx.Client,
) -> None:
    document = pdf(3)
    job = client.post("/v1/jobs", files={"file": ("scan.pdf", document, "application/pdf")}).json()
    wait_job(client, job["id"])
    body = client.get(f"/v1/jobs/{job['id']}/result").json()
    response = client.get(f"/v1/jobs/{job['id']}/result", params={"format": "pdf"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/pdf"
    assert 'filename="scan.pdf"' in response.headers["content-disposition"]
    out = pdfium.PdfDocument(response.content)
    original = pdfium.PdfDocument(document)
    assert len(out) == len(original) == 3
    for n in range(3):
        assert out[n].get_size() == original[n].get_size()
        words = out[n].get_textpage().get_text_range().split()
        first_block = [w for w in body["pages"][n]["blocks"][0]["text"].split() if w.isalpha()]
        assert first_block
        assert set(first_block) <= set(words)


def test_a_failed_jobs_events_end_with_the_error_envelope(client: httpx.Client) -> None:
    job = client.post("/v1/jobs", files={"file": ("a.pdf", b"%PDF-1.7 broken", "application/pdf")}).json()
    wait_job(client, job["id"])
    lines = client.get(f"/v1/jobs/{job['id']}/events").text.splitlines()
    assert "event: error" in lines
    data = json.loads(lines[lines.index("event: error") + 1].removeprefix("data: "))
    assert data["error"]["code"] in ("undecodable_input", "unsupported_media_type")
    assert data["error"]["request_id"] == job["id"]
    assert data["error"]["type"] == "invalid_request_error"


def test_cancel_leaves_a_finished_job_and_its_result_as_they_are(client: httpx.Client) -> None:
    job = client.post("/v1/jobs", json={"image_base64": _b64(png(), "image/png")}).json()
    wait_job(client, job["id"])
    response = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "succeeded"
    assert client.get(f"/v1/jobs/{job['id']}/result").status_code == 200
    assert client.post("/v1/jobs/no-such-job/cancel").status_code == 404
