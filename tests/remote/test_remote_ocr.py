"""``dsocr ocr --server``: the work runs on a real dsocr server on loopback, the files written here
are the files a local run on the same engine writes; errors keep their exit codes."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pypdfium2 as pdfium
import pytest
from remote_support import (
    comparable,
    dsocr,
    fake_server,
    files,
    jobs_of,
    page,
    start_dsocr,
    wait_for,
    write_pdf,
)

from dsocr import cli_ocr
from dsocr.engine.base import EngineOutput, EngineRequest
from dsocr.engine.fake import FakeEngine
from dsocr.errors import EngineError
from dsocr.settings import EngineSettings
from server_support import Server, dsocr_serve_with_env, free_port

FORMATS = ("md", "txt", "json", "hocr", "alto", "html")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with fake_server(tmp_path_factory.mktemp("server")) as running:
        yield running


@pytest.fixture(scope="module")
def documents(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    image = folder / "page.png"
    page("A page", (600, 800)).save(image)
    pdf = write_pdf(folder / "doc.pdf", [(420, 595), (595, 420), (500, 700)], "doc")
    return {"image": image, "pdf": pdf}


def _ocr_both(server: Server, source: Path, folder: Path, *args: str) -> tuple[Path, Path]:
    """``dsocr ocr SOURCE ARGS`` locally (fake engine) and on the server, each in its own folder
    (``{dir}`` in ARGS: that folder), laid out alike; returns both folders."""
    done = []
    for where, engine_args in (("local", ["--engine", "fake"]), ("remote", ["--server", server.url])):
        target = folder / where
        target.mkdir()
        result = dsocr("ocr", str(source), *(arg.format(dir=target) for arg in args), *engine_args, "-q")
        assert result.exit_code == 0, (where, result.stderr)
        done.append(target)
    return done[0], done[1]


@pytest.mark.parametrize("kind", ["image", "pdf"])
@pytest.mark.parametrize("file_format", FORMATS)
def test_the_server_writes_the_files_a_local_run_writes(
    server: Server, documents: dict[str, Path], tmp_path: Path, kind: str, file_format: str
) -> None:
    local, remote = _ocr_both(
        server,
        documents[kind],
        tmp_path,
        "--format",
        file_format,
        "--out",
        f"{{dir}}/result.{file_format}",
        "--crops",
        "{dir}/crops",
        "--viz",
        "{dir}/overlay.png",
    )
    local_files, remote_files = files(local), files(remote)
    assert sorted(remote_files) == sorted(local_files)
    assert local_files["crops/0.png"].startswith(b"\x89PNG")  # the fake page has a figure
    # One overlay per PDF page (NAME-pN.png), one for an image.
    overlays = [name for name in local_files if name.startswith("overlay")]
    assert len(overlays) == (3 if kind == "pdf" else 1)
    for name, data in local_files.items():
        if name.endswith(".json"):
            assert comparable(json.loads(remote_files[name])) == comparable(json.loads(data)), name
        else:
            assert remote_files[name] == data, name


def _pdf_pages(path: Path) -> list[tuple[tuple[float, float], str, bytes]]:
    """Each page's size, text and rendering."""
    document = pdfium.PdfDocument(path)
    try:
        pages = []
        for index in range(len(document)):
            pdf_page = document[index]
            text = pdf_page.get_textpage().get_text_range()
            pixels = np.asarray(pdf_page.render(scale=1).to_pil()).tobytes()
            pages.append((pdf_page.get_size(), text, pixels))
        return pages
    finally:
        document.close()


@pytest.mark.parametrize("kind", ["image", "pdf"])
def test_searchable_and_layout_pdfs_match_the_local_ones(
    server: Server, documents: dict[str, Path], tmp_path: Path, kind: str
) -> None:
    # A searchable PDF keeps the input's own pages (read here); a layout PDF draws the boxes on
    # the pages rendered here. PDF files carry a random id: compared page by page.
    pdfs = {}
    for where, engine_args in (("local", ["--engine", "fake"]), ("remote", ["--server", server.url])):
        searchable, layout = tmp_path / f"{where}.pdf", tmp_path / f"{where}-layout.pdf"
        result = dsocr(
            "ocr", str(documents[kind]), "--out", str(searchable), "--viz", str(layout), *engine_args, "-q"
        )
        assert result.exit_code == 0, result.stderr
        pdfs[where] = (_pdf_pages(searchable), _pdf_pages(layout))
    assert pdfs["remote"] == pdfs["local"]
    searchable_pages = pdfs["remote"][0]
    assert len(searchable_pages) == (3 if kind == "pdf" else 1)
    assert all("A Fake Document for Testing" in text for _, text, _ in searchable_pages)


