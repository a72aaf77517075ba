"""Real vLLM (vllm-cpu 0.32.0) running DeepSeek-OCR's own code on a tiny model, in this process.

Run with the venv from ``scripts/setup_vllm_cpu.sh``; in any other venv this folder is skipped.
Costs (ref vllm-cpu.md §4): ~15 s to build the engine, well under 1 s per image request with the
test-only vision-tower shrink (support/tiny_vision_patch.py), images ≤ 640×640.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio


def _has_vllm() -> bool:
    # Not find_spec("vllm"): with tests/ on sys.path this folder itself imports as a namespace "vllm".
    try:
        return importlib.util.find_spec("vllm.sampling_params") is not None
    except ImportError:
        return False


# Without vLLM (the main venv) each test module skips itself with importorskip.
if _has_vllm():
    # Must be set before vLLM builds anything (ref vllm-cpu.md §7): 1 GiB of KV cache instead of
    # 90 % of RAM, the engine core in this process, both cores for torch, no hub access.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # AsyncLLM always runs its engine core in a child process: give its worker every core
    # (the default binding reserves one of CI's two cores for the scheduler).
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{(os.cpu_count() or 2) - 1}")

SUPPORT = Path(__file__).parent / "support"

# vLLM and torch warn about their own internals at import and engine start; ours stay errors.
THIRD_PARTY_WARNINGS = [
    "ignore::DeprecationWarning:torch.*",
    "ignore::DeprecationWarning:vllm.*",
    "ignore::FutureWarning:torch.*",
    "ignore::UserWarning:torch.*",
    "ignore::DeprecationWarning:transformers.*",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.vllm)
            item.add_marker(pytest.mark.slow)
            for spec in THIRD_PARTY_WARNINGS:
                item.add_marker(pytest.mark.filterwarnings(spec))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-deepseek-ocr")
    subprocess.run([sys.executable, str(SUPPORT / "make_tiny_deepseek_ocr.py"), str(out)], check=True)
    return out


@pytest.fixture(scope="session")
def tiny_v2_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DeepSeek-OCR 2; the directory's name is what tells dsocr to apply the v2 profile."""
    out = tmp_path_factory.mktemp("tiny-deepseek-ocr2") / "DeepSeek-OCR-2"
    subprocess.run([sys.executable, str(SUPPORT / "make_tiny_deepseek_ocr.py"), str(out), "--v2"], check=True)
    return out


def tiny_settings(model_dir: Path, **vllm_overrides: object) -> object:
    """The tiny model's engine settings; ``vllm_overrides`` replace fields of ``engine.vllm``."""
    from dsocr.settings import EngineSettings

    vllm: dict[str, object] = {
        "load_format": "dummy",
        "max_num_seqs": 4,
        "args": {"enforce_eager": True, "seed": 0},
    }
    vllm.update(vllm_overrides)
    return EngineSettings.model_validate(
        {
            "kind": "vllm",
            "model": str(model_dir),
            "served_model_name": "deepseek-ocr-tiny",
            "max_model_len": 1024,
            "vllm": vllm,
        }
    )


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def engine(tiny_model_dir: Path) -> AsyncIterator[object]:
    """One started engine for the whole session (its loop is the session loop)."""
    sys.path.insert(0, str(SUPPORT))
    import tiny_vision_patch

    tiny_vision_patch.apply()
    from dsocr.engine.vllm.engine import VLLMEngine

    # encoder_probe lets tests run upstream's vision encoder next to ours inside the worker.
    probe = {"enforce_eager": True, "seed": 0, "worker_extension_cls": "encoder_probe.EncoderProbe"}
    eng = VLLMEngine(tiny_settings(tiny_model_dir, args=probe))  # type: ignore[arg-type]
    await eng.start()
    yield eng
    await eng.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def v2_engine(tiny_v2_model_dir: Path) -> AsyncIterator[object]:
    """A started engine on the tiny DeepSeek-OCR 2, served as ``deepseek-ocr-2-tiny`` (per module:
    it is not kept beside the ``dsocr serve`` tests' engines)."""
    sys.path.insert(0, str(SUPPORT))  # spawn hands it to the engine core, which imports tiny_worker
    from dsocr.engine.vllm.engine import VLLMEngine

    # The worker extension brings the vision-tower shrink into the engine core's process.
    args = {"enforce_eager": True, "seed": 0, "worker_extension_cls": "tiny_worker.TinyVisionWorker"}
    # 2048: a 6-tile page is 1121 placeholders, past the v1 tests' 1024.
    settings = tiny_settings(tiny_v2_model_dir, args=args).model_copy(  # type: ignore[attr-defined]
        update={"served_model_name": "deepseek-ocr-2-tiny", "max_model_len": 2048}
    )
    eng = VLLMEngine(settings)
    await eng.start()
    yield eng
    await eng.close()
