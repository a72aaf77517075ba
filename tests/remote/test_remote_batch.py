"""``dsocr batch --server``: the pages run on a real dsocr server on loopback; the output tree,
manifest, summary and resume are those of a local run, also when the server is killed and started
again in the middle of the batch."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from remote_support import (
    BATCH_BOOKKEEPING,
    comparable,
    dsocr,
    fake_server,
    files,
    jobs_of,
    manifest_pages,
    page,
    start_dsocr,
    summary,
    wait_for,
    write_pdf,
)

from dsocr.batch import PAGE_SPLIT
from server_support import Server, dsocr_serve_with_env, free_port

# The run's own figures, which differ between two runs of the same pages.
_TIMES = ("runner", "scan_s", "elapsed_s", "pages_per_s")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with fake_server(tmp_path_factory.mktemp("server")) as running:
        yield running


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """Two PDFs (3 pages, one of them wide; 2 pages), two images, a truncated PNG, a text file."""
    folder = tmp_path / "archive"
    (folder / "scans").mkdir(parents=True)
    write_pdf(folder / "report.pdf", [(420, 595), (595, 420), (420, 595)], "report")
    write_pdf(folder / "scans" / "letter.pdf", [(500, 700), (500, 700)], "letter")
    page("alpha").save(folder / "alpha.png")
    page("beta", (500, 700)).save(folder / "scans" / "beta.jpg", quality=90)
    whole = (folder / "alpha.png").read_bytes()
    (folder / "broken.png").write_bytes(whole[: len(whole) // 3])  # header fine, pixels not
    (folder / "notes.txt").write_text("not an input")
    return folder


def _batch(archive: Path, out: Path, *args: str) -> tuple[int, str]:
    result = dsocr("batch", str(archive), "--out", str(out), "--overlays", *args)
    return result.exit_code, result.stderr


def _same_run(local: Path, remote: Path) -> None:
    """The two output folders hold the same files, manifest rows and counts."""
    local_files = files(local, skip=BATCH_BOOKKEEPING)
    remote_files = files(remote, skip=BATCH_BOOKKEEPING)
    assert sorted(remote_files) == sorted(local_files)
    for name, data in local_files.items():
        if name.endswith(".json"):
            assert comparable(json.loads(remote_files[name])) == comparable(json.loads(data)), name
        else:
            assert remote_files[name] == data, name
    assert manifest_pages(remote) == manifest_pages(local)
    local_summary = {k: v for k, v in summary(local).items() if k not in _TIMES}
    assert {k: v for k, v in summary(remote).items() if k not in _TIMES} == local_summary


def test_a_batch_on_the_server_writes_what_a_local_batch_writes(
    server: Server, archive: Path, tmp_path: Path
) -> None:
    # (The searchable PDF, compared in the ocr tests, carries a random id.)
    formats = ("--formats", "txt,json,hocr,alto,html")
    local_code, local_err = _batch(archive, tmp_path / "local", "--engine", "fake", *formats)
    remote_code, remote_err = _batch(archive, tmp_path / "remote", "--server", server.url, *formats)
    # The truncated PNG fails its page in both, the rest is written: exit 4.
    assert local_code == 4, local_err
    assert remote_code == 4, remote_err
    _same_run(tmp_path / "local", tmp_path / "remote")
    report = summary(tmp_path / "remote")
    assert report["runner"] == "remote" and report["engine"] == "fake"
    assert report["pages_done"] == 7 and report["pages_failed"] == 1
    assert report["failures"] == {"undecodable_input": 1}
    broken = json.loads((tmp_path / "remote" / "broken" / "pages" / "1.json").read_text())
    assert broken["error"]["type"] == "undecodable_input"
    assert "failed: " in remote_err and "broken.png" in remote_err
    markdown = (tmp_path / "remote" / "report" / "report.md").read_text()
    assert markdown.count(PAGE_SPLIT) == 2
    assert (tmp_path / "remote" / "report" / "images" / "1_0.png").is_file()
    assert (tmp_path / "remote" / "report" / "overlays" / "2.png").is_file()


def test_a_server_without_jobs_gets_each_pdf_in_one_request(archive: Path, tmp_path: Path) -> None:
    assert _batch(archive, tmp_path / "local", "--engine", "fake")[0] == 4
    with fake_server(tmp_path, jobs={"enabled": False}) as no_jobs:
        assert _batch(archive, tmp_path / "remote", "--server", no_jobs.url)[0] == 4
    _same_run(tmp_path / "local", tmp_path / "remote")


def test_a_batch_on_the_server_resumes_as_a_local_batch_does(
    server: Server, archive: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert _batch(archive, out, "--server", server.url)[0] == 4
    first = files(out, skip=BATCH_BOOKKEEPING)
    # Again: finished pages are skipped, the failed one is tried again.
    assert _batch(archive, out, "--server", server.url)[0] == 4
    again = summary(out)
    assert (again["pages_done"], again["pages_skipped"], again["pages_failed"]) == (0, 7, 1)
    # A page whose file was deleted is done again, and only it.
    (out / "report" / "pages" / "2.json").unlink()
    assert _batch(archive, out, "--server", server.url)[0] == 4
    redo = summary(out)
    assert (redo["pages_done"], redo["pages_skipped"]) == (1, 6)
    assert files(out, skip=BATCH_BOOKKEEPING) == first
    attempts = {(name, number): tries for name, number, _, _, tries in manifest_pages(out)}
    assert attempts[("report", 2)] == 2 and attempts[("report", 1)] == 1
    assert attempts[("broken", 1)] == 3


@pytest.mark.parametrize(
    "same_storage",
    [
        pytest.param(True, id="same-jobs-folder"),
        # The server comes back with other storage: it does not know the jobs (404), and the
        # client submits them again for the pages it has not received.
        pytest.param(False, id="jobs-lost"),
    ],
)
def test_a_server_killed_and_started_again_in_the_middle_of_a_batch(
    tmp_path: Path, same_storage: bool
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_pdf(inputs / "first.pdf", [(300, 400)] * 8, "first")
    write_pdf(inputs / "second.pdf", [(320, 400)] * 7, "second")
    page("photo", (400, 300)).save(inputs / "photo.png")
    env = {
        "DSOCR_ENGINE__KIND": "fake",
        "DSOCR_ENGINE__FAKE__DELAY_S": "0.3",
        "DSOCR_JOBS__DIR": str(tmp_path / "jobs"),
        "DSOCR_JOBS__WINDOW": "1",
    }
    port = free_port()
    out = tmp_path / "out"
    with dsocr_serve_with_env(env, log=tmp_path / "first.log", port=port) as (base, first):
        batch = start_dsocr(
            "batch", str(inputs), "--out", str(out), "--server", base, log=tmp_path / "batch.log"
        )
        try:
            wait_for(
                lambda: sum(job["progress"]["pages_done"] for job in jobs_of(base)) >= 3,
                what="pages done on the first server",
            )
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=60)
            later = env if same_storage else {**env, "DSOCR_JOBS__DIR": str(tmp_path / "other-jobs")}
            with dsocr_serve_with_env(later, log=tmp_path / "second.log", port=port):
                assert batch.wait(timeout=180) == 0, (tmp_path / "batch.log").read_text()
        finally:
            if batch.poll() is None:
                batch.kill()
                batch.wait()
    assert summary(out)["pages_done"] == 16
    assert summary(out)["pages_failed"] == 0
    second = (tmp_path / "second.log").read_text()
    # The client followed its jobs on the new server: the same jobs, or new ones where it lost them.
    assert "/events HTTP" in second
    assert ("POST /v1/jobs HTTP" in second) is not same_storage
    # Every page once: done, in one attempt, its files those of an uninterrupted local run.
    assert all(status == "done" and tries == 1 for _, _, status, _, tries in manifest_pages(out))
    local = tmp_path / "local"
    assert dsocr("batch", str(inputs), "--out", str(local), "--engine", "fake").exit_code == 0
    _same_run(local, out)
    assert (out / "first" / "first.md").read_text().count(PAGE_SPLIT) == 7


def test_ctrl_c_cancels_the_jobs_and_the_next_run_finishes_the_rest(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_pdf(inputs / "long.pdf", [(300, 400)] * 30, "long")
    env = {
        "DSOCR_ENGINE__KIND": "fake",
        "DSOCR_ENGINE__FAKE__DELAY_S": "0.2",
        "DSOCR_JOBS__DIR": str(tmp_path / "jobs"),
        "DSOCR_JOBS__WINDOW": "1",
    }
    out = tmp_path / "out"
    with dsocr_serve_with_env(env, log=tmp_path / "server.log") as (base, _):
        batch = start_dsocr("batch", str(inputs), "--out", str(out), "--server", base, log=tmp_path / "b.log")
        try:
            wait_for(lambda: (out / "long" / "pages" / "2.json").exists(), what="two pages written")
            batch.send_signal(signal.SIGINT)
            assert batch.wait(timeout=30) == 130
        finally:
            if batch.poll() is None:
                batch.kill()
                batch.wait()
        assert "run the same command again to resume" in (tmp_path / "b.log").read_text()
        wait_for(lambda: [job["status"] for job in jobs_of(base)] == ["cancelled"], what="the cancel")
        kept = [number for _, number, status, _, _ in manifest_pages(out) if status == "done"]
        assert 2 <= len(kept) < 30
        resumed = dsocr("batch", str(inputs), "--out", str(out), "--server", base)
        assert resumed.exit_code == 0, resumed.stderr
    report = summary(out)
    assert report["pages_skipped"] == len(kept)
    assert report["pages_done"] == 30 - len(kept)
    assert (out / "long" / "long.md").read_text().count(PAGE_SPLIT) == 29


def test_a_refused_key_ends_the_run_as_a_usage_error(archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with fake_server(tmp_path, server={"api_keys": ["s3cret"]}) as keyed:
        refused = dsocr("batch", str(archive), "--out", str(out), "--server", keyed.url)
        assert refused.exit_code == 2
        assert "DSOCR_REMOTE__API_KEY" in refused.stderr
        assert not list(out.glob("*/pages/*.json"))
        accepted = dsocr(
            "batch", str(archive), "--out", str(out),
            env={"DSOCR_REMOTE__URL": keyed.url, "DSOCR_REMOTE__API_KEY": "s3cret"},
        )  # fmt: skip
    assert accepted.exit_code == 4, accepted.stderr  # the truncated PNG
    assert summary(out)["pages_done"] == 7


def test_a_server_that_cannot_be_reached_ends_the_run_as_an_engine_failure(
    archive: Path, tmp_path: Path
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    result = dsocr(
        "batch", str(archive), "--out", str(tmp_path / "out"), "--server", nobody,
        env={"DSOCR_REMOTE__RETRY_S": "1"},
    )  # fmt: skip
    assert result.exit_code == 3
    assert f"cannot reach the dsocr server at {nobody}" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--server", "http://127.0.0.1:9", "--engine", "fake"), "give one of them"),
        (("--server", "http://127.0.0.1:9", "--ray"), "give one of them"),
        (("--server", "http://127.0.0.1:9", "--dpi", "200"), "DSOCR_LIMITS__PDF_DPI"),
        (("--engine", "fake", "--concurrency", "2"), "--concurrency is for --server"),
    ],
)
def test_options_that_do_not_go_together_are_usage_errors(
    archive: Path, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    result = dsocr("batch", str(archive), "--out", str(tmp_path / "out"), *args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert not (tmp_path / "out").exists()
