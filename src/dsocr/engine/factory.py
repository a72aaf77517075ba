"""Engine selection: ``create_engine(settings.engine)`` picks and builds the configured backend.

``kind`` is ``vllm``, ``cpu``, ``fake`` or ``auto``. ``auto`` picks vLLM only when all of these hold,
otherwise the embedded CPU engine:

* vllm is installed (``importlib.util.find_spec("vllm")`` finds a real package, nothing imported);
* a GPU is visible: ``/dev/nvidia0`` exists or ``nvidia-smi -L`` lists one, and
  ``CUDA_VISIBLE_DEVICES`` does not hide them all (torch is not imported for this);
* the model resolves locally (``resolve_model``): a directory with ``config.json``, or a Hugging
  Face id already in the local HF cache. ``auto`` never downloads weights; set ``kind=vllm`` to let
  vLLM fetch them.

The choice and its reason are logged at start-up. A configured engine that cannot load raises
``EngineUnavailable`` with the reason; nothing ever degrades silently to another engine, and the
fake engine is only used when asked for by name.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dsocr.engine.base import Engine
from dsocr.engine.gpus import disable_nvlink_multicast, resolve_gpu_count
from dsocr.errors import ConfigError, EngineUnavailable
from dsocr.settings import EngineSettings

__all__ = [
    "EngineSelection",
    "create_engine",
    "gpu_visible",
    "resolve_model",
    "select_engine",
    "vllm_installed",
]

logger = logging.getLogger(__name__)

_COMMIT_RE = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True, slots=True)
class EngineSelection:
    """Which engine ``create_engine`` builds for a setting, and why."""

    kind: Literal["vllm", "cpu", "fake"]
    reason: str


def select_engine(settings: EngineSettings) -> EngineSelection:
    """Decide which engine ``settings`` asks for; ``auto`` is resolved as the module docstring says."""
    if settings.kind != "auto":
        return EngineSelection(settings.kind, f"DSOCR_ENGINE__KIND={settings.kind} was configured")
    if not vllm_installed():
        return EngineSelection("cpu", "auto: vllm is not installed (pip install 'dsocr[vllm]' on a GPU host)")
    if not gpu_visible():
        return EngineSelection(
            "cpu", "auto: no GPU is visible (/dev/nvidia0, nvidia-smi -L, CUDA_VISIBLE_DEVICES)"
        )
    location = resolve_model(settings.model, settings.revision)
    if location is None:
        return EngineSelection(
            "cpu",
            f"auto: model {settings.model!r} is neither a local directory with config.json nor in the "
            "local Hugging Face cache (set DSOCR_ENGINE__KIND=vllm to let vLLM download it)",
        )
    return EngineSelection(
        "vllm", f"auto: vllm is installed, a GPU is visible and {settings.model!r} is at {location}"
    )


def create_engine(settings: EngineSettings) -> Engine:
    """Build (not start) the engine ``settings`` selects; raise ``EngineUnavailable`` if it cannot exist.

    ``settings.replicas`` above 1 builds an ``EnginePool`` of that many engines; vLLM replicas are
    each pinned to their own GPU (vLLM's ``device_ids``), CPU replicas share the cores.
    """
    selection = select_engine(settings)
    logger.info("engine: %s (%s)", selection.kind, selection.reason)
    if selection.kind == "vllm":
        # Before any vLLM process exists, so that engine cores and their workers inherit them.
        disable_nvlink_multicast()
    replicas = _replica_count(settings, selection.kind)
    if replicas == 1:
        return _create_one(settings, selection)
    from dsocr.engine.pool import EnginePool

    engines: list[Engine] = []
    for index in range(replicas):
        if selection.kind == "vllm":
            pinned = settings.vllm.model_copy(update={"args": {**settings.vllm.args, "device_ids": [index]}})
            one = settings.model_copy(update={"replicas": 1, "vllm": pinned})
        elif selection.kind == "cpu" and settings.cpu.threads is None:
            # The documented default: N onnxruntime pools each sized to every core would only
            # fight over the cores, so unset threads are the cores split between the replicas.
            shared = settings.cpu.model_copy(update={"threads": max(1, (os.cpu_count() or 1) // replicas)})
            one = settings.model_copy(update={"replicas": 1, "cpu": shared})
        else:
            one = settings.model_copy(update={"replicas": 1})
        engines.append(_create_one(one, selection))
    logger.info("engine: a pool of %d %s replicas, least in-flight first", replicas, selection.kind)
    # vLLM starts one engine after another (see EnginePool); the others start together.
    return EnginePool(engines, start_together=selection.kind != "vllm")


def _replica_count(settings: EngineSettings, kind: str) -> int:
    if kind == "vllm":
        return resolve_gpu_count(settings.replicas, field="engine.replicas")
    if settings.replicas == "all":
        raise ConfigError(
            f"replicas=all counts GPUs, and the {kind} engine uses none: give a number "
            "(DSOCR_ENGINE__REPLICAS)",
            field="engine.replicas",
        )
    return settings.replicas


def _create_one(settings: EngineSettings, selection: EngineSelection) -> Engine:
    if selection.kind == "fake":
        from dsocr.engine.fake import FakeEngine
        from dsocr.modes import served_profile

        # The default model's profile, so that usage counts its vision tokens (v1 or v2).
        profile = served_profile(settings.model, settings.served_model_name)
        return FakeEngine(delay_s=settings.fake.delay_s, max_batch=settings.fake.max_batch, profile=profile)
    if selection.kind == "cpu":
        from dsocr.engine.cpu import CpuEngine, bundled_models_dir

        if bundled_models_dir() is None:
            raise EngineUnavailable(
                "the CPU engine needs rapidocr, which is not installed: pip install 'dsocr[cpu]' "
                f"({selection.reason})"
            )
        return CpuEngine(settings, threads=settings.cpu.threads)
    if not vllm_installed():
        raise EngineUnavailable(
            "the vLLM engine was requested but vllm is not installed: pip install 'dsocr[vllm]' on a GPU "
            "host, or set DSOCR_ENGINE__KIND=cpu for the embedded CPU engine"
        )
    try:
        module = importlib.import_module("dsocr.engine.vllm.engine")
        engine: Engine = module.VLLMEngine(settings)
    except EngineUnavailable:
        raise
    except Exception as exc:
        raise EngineUnavailable(f"the vLLM engine could not be created: {type(exc).__name__}: {exc}") from exc
    return engine


def vllm_installed() -> bool:
    """Whether the vllm package can be imported, checked without importing it.

    A directory named ``vllm`` on ``sys.path`` (``tests/vllm`` under pytest) is found as a namespace
    package with no origin; only a real package counts.
    """
    spec = importlib.util.find_spec("vllm")
    return spec is not None and spec.origin is not None


def gpu_visible() -> bool:
    """Whether an NVIDIA GPU is visible to this process, checked without importing torch."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    if Path("/dev/nvidia0").exists():
        return True
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return listed.returncode == 0 and "GPU" in listed.stdout


def resolve_model(model: str, revision: str | None = None) -> Path | None:
    """The local directory holding ``model``'s ``config.json``, or ``None`` when it is not here.

    ``model`` is a local directory, or a Hugging Face id looked up in the local HF cache
    (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``) at ``revision``
    (a branch, tag or commit; default ``main``). Nothing is downloaded.
    """
    local = Path(model).expanduser()
    if local.is_dir():
        return local if (local / "config.json").is_file() else None
    if model.count("/") != 1 or model.startswith(("/", ".", "~")):
        return None
    repo = _hf_cache_dir() / f"models--{model.replace('/', '--')}"
    ref = revision or "main"
    commit = ref if _COMMIT_RE.fullmatch(ref) else None
    if commit is None:
        ref_file = repo / "refs" / ref
        if not ref_file.is_file():
            return None
        commit = ref_file.read_text().strip()
    snapshot = repo / "snapshots" / commit
    return snapshot if (snapshot / "config.json").is_file() else None


def _hf_cache_dir() -> Path:
    if cache := os.environ.get("HF_HUB_CACHE"):
        return Path(cache).expanduser()
    if home := os.environ.get("HF_HOME"):
        return Path(home).expanduser() / "hub"
    return Path("~/.cache/huggingface/hub").expanduser()