def test_pages_drawn_here_take_the_size_the_server_read_them_at(
    tmp_path: Path, documents: dict[str, Path]
) -> None:
    # The server renders PDF pages at its own dpi; the layout PDF, drawn here, must put the
    # boxes where the server found them: on pages of the server's size.
    local, remote = tmp_path / "local.pdf", tmp_path / "remote.pdf"
    done = dsocr(
        "ocr", str(documents["pdf"]), "--engine", "fake", "--viz", str(local), "-q",
        env={"DSOCR_LIMITS__PDF_DPI": "100"},
    )  # fmt: skip
    assert done.exit_code == 0, done.stderr
    with fake_server(tmp_path, limits={"pdf_dpi": 100}) as low_dpi:
        done = dsocr("ocr", str(documents["pdf"]), "--server", low_dpi.url, "--viz", str(remote), "-q")
    assert done.exit_code == 0, done.stderr
    local_sizes = [size for size, _, _ in _pdf_pages(local)]
    assert [size for size, _, _ in _pdf_pages(remote)] == local_sizes
    # Here, at the default dpi, the pages come out larger: they were scaled to the server's.
    default = tmp_path / "default.pdf"
    assert dsocr("ocr", str(documents["pdf"]), "--engine", "fake", "--viz", str(default), "-q").exit_code == 0
    assert [size for size, _, _ in _pdf_pages(default)] != local_sizes


def test_markdown_on_stdout_is_the_local_markdown(server: Server, documents: dict[str, Path]) -> None:
    local = dsocr("ocr", str(documents["pdf"]), "--engine", "fake", "--pages", "2-3")
    remote = dsocr("ocr", str(documents["pdf"]), "--server", server.url, "--pages", "2-3")
    assert local.exit_code == remote.exit_code == 0, remote.stderr
    assert remote.stdout_bytes == local.stdout_bytes
    assert remote.stdout.count("A Fake Document for Testing") == 2


def test_a_server_without_jobs_reads_the_pdf_in_one_request(
    tmp_path: Path, documents: dict[str, Path]
) -> None:
    local = dsocr("ocr", str(documents["pdf"]), "--engine", "fake", "--format", "json")
    with fake_server(tmp_path, jobs={"enabled": False}) as no_jobs:
        remote = dsocr("ocr", str(documents["pdf"]), "--server", no_jobs.url, "--format", "json")
    assert remote.exit_code == local.exit_code == 0, remote.stderr
    assert comparable(json.loads(remote.stdout)) == comparable(json.loads(local.stdout))


def test_the_server_and_key_can_come_from_the_environment(tmp_path: Path, documents: dict[str, Path]) -> None:
    with fake_server(tmp_path, server={"api_keys": ["s3cret"]}) as keyed:
        refused = dsocr("ocr", str(documents["image"]), env={"DSOCR_REMOTE__URL": keyed.url})
        assert refused.exit_code == 2
        assert "DSOCR_REMOTE__API_KEY" in refused.stderr
        wrong = dsocr("ocr", str(documents["image"]), "--server", keyed.url, "--api-key", "nope")
        assert wrong.exit_code == 2
        by_env = dsocr(
            "ocr",
            str(documents["image"]),
            env={"DSOCR_REMOTE__URL": keyed.url, "DSOCR_REMOTE__API_KEY": "s3cret"},
        )
        assert by_env.exit_code == 0, by_env.stderr
        assert by_env.stdout.startswith("# A Fake Document for Testing")
        by_flag = dsocr("ocr", str(documents["pdf"]), "--server", keyed.url, "--api-key", "s3cret")
        assert by_flag.exit_code == 0, by_flag.stderr
        assert "visible to other users" in by_flag.stderr


