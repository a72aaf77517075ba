"""`dsocr batch --ray`: a PDF page over its render budget is a failed page with its reason, and
the run goes on (a local Ray instance)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from batch_support import summary

from dsocr.batch import BatchJob
from dsocr.settings import Settings
from pdf_bomb import pdf_with_pages

ray = pytest.importorskip("ray", reason="the Ray path needs the ray extra (pip install 'dsocr[ray]')")

# Ray 2.60's DataContext warns about its own deprecated defaults while it initialises.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")

ENDLESS = 40  # 2**40 nested draws: hours of pdfium time


def test_ray_run_fails_the_page_over_budget_and_writes_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dsocr.batch.ray_pipeline import run_batch_ray

    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "mixed.pdf").write_bytes(pdf_with_pages(None, ENDLESS, None))
    out = tmp_path / "out"
    settings = Settings(engine={"kind": "fake"}, limits={"render_timeout_s": 2})
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        result: Any = run_batch_ray(BatchJob(inputs=(str(inputs),), out_dir=out, quiet=True), settings)
    finally:
        ray.shutdown()
    assert result.exit_code == 4
    report = summary(out)
    assert (report["pages_done"], report["pages_failed"]) == (2, 1)
    [failed] = report["failed_files"]
    assert (failed["page"], failed["reason"]) == (2, "render_budget_exceeded")
    assert failed["message"] == "page 2 took longer than 2 s to render (DSOCR_LIMITS__RENDER_TIMEOUT_S)"
