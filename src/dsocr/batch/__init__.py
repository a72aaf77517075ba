"""Batch OCR of whole folders of images and PDFs: ``dsocr batch``, resumable, local or on Ray.

* :func:`run_batch` runs on this machine (:mod:`dsocr.batch.runner`);
* :func:`dsocr.batch.ray_pipeline.run_batch_ray` runs the same job as a Ray Data pipeline
  (imported on demand: ``import dsocr.batch`` never imports ray).

Both write the same files (:mod:`dsocr.batch.outputs`) and keep the same SQLite manifest
(:mod:`dsocr.batch.manifest`), so a run can be resumed by either.
"""

from __future__ import annotations

from dsocr.batch.manifest import Manifest
from dsocr.batch.outputs import PAGE_SPLIT
from dsocr.batch.runner import EXIT_PARTIAL, BatchJob, BatchSummary, run_batch

__all__ = ["EXIT_PARTIAL", "PAGE_SPLIT", "BatchJob", "BatchSummary", "Manifest", "run_batch"]
