"""An engine start's phases: the progress record, and vLLM's worker events read back from a file."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import ClassVar

import pytest

from dsocr.engine.startup import StartProgress, process_started_at
from dsocr.engine.vllm import start_events


def test_phases_add_up_in_order_and_the_end_is_recorded(caplog: pytest.LogCaptureFixture) -> None:
    progress = StartProgress(started_at=100.0)
    progress.begin("loading_weights", at=102.0)
    progress.begin("capturing_graphs", at=107.5)
    progress.begin("loading_weights", at=108.0)  # a second model: the phase's time adds up
    with caplog.at_level(logging.INFO, logger="dsocr.engine.start"):
        progress.begin("self_test", at=109.0)
        progress.finish(ok=True)
    seconds = progress.seconds()
    assert list(seconds) == ["process_start", "loading_weights", "capturing_graphs", "self_test"]
    assert seconds["process_start"] == 2.0
    assert seconds["loading_weights"] == 6.5
    assert seconds["capturing_graphs"] == 0.5
    snapshot = progress.snapshot()
    assert snapshot["phase"] == "ready"
    assert snapshot["phase_s"] is None and snapshot["elapsed_s"] is None
    assert snapshot["ready_after_s"] == pytest.approx(progress.ready_after, abs=1e-3)
    # A finished start reads the same on every call (/ready's body with it).
    assert progress.snapshot() == snapshot
    # One log line per finished phase, and one for the whole start.
    assert "start phase loading_weights took 1.00 s" in caplog.text
    assert "engine ready" in caplog.text
    # Nothing changes after the end.
    progress.begin("late")
    assert progress.phase == "ready"
    assert "late" not in progress.seconds()


def test_a_failed_start_keeps_the_phase_it_failed_in() -> None:
    progress = StartProgress()
    progress.begin("loading_weights")
    progress.finish(ok=False)
    assert progress.snapshot()["phase"] == "failed"
    assert "loading_weights" in progress.seconds()


def test_process_start_is_before_now_and_after_boot() -> None:
    import time

    started = process_started_at()
    assert started <= time.time()
    # This test process started well within a day of now.
    assert time.time() - started < 86_400


class _Worker:
    """Stands in for a vLLM worker class: the wrapped calls are looked up by name."""

    calls: ClassVar[list[str]] = []

    def load_model(self) -> None:
        self.calls.append("load_model")

    def compile_or_warm_up_model(self) -> int:
        self.calls.append("compile_or_warm_up_model")
        return 7


class _SubWorker(_Worker):
    def load_model(self) -> None:  # an override calling its base, as vLLM's CPU worker does
        super().load_model()


def test_worker_calls_write_events_that_become_phases(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys
    import types

    module = types.ModuleType("vllm.v1.worker.gpu_worker")
    for cls in (_Worker, _SubWorker):
        cls.__module__ = module.__name__
        setattr(module, cls.__name__, cls)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    start_events.instrument_workers()
    start_events.instrument_workers()  # idempotent: one wrapper each

    worker = _SubWorker()
    worker.load_model()  # not asked for events: nothing written
    path = tmp_path / "events.jsonl"
    monkeypatch.setenv(start_events.ENV, str(path))
    worker.load_model()
    assert worker.compile_or_warm_up_model() == 7
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(e["phase"], e["event"]) for e in lines] == [
        ("loading_weights", "begin"),
        ("loading_weights", "end"),
        ("capturing_graphs", "begin"),
        ("capturing_graphs", "end"),
    ]
    assert {e["pid"] for e in lines} == {os.getpid()}

    progress = StartProgress(started_at=lines[0]["at"] - 1)
    reader = start_events.EventReader(path, progress)
    reader.poll()
    reader.poll()  # read from where it stopped: nothing twice
    assert list(progress.seconds()) == ["process_start", "loading_weights", "engine_core", "capturing_graphs"]
    assert progress.phase == start_events.ENGINE_CORE


def test_a_phase_lasts_until_its_last_worker_is_done_and_partial_lines_wait(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    events = [
        {"phase": "loading_weights", "event": "begin", "at": 10.0, "pid": 1},
        {"phase": "loading_weights", "event": "begin", "at": 10.5, "pid": 2},
        {"phase": "loading_weights", "event": "end", "at": 12.0, "pid": 1},
    ]
    path.write_text("".join(json.dumps(e) + "\n" for e in events) + '{"phase": "loading_wei')
    progress = StartProgress(started_at=9.0)
    reader = start_events.EventReader(path, progress)
    reader.poll()
    assert progress.phase == "loading_weights"  # worker 2 is still loading
    with path.open("a") as f:
        f.write('ghts", "event": "end", "at": 14.0, "pid": 2}\n')
    reader.poll()
    assert progress.phase == start_events.ENGINE_CORE
    assert progress.seconds()["loading_weights"] == 4.0


def _vllm_settings(**vllm: object) -> object:
    from dsocr.settings import EngineSettings

    return EngineSettings.model_validate({"kind": "vllm", "vllm": vllm})


@pytest.fixture
def no_cache_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.delenv(variable, raising=False)


@pytest.mark.usefixtures("no_cache_variables")
def test_cache_dir_holds_every_compile_cache_and_an_operators_variable_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dsocr.engine.vllm.engine import _use_compile_cache

    monkeypatch.setenv("TRITON_CACHE_DIR", "/opt/triton")
    folder = tmp_path / "compile" / "cache"
    _use_compile_cache(_vllm_settings(cache_dir=str(folder)))  # type: ignore[arg-type]
    assert folder.is_dir()  # created
    assert os.environ["VLLM_CACHE_ROOT"] == str(folder / "vllm")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(folder / "inductor")
    assert os.environ["TRITON_CACHE_DIR"] == "/opt/triton"


@pytest.mark.usefixtures("no_cache_variables")
def test_an_unusable_cache_dir_leaves_the_defaults_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from dsocr.engine.vllm.engine import _use_compile_cache

    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    with caplog.at_level(logging.WARNING):
        _use_compile_cache(_vllm_settings(cache_dir=str(blocked / "cache")))  # type: ignore[arg-type]
    assert "VLLM_CACHE_ROOT" not in os.environ
    assert "is not usable" in caplog.text
