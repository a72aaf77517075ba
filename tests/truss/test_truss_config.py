"""truss/config.yaml, read by the installed truss package's own loader: it runs `dsocr serve`."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from truss.base.truss_config import TrussConfig
from truss.truss_handle.truss_handle import TrussHandle

from dsocr.settings import Settings

if sys.version_info >= (3, 11):
    import tomllib
else:  # mypy, in the test extra, brings tomli on 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
TRUSS_DIR = ROOT / "truss"
CONFIG = TRUSS_DIR / "config.yaml"


@pytest.fixture(scope="module")
def config() -> TrussConfig:
    return TrussConfig.from_yaml(CONFIG)


def test_truss_loads_and_validates_the_truss_without_deprecated_keys() -> None:
    # What every truss CLI command starts with (truss.load): it validates the config and that the
    # external package directories exist.
    handle = TrussHandle(TRUSS_DIR)
    assert handle.spec.config.docker_server is not None
    raw = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    assert "model_cache" not in raw, "model_cache is deprecated in Truss; weights replaces it"
    assert "weights" in raw


def test_the_replica_runs_dsocr_serve_on_the_configured_port(config: TrussConfig) -> None:
    server = config.docker_server
    assert server is not None and server.start_command is not None
    assert shlex.split(server.start_command)[:2] == ["dsocr", "serve"]
    assert server.server_port != 8080, "Truss's proxy owns 8080"
    # The port is given by the environment (so the command stays the same everywhere).
    assert "--port" not in server.start_command
    assert config.environment_variables["DSOCR_SERVER__PORT"] == str(server.server_port)
    assert (server.predict_endpoint, server.readiness_endpoint, server.liveness_endpoint) == (
        "/predict",
        "/ready",
        "/health",
    )


def test_weights_are_pinned_and_mounted_where_the_engine_reads_them(config: TrussConfig) -> None:
    (source,) = config.weights.sources
    repo, revision = source.source.removeprefix("hf://").split("@")
    assert repo == "deepseek-ai/DeepSeek-OCR"
    # A commit id, not a branch: a moving `main` would change the weights under a deployment.
    assert re.fullmatch(r"[0-9a-f]{40}", revision)
    env = config.environment_variables
    assert env["DSOCR_ENGINE__MODEL"] == source.mount_location
    assert env["DSOCR_ENGINE__REVISION"] == revision
    assert env["DSOCR_ENGINE__KIND"] == "vllm"
    assert source.auth is not None and source.auth.auth_secret_name in config.secrets


def test_the_environment_is_valid_dsocr_settings_batching_as_many_pages_as_truss_lets_in(
    config: TrussConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A misspelt or renamed variable would stop the replica at start-up, not at deploy time.
    for name, value in config.environment_variables.items():
        monkeypatch.setenv(name, str(value))
    settings = Settings()
    assert settings.engine.kind == "vllm"
    assert settings.engine.vllm.max_num_seqs == config.runtime.predict_concurrency


def test_requirements_pin_what_pyproject_requires(config: TrussConfig) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["vllm"]]
    given = [Requirement(r) for r in config.requirements]
    assert {(canonicalize_name(r.name), frozenset(r.extras)) for r in given} == {
        (canonicalize_name(r.name), frozenset(r.extras)) for r in wanted
    }
    assert all(r.specifier for r in given), "every requirement is pinned to a range"
    (vllm,) = (r for r in wanted if r.name == "vllm")
    assert str(vllm) in config.requirements


def test_runtime_lets_requests_batch_and_health_checks_cover_a_slow_start(config: TrussConfig) -> None:
    assert config.python_version == "py311"
    assert config.runtime.predict_concurrency >= 64
    assert config.runtime.health_checks.startup_threshold_seconds is not None
    assert config.runtime.health_checks.startup_threshold_seconds >= 600
    assert config.resources.use_gpu is True
    assert config.resources.accelerator.accelerator is not None
    assert config.resources.accelerator.accelerator.value.startswith("H100")
