"""The Ray Data path on a local Ray instance: the same files and manifest as the local path."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from batch_support import manifest_pages, text_page, tree, write_pdf

from dsocr.batch import BatchJob, run_batch
from dsocr.settings import Settings

ray = pytest.importorskip("ray", reason="the Ray path needs the ray extra (pip install 'dsocr[ray]')")

# Ray 2.60's DataContext warns about its own deprecated defaults while it initialises
# (context.py, __setattr__: use_push_based_shuffle, use_polars, ...); dsocr sets none of them.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    """One small local Ray instance for the module (2 CPUs, no dashboard, no usage reporting)."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def run_both(inputs: Path, tmp_path: Path, settings: Settings, **options: Any) -> tuple[Path, Path]:
    from dsocr.batch.ray_pipeline import run_batch_ray

    local, on_ray = tmp_path / "local", tmp_path / "ray"
    run_batch(BatchJob(inputs=(str(inputs),), out_dir=local, quiet=True, **options), settings)
    run_batch_ray(BatchJob(inputs=(str(inputs),), out_dir=on_ray, quiet=True, **options), settings)
    return local, on_ray


def statuses(out: Path) -> list[tuple[str, int, str, str | None]]:
    return [(r["out_name"], r["page"], r["status"], r["reason"]) for r in manifest_pages(out)]


def test_ray_fake_engine_writes_the_same_files_as_the_local_path(
    local_ray: Any, mixed_folder: Path, tmp_path: Path
) -> None:
    local, on_ray = run_both(mixed_folder, tmp_path, Settings(engine={"kind": "fake"}), overlays=True)
    local_files, ray_files = tree(local), tree(on_ray)
    assert len(local_files) > 20
    assert sorted(ray_files) == sorted(local_files)
    assert ray_files == local_files
    assert statuses(on_ray) == statuses(local)
    assert ("broken", 1, "failed", "undecodable_input") in statuses(on_ray)


@pytest.mark.slow
def test_ray_cpu_engine_writes_the_same_files_as_the_local_path(local_ray: Any, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    text_page("Invoice 2024 total due", (700, 500)).save(inputs / "invoice.png")
    write_pdf(inputs / "memo.pdf", 2, "Memo to staff")
    local, on_ray = run_both(inputs, tmp_path, Settings(engine={"kind": "cpu"}))
    assert statuses(local) == [
        ("invoice", 1, "done", None),
        ("memo", 1, "done", None),
        ("memo", 2, "done", None),
    ]
    assert statuses(on_ray) == statuses(local)
    assert "Memo" in (on_ray / "memo" / "memo.md").read_text()
    assert tree(on_ray) == tree(local)


def test_ray_run_resumes_a_local_run(local_ray: Any, mixed_folder: Path, tmp_path: Path) -> None:
    from dsocr.batch.ray_pipeline import run_batch_ray

    out = tmp_path / "out"
    settings = Settings(engine={"kind": "fake"})
    run_batch(BatchJob(inputs=(str(mixed_folder),), out_dir=out, quiet=True), settings)
    (out / "report" / "pages" / "3.json").unlink()
    resumed = run_batch_ray(BatchJob(inputs=(str(mixed_folder),), out_dir=out, quiet=True), settings)
    assert (resumed.pages_done, resumed.pages_skipped, resumed.pages_failed) == (1, 6, 1)
    assert resumed.failures == {"undecodable_input": 1}
    assert (out / "report" / "pages" / "3.json").is_file()
