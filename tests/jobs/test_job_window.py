"""How many pages of a job the engine holds at once."""

from __future__ import annotations

from dsocr.engine.base import EngineInfo
from dsocr.jobs.manager import job_window, page_ranges
from dsocr.pipeline import DOCUMENT_WINDOW
from dsocr.settings import JobSettings


def _engine(batch: int | None) -> EngineInfo:
    return EngineInfo(name="x", model_id="m", version="1", batch_size=batch)


def test_running_jobs_together_take_at_most_half_the_engines_batch() -> None:
    assert job_window(JobSettings(concurrency=2), _engine(256)) == 64
    assert job_window(JobSettings(concurrency=1), _engine(256)) == 128
    assert job_window(JobSettings(concurrency=2), _engine(8)) == 2
    # An engine that reads one page at a time still moves a job on.
    assert job_window(JobSettings(concurrency=2), _engine(1)) == 1


def test_an_engine_without_a_fixed_batch_gets_a_documents_window_and_the_setting_wins() -> None:
    assert job_window(JobSettings(), _engine(None)) == DOCUMENT_WINDOW
    assert job_window(JobSettings(window=5), _engine(256)) == 5


def test_the_pages_left_to_do_are_written_as_a_page_selection() -> None:
    assert page_ranges([7, 1, 2, 3, 5, 9, 10]) == "1-3,5,7,9-10"
    assert page_ranges([4]) == "4"
