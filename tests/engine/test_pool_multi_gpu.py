"""Multi-GPU configuration: settings, GPU counting, the factory's replica pool, Ray actor sizing and
NVLink multicast kept off in every process we start. No GPU and no vLLM are needed: vLLM replicas are
built (not started) and their per-GPU pinning is read back; vLLM's own engine arguments come from
``vllm_parallel_args``, which ``VLLMEngine._build`` applies."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from pydantic import ValidationError

from dsocr.batch.ray_pipeline import _actor_engine_settings, _actor_shape
from dsocr.engine import factory
from dsocr.engine.base import EngineRequest
from dsocr.engine.cpu import CpuEngine
from dsocr.engine.factory import create_engine
from dsocr.engine.fake import FakeEngine
from dsocr.engine.gpus import (
    NVLINK_MULTICAST_OFF,
    disable_nvlink_multicast,
    resolve_gpu_count,
    visible_gpu_count,
    vllm_parallel_args,
)
from dsocr.engine.pool import EnginePool
from dsocr.engine.vllm.engine import VLLMEngine
from dsocr.errors import ConfigError
from dsocr.settings import EngineSettings, Settings

# ---- settings ------------------------------------------------------------------------------------


def test_replicas_and_data_parallel_size_read_all_or_a_number_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DSOCR_ENGINE__REPLICAS", "all")
    assert Settings().engine.replicas == "all"
    monkeypatch.setenv("DSOCR_ENGINE__REPLICAS", "4")
    assert Settings().engine.replicas == 4
    monkeypatch.delenv("DSOCR_ENGINE__REPLICAS")
    monkeypatch.setenv("DSOCR_ENGINE__VLLM__DATA_PARALLEL_SIZE", "2")
    assert Settings().engine.vllm.data_parallel_size == 2
    assert (EngineSettings().replicas, EngineSettings().vllm.data_parallel_size) == (1, 1)


@pytest.mark.parametrize("value", [0, -1, "some", 1.5])
def test_a_bad_replica_count_is_refused_naming_the_field(value: object) -> None:
    with pytest.raises(ValidationError, match="replicas"):
        EngineSettings.model_validate({"replicas": value})


def test_replicas_and_data_parallel_together_are_refused() -> None:
    with pytest.raises(
        ValidationError, match="either DSOCR_ENGINE__REPLICAS or DSOCR_ENGINE__VLLM__DATA_PARALLEL_SIZE"
    ):
        EngineSettings(kind="vllm", replicas=2, vllm={"data_parallel_size": 2})


def test_data_parallel_is_refused_for_engines_without_it() -> None:
    with pytest.raises(ValidationError, match="the cpu engine scales with DSOCR_ENGINE__REPLICAS"):
        EngineSettings(kind="cpu", vllm={"data_parallel_size": 2})


# ---- counting GPUs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("visible", "count"),
    [("0,1", 2), ("3", 1), ("", 0), ("-1", 0), ("0,-1,2", 1), ("GPU-8a1c,GPU-77f0", 2)],
)
def test_cuda_visible_devices_decides_the_count(visible: str, count: int) -> None:
    assert visible_gpu_count({"CUDA_VISIBLE_DEVICES": visible}) == count


def fake_nvidia_smi(folder: Path, gpus: int) -> None:
    lines = "\n".join(f"GPU {i}: NVIDIA H200 (UUID: GPU-{i:04d})" for i in range(gpus))
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{lines}\nEOF\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def test_without_cuda_visible_devices_nvidia_smi_is_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_nvidia_smi(tmp_path, 4)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    assert visible_gpu_count({}) == 4
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no nvidia-smi at all
    assert visible_gpu_count({}) == 0


def test_all_resolves_to_the_visible_gpus_and_too_many_is_a_config_error() -> None:
    assert resolve_gpu_count("all", field="engine.replicas", visible=8) == 8
    assert resolve_gpu_count(2, field="engine.replicas", visible=8) == 2
    assert resolve_gpu_count(1, field="engine.replicas", visible=0) == 1  # one engine needs no count
    with pytest.raises(ConfigError, match="no GPU is visible") as none:
        resolve_gpu_count("all", field="engine.replicas", visible=0)
    assert none.value.field == "engine.replicas"
    with pytest.raises(ConfigError, match=r"data_parallel_size=4 but only 2 GPU\(s\)"):
        resolve_gpu_count(4, field="engine.vllm.data_parallel_size", visible=2)


def test_vllm_gets_data_parallel_size_only_above_one_and_device_ids_for_a_pinned_replica() -> None:
    assert vllm_parallel_args(1) == {}
    assert vllm_parallel_args(2) == {"data_parallel_size": 2}
    assert vllm_parallel_args(1, device=3) == {"device_ids": [3]}


# ---- NVLink multicast ----------------------------------------------------------------------------


def test_multicast_switches_are_set_and_an_operator_value_is_kept() -> None:
    env = {"NCCL_NVLS_ENABLE": "0", "NVSHMEM_DISABLE_NVLS": "0"}
    in_force = disable_nvlink_multicast(env)
    assert env["TORCH_SYMM_MEM_DISABLE_MULTICAST"] == "1"
    assert env["NVSHMEM_DISABLE_NVLS"] == "0"  # explicit choice kept
    assert in_force == {k: env[k] for k in NVLINK_MULTICAST_OFF}


def test_processes_started_after_the_vllm_factory_inherit_multicast_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in NVLINK_MULTICAST_OFF:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(factory, "vllm_installed", lambda: True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    create_engine(EngineSettings(kind="vllm"))  # built, not started
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import os; print([os.environ.get(n) for n in {list(NVLINK_MULTICAST_OFF)}])",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert child.stdout.strip() == "['0', '1', '1']"


def test_dsocr_serve_turns_multicast_off_before_starting_uvicorn(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from dsocr.cli import app
    from dsocr.server.app import Server

    for name in NVLINK_MULTICAST_OFF:
        monkeypatch.delenv(name, raising=False)
    seen: dict[str, Any] = {}

    def fake_run(self: Server, sockets: Any = None) -> None:
        seen.update({name: os.environ.get(name) for name in NVLINK_MULTICAST_OFF})
        seen["engine"] = self.config.app.state.dsocr.settings.engine.kind

    monkeypatch.setattr(Server, "run", fake_run)
    result = CliRunner().invoke(app, ["serve", "--engine", "fake"])
    assert result.exit_code == 0, result.output
    assert seen == {**NVLINK_MULTICAST_OFF, "engine": "fake"}


# ---- the factory's replica pool ------------------------------------------------------------------


async def test_fake_replicas_make_a_pool_that_serves() -> None:
    engine = create_engine(EngineSettings(kind="fake", replicas=3))
    assert isinstance(engine, EnginePool)
    assert len(engine.engines) == 3 and all(isinstance(e, FakeEngine) for e in engine.engines)
    await engine.start()
    request = EngineRequest(
        request_id="r", prompt="<image>\nFree OCR.", image=Image.new("RGB", (200, 200), "white")
    )
    output = await engine.generate(request)
    assert output.finish_reason == "stop" and output.text
    assert engine.info.details["replicas"] == "3"
    await engine.close()


def test_one_replica_is_the_plain_engine() -> None:
    assert isinstance(create_engine(EngineSettings(kind="fake")), FakeEngine)


def test_replicas_all_is_refused_for_an_engine_without_gpus() -> None:
    with pytest.raises(ConfigError, match="replicas=all counts GPUs") as caught:
        create_engine(EngineSettings(kind="fake", replicas="all"))
    assert caught.value.field == "engine.replicas"


def test_cpu_replicas_share_the_cores() -> None:
    engine = create_engine(EngineSettings(kind="cpu", replicas=2))
    assert isinstance(engine, EnginePool)
    threads = [int(e.info.details["onnxruntime_threads"]) for e in engine.engines]
    assert all(isinstance(e, CpuEngine) for e in engine.engines)
    assert threads == [max(1, (os.cpu_count() or 1) // 2)] * 2


def test_vllm_replicas_are_pinned_one_per_visible_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(factory, "vllm_installed", lambda: True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")
    engine = create_engine(
        EngineSettings(kind="vllm", replicas="all", vllm={"args": {"enforce_eager": True}})
    )
    assert isinstance(engine, EnginePool)
    assert all(isinstance(e, VLLMEngine) for e in engine.engines)
    pinned = [e._settings.vllm.args for e in engine.engines]  # type: ignore[attr-defined]
    assert pinned == [{"enforce_eager": True, "device_ids": [i]} for i in range(3)]
    # Indices into CUDA_VISIBLE_DEVICES (vLLM composes them), one engine per GPU.


def test_more_vllm_replicas_than_gpus_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(factory, "vllm_installed", lambda: True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(ConfigError, match=r"replicas=2 but only 1 GPU"):
        create_engine(EngineSettings(kind="vllm", replicas=2))


# ---- dsocr batch --ray: one actor per GPU --------------------------------------------------------


class FakeCluster:
    """Stands in for the ``ray`` module where only ``cluster_resources`` is read."""

    def __init__(self, **resources: float) -> None:
        self.resources = resources

    def cluster_resources(self) -> dict[str, float]:
        return dict(self.resources)


@pytest.mark.parametrize("gpus", [1, 2, 4, 8])
def test_ray_runs_one_actor_per_gpu_each_reserving_one_gpu(gpus: int) -> None:
    assert _actor_shape(FakeCluster(GPU=gpus, CPU=16 * gpus), "vllm", None) == (gpus, 1.0, 1.0)


def test_ray_actors_with_data_parallel_engines_reserve_that_many_gpus() -> None:
    assert _actor_shape(FakeCluster(GPU=8, CPU=64), "vllm", None, gpus_per_engine=2) == (4, 1.0, 2.0)
    with pytest.raises(ConfigError, match=r"needs 2 GPU\(s\) per actor; the cluster has 1"):
        _actor_shape(FakeCluster(GPU=1, CPU=8), "vllm", None, gpus_per_engine=2)


def test_ray_without_gpus_refuses_vllm_and_sizes_cpu_actors_by_cores() -> None:
    with pytest.raises(ConfigError, match="the cluster has 0"):
        _actor_shape(FakeCluster(CPU=8), "vllm", None)
    assert _actor_shape(FakeCluster(CPU=8), "cpu", None) == (7, 1.0, 0.0)
    assert _actor_shape(FakeCluster(GPU=2, CPU=8), "vllm", 1) == (1, 1.0, 1.0)  # --ray-actors wins


def test_each_ray_actor_runs_a_single_engine_on_its_own_gpus() -> None:
    actor = _actor_engine_settings(EngineSettings(kind="vllm", replicas="all"))
    assert (actor.replicas, actor.vllm.data_parallel_size) == (1, 1)
    actor = _actor_engine_settings(EngineSettings(kind="vllm", vllm={"data_parallel_size": "all"}))
    assert (actor.replicas, actor.vllm.data_parallel_size) == (1, 1)
    actor = _actor_engine_settings(EngineSettings(kind="vllm", vllm={"data_parallel_size": 2}))
    assert actor.vllm.data_parallel_size == 2