def test_errors_keep_their_exit_codes(server: Server, documents: dict[str, Path], tmp_path: Path) -> None:
    bad_preset = dsocr("ocr", str(documents["pdf"]), "--server", server.url, "--preset", "bogus")
    assert bad_preset.exit_code == 2
    assert "unknown prompt preset 'bogus'" in bad_preset.stderr
    past_the_end = dsocr("ocr", str(documents["pdf"]), "--server", server.url, "--pages", "9")
    assert past_the_end.exit_code == 2
    assert "page 9 is past the end" in past_the_end.stderr
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    refused = dsocr("ocr", str(junk), "--server", server.url)
    assert refused.exit_code == 2
    both = dsocr("ocr", str(documents["image"]), "--server", server.url, "--engine", "fake")
    assert both.exit_code == 2
    assert "give one of them" in both.stderr


def test_a_server_that_cannot_be_reached_is_an_engine_failure(documents: dict[str, Path]) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    result = dsocr("ocr", str(documents["pdf"]), "--server", nobody, env={"DSOCR_REMOTE__RETRY_S": "1"})
    assert result.exit_code == 3
    assert f"cannot reach the dsocr server at {nobody}" in result.stderr
    assert "DSOCR_REMOTE__RETRY_S" in result.stderr


class _FailsOnWidePages(FakeEngine):
    """Fails every page wider than it is tall (a per-page engine failure)."""

    async def generate(self, request: EngineRequest) -> EngineOutput:
        assert request.image is not None
        if request.image.width > request.image.height:
            raise EngineError("the engine failed on this page")
        return await super().generate(request)


def test_failed_pages_are_reported_as_locally(
    tmp_path: Path, documents: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_engine(settings: EngineSettings) -> FakeEngine:
        return _FailsOnWidePages()

    monkeypatch.setattr(cli_ocr, "create_engine", failing_engine)
    local = dsocr("ocr", str(documents["pdf"]), "--engine", "fake", "--format", "json")
    with fake_server(tmp_path, _FailsOnWidePages()) as failing:
        remote = dsocr("ocr", str(documents["pdf"]), "--server", failing.url, "--format", "json")
    assert remote.exit_code == local.exit_code == 4
    assert comparable(json.loads(remote.stdout)) == comparable(json.loads(local.stdout))
    assert json.loads(remote.stdout)["failed_pages"] == [2]
    assert "error: page 2: the engine failed on this page" in remote.stderr
    assert "1 of 3 page(s) failed" in remote.stderr


def test_an_image_the_engine_fails_on_is_an_engine_failure(
    tmp_path: Path, documents: dict[str, Path]
) -> None:
    with fake_server(tmp_path, FakeEngine(fail=EngineError("the GPU caught fire"))) as failing:
        result = dsocr("ocr", str(documents["image"]), "--server", failing.url)
    assert result.exit_code == 3
    assert "the GPU caught fire" in result.stderr


def test_ctrl_c_cancels_the_job_on_the_server(tmp_path: Path) -> None:
    source = write_pdf(tmp_path / "long.pdf", [(300, 400)] * 20, "long")
    env = {
        "DSOCR_ENGINE__KIND": "fake",
        "DSOCR_ENGINE__FAKE__DELAY_S": "0.3",
        "DSOCR_JOBS__DIR": str(tmp_path / "jobs"),
        "DSOCR_JOBS__WINDOW": "1",
    }
    with dsocr_serve_with_env(env, log=tmp_path / "server.log") as (base, _):
        client = start_dsocr("ocr", str(source), "--server", base, log=tmp_path / "client.log")
        try:
            wait_for(
                lambda: any(job["progress"]["pages_done"] >= 1 for job in jobs_of(base)),
                what="a page of the job",
            )
            client.send_signal(signal.SIGINT)
            assert client.wait(timeout=30) == 130
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
        wait_for(lambda: [job["status"] for job in jobs_of(base)] == ["cancelled"], what="the cancel")
        (job,) = jobs_of(base)
        assert job["progress"]["pages_done"] < 20
    assert "interrupted" in (tmp_path / "client.log").read_text()
