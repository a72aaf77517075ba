"""The tuned fused-MoE configs that dsocr ships for vLLM (VLLM_TUNED_CONFIG_FOLDER)."""

import json
import re
from importlib import resources
from typing import Any

FIELDS = {"BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps", "num_stages"}
# vLLM 0.26.0 get_config_file_name for bf16 weights: no dtype suffix.
NAME = re.compile(r"E=\d+,N=\d+,device_name=[A-Za-z0-9_]+\.json")


def _configs() -> list[tuple[str, dict[str, Any]]]:
    folder = resources.files("dsocr") / "data" / "fused_moe"
    return [(f.name, json.loads(f.read_text())) for f in folder.iterdir() if f.name.endswith(".json")]


def test_h100_and_h200_configs_for_deepseek_ocr_moe_are_shipped_under_the_names_vllm_looks_for() -> None:
    names = [name for name, _ in _configs()]
    # The exact names vLLM 0.26.0 looks for on these GPUs (its "Config file not found at …" log
    # line names them when they are missing).
    assert "E=64,N=896,device_name=NVIDIA_H100_80GB_HBM3.json" in names
    assert "E=64,N=896,device_name=NVIDIA_H200.json" in names


def test_every_shipped_config_parses_the_way_vllm_reads_it() -> None:
    for name, table in _configs():
        assert NAME.fullmatch(name), name
        table.pop("triton_version", None)  # vLLM drops this key too
        by_batch = {int(k): v for k, v in table.items()}
        assert 1 in by_batch and max(by_batch) >= 4096, name
        for cfg in by_batch.values():
            assert set(cfg) == FIELDS, (name, cfg)
            for field in ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K"):
                value = cfg[field]
                assert isinstance(value, int) and value >= 16 and value & (value - 1) == 0
