"""Engine selection: explicit kinds, ``auto`` on a machine without vLLM or GPU, model resolution."""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path

import pytest

from dsocr.engine import create_engine
from dsocr.engine.cpu import CpuEngine
from dsocr.engine.factory import gpu_visible, resolve_model, select_engine, vllm_installed
from dsocr.engine.fake import FakeEngine
from dsocr.errors import EngineUnavailable
from dsocr.settings import EngineSettings, Settings

VLLM_INSTALLED = vllm_installed()


@pytest.mark.skipif(VLLM_INSTALLED, reason="this machine has vllm installed")
def test_auto_without_vllm_picks_the_cpu_engine_and_says_why() -> None:
    selection = select_engine(EngineSettings(kind="auto"))
    assert selection.kind == "cpu"
    assert "vllm is not installed" in selection.reason
    assert isinstance(create_engine(EngineSettings(kind="auto")), CpuEngine)


def test_auto_with_vllm_but_no_visible_gpu_picks_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    pretend = importlib.machinery.ModuleSpec("vllm", None, origin="/site-packages/vllm/__init__.py")
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: pretend if name == "vllm" else real_find_spec(name, *a)
    )
    assert vllm_installed()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert not gpu_visible()
    selection = select_engine(EngineSettings(kind="auto"))
    assert selection.kind == "cpu" and "no GPU" in selection.reason


@pytest.mark.skipif(VLLM_INSTALLED, reason="this machine has vllm installed")
def test_vllm_requested_but_not_installed_is_unavailable_with_the_fix() -> None:
    with pytest.raises(EngineUnavailable, match=r"vllm is not installed.*dsocr\[vllm\]"):
        create_engine(Settings(engine={"kind": "vllm"}).engine)


def test_fake_is_built_only_when_named_and_takes_its_delay() -> None:
    engine = create_engine(Settings(engine={"kind": "fake", "fake": {"delay_s": 0.25}}).engine)
    assert isinstance(engine, FakeEngine)
    assert engine.info.name == "fake"
    assert select_engine(EngineSettings(kind="fake")).kind == "fake"
    assert select_engine(EngineSettings(kind="auto")).kind != "fake"


def test_cpu_threads_setting_reaches_the_cpu_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSOCR_ENGINE__CPU__THREADS", "3")
    engine = create_engine(Settings(engine={"kind": "cpu"}).engine)
    assert isinstance(engine, CpuEngine)
    assert engine.info.details["onnxruntime_threads"] == "3"
    with pytest.raises(ValueError, match="threads"):
        EngineSettings(cpu={"threads": 0})


def test_explicit_cpu_is_chosen_by_configuration() -> None:
    selection = select_engine(EngineSettings(kind="cpu"))
    assert selection.kind == "cpu" and "configured" in selection.reason


def test_resolve_model_finds_a_local_directory_with_config(tmp_path: Path) -> None:
    assert resolve_model(str(tmp_path)) is None  # a directory without config.json is not a model
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)) == tmp_path
    assert resolve_model(str(tmp_path / "missing")) is None


def test_resolve_model_finds_an_id_in_the_hf_cache_at_a_revision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--deepseek-ai--DeepSeek-OCR"
    commit = "a" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    assert resolve_model("deepseek-ai/DeepSeek-OCR") is None  # snapshot without config.json
    (snapshot / "config.json").write_text("{}")
    assert resolve_model("deepseek-ai/DeepSeek-OCR") == snapshot
    assert resolve_model("deepseek-ai/DeepSeek-OCR", commit) == snapshot
    assert resolve_model("deepseek-ai/DeepSeek-OCR", "v2") is None  # no such ref cached
    assert resolve_model("deepseek-ai/Other") is None
