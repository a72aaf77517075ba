"""GPUs of this host: how many are visible, how many an engine should use, and the NVLink switches.

Nothing here imports torch or vllm: counting goes through ``CUDA_VISIBLE_DEVICES`` and
``nvidia-smi -L``, so ``dsocr serve`` can size itself before any CUDA context exists.

NVLink multicast (NVLS) stays off on every multi-GPU host we run on: a program that uses it can
put a shared host's GPUs out of service (see the device notes, KINDS.md). NCCL, PyTorch's
symmetric memory and NVSHMEM each have their own switch; ``disable_nvlink_multicast`` sets all
three in this process's environment, so every process started afterwards (vLLM's engine cores,
uvicorn workers, Ray workers) inherits them. An operator's explicit value is kept.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import MutableMapping
from typing import Any, Literal

from dsocr.errors import ConfigError

__all__ = [
    "NVLINK_MULTICAST_OFF",
    "GpuCount",
    "disable_nvlink_multicast",
    "resolve_gpu_count",
    "visible_gpu_count",
    "vllm_parallel_args",
]

GpuCount = int | Literal["all"]

NVLINK_MULTICAST_OFF: dict[str, str] = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}


def disable_nvlink_multicast(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set the three NVLink-multicast switches (``setdefault``); return the values now in force."""
    env = os.environ if environ is None else environ
    for name, value in NVLINK_MULTICAST_OFF.items():
        env.setdefault(name, value)
    return {name: env[name] for name in NVLINK_MULTICAST_OFF}


def visible_gpu_count(environ: MutableMapping[str, str] | None = None) -> int:
    """How many NVIDIA GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` if set, else ``nvidia-smi -L``."""
    env = os.environ if environ is None else environ
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        entries = [e for e in visible.split(",") if e.strip()]
        # CUDA stops at the first invalid entry ("-1" hides everything after it).
        count = 0
        for entry in entries:
            if entry.strip().startswith("-"):
                break
            count += 1
        return count
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    if listed.returncode != 0:
        return 0
    return sum(1 for line in listed.stdout.splitlines() if line.startswith("GPU "))


def resolve_gpu_count(value: GpuCount, *, field: str, visible: int | None = None) -> int:
    """An ``int`` or ``"all"`` setting → a number of GPUs, checked against the GPUs visible here.

    ``"all"`` needs at least one visible GPU; an explicit number larger than what is visible is a
    configuration error (vLLM would otherwise fail minutes later, deep in its start-up).
    """
    seen = visible_gpu_count() if visible is None else visible
    if value == "all":
        if seen < 1:
            raise ConfigError(
                f"{field}=all but no GPU is visible (CUDA_VISIBLE_DEVICES, nvidia-smi -L)", field=field
            )
        return seen
    if value > 1 and value > seen:
        raise ConfigError(
            f"{field}={value} but only {seen} GPU(s) are visible (CUDA_VISIBLE_DEVICES, nvidia-smi -L)",
            field=field,
        )
    return value


def vllm_parallel_args(data_parallel_size: int, *, device: int | None = None) -> dict[str, Any]:
    """The AsyncEngineArgs that put one vLLM engine on its GPUs.

    ``data_parallel_size > 1``: vLLM's own data parallelism, one engine-core process per GPU behind
    one front end that sends each request to the rank with the shortest waiting + running queue.
    ``device``: pin a single-GPU engine to that GPU (an index into the visible GPUs; vLLM's
    ``device_ids``, used by the replica pool). Empty for the plain single-GPU case.
    """
    args: dict[str, Any] = {}
    if data_parallel_size > 1:
        args["data_parallel_size"] = data_parallel_size
    if device is not None:
        args["device_ids"] = [device]
    return args
