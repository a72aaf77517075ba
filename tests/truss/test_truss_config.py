"""truss/config.yaml deploys this package: bundled source, pinned deps, batching-friendly runtime."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
TRUSS_DIR = ROOT / "truss"


def _config() -> dict[str, Any]:
    loaded = yaml.safe_load((TRUSS_DIR / "config.yaml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def test_bundled_package_dir_holds_the_dsocr_package_the_model_imports() -> None:
    dirs = [(TRUSS_DIR / d).resolve() for d in _config()["external_package_dirs"]]
    assert any((d / "dsocr" / "truss_adapter.py").is_file() for d in dirs)
    assert "dsocr.truss_adapter" in (TRUSS_DIR / "model" / "model.py").read_text(encoding="utf-8")


def test_requirements_match_the_vllm_pin_of_pyproject() -> None:
    # The `vllm = ["vllm==X"]` extra (tomllib is 3.11+, the package supports 3.10).
    match = re.search(
        r'^vllm = \["(vllm==[^"]+)"\]', (ROOT / "pyproject.toml").read_text(encoding="utf-8"), re.M
    )
    assert match is not None
    vllm_pin = match.group(1)
    requirements = _config()["requirements"]
    assert vllm_pin in requirements
    unpinned = [r for r in requirements if not any(op in r for op in ("==", ">=", "<"))]
    assert unpinned == []


def test_runtime_lets_requests_batch_and_health_checks_cover_a_slow_start() -> None:
    config = _config()
    assert config["python_version"] == "py311"
    assert config["runtime"]["predict_concurrency"] >= 64
    assert config["runtime"]["health_checks"]["startup_threshold_seconds"] >= 600
    assert config["resources"]["use_gpu"] is True
    assert config["resources"]["accelerator"].startswith("H100")


def test_weights_come_from_the_model_cache_the_engine_is_pointed_at() -> None:
    config = _config()
    (cache,) = config["model_cache"]
    assert cache["repo_id"] == "deepseek-ai/DeepSeek-OCR"
    # A commit id, not a branch: a moving `main` would change the weights under a deployment.
    assert re.fullmatch(r"[0-9a-f]{40}", cache["revision"])
    env = config["environment_variables"]
    assert env["DSOCR_ENGINE__MODEL"] == f"/app/model_cache/{cache['volume_folder']}"
    assert env["DSOCR_ENGINE__REVISION"] == cache["revision"]
    assert env["DSOCR_ENGINE__KIND"] == "vllm"
    assert "hf_access_token" in config["secrets"]
