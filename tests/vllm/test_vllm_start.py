"""The real engine's start, phase by phase: vLLM's worker calls timed where they run."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("vllm.sampling_params")

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_start_reports_vllms_own_phases_and_ours(engine: Any) -> None:
    progress = engine.start_progress
    assert progress.phase == "ready"
    seconds = progress.seconds()
    # vLLM's worker calls, in the order the engine core makes them, then dsocr's own steps.
    worker_phases = ["loading_weights", "compiling", "allocating_kv_cache", "capturing_graphs"]
    assert [name for name in seconds if name in worker_phases] == worker_phases
    for name in ("importing_vllm", "engine_core", "configuring_engine", "self_test"):
        assert name in seconds, name
    assert all(s >= 0 for s in seconds.values())
    # The phases account for the whole start, from process start to ready.
    assert sum(seconds.values()) == pytest.approx(progress.ready_after, abs=0.05)


async def test_start_says_which_speedups_the_model_runs_with(engine: Any) -> None:
    details = engine.info.details
    name = engine.info.model_id
    # DeepSeek-OCR on dsocr's model class: the batched encoder and n-gram processor; no device
    # views on vLLM's CPU build.
    assert details[f"batched_ngram[{name}]"] == "on"
    assert details[f"batched_encoder[{name}]"] == "on"
    assert details[f"device_views[{name}]"] == "off"
