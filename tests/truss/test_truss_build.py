"""The Truss image installs dsocr as a real package, with the vLLM plugin's entry point.

The build context is made by the installed truss package itself, as ``truss image build-context``
and ``truss push`` make it: the Truss is gathered with its ``external_package_dirs``, then the
Dockerfile and the files it copies are written. Docker is not needed; the Dockerfile's install
step is then run on the gathered package with pip.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from truss.base.truss_config import TrussConfig
from truss.local.local_config_handler import LocalConfigHandler
from truss.truss_handle.truss_handle import TrussHandle

# truss 0.18's file walker uses pathspec's deprecated "gitwildmatch" patterns.
pytestmark = pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")

ROOT = Path(__file__).resolve().parents[2]
TRUSS_DIR = ROOT / "truss"

# Run with `python -S` and only the install target on the path, so that the development install
# of dsocr cannot answer for the package under test.
ENTRY_POINTS = """
import importlib.metadata, json
plugins = importlib.metadata.entry_points(group="vllm.general_plugins")
print(json.dumps({
    "plugins": {ep.name: ep.value for ep in plugins},
    "dsocr_files": str(importlib.metadata.distribution("dsocr").locate_file("dsocr")),
}))
"""


@pytest.fixture(scope="module")
def build_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    work = tmp_path_factory.mktemp("truss-build")
    with pytest.MonkeyPatch.context() as patch:
        # Truss keeps the gathered Truss under ~/.truss; keep it in the test's folder.
        patch.setattr(LocalConfigHandler, "TRUSS_CONFIG_DIR", work / "truss-home")
        build_dir = work / "build-context"
        # `truss image build-context`; it gathers first, as `truss push` does before uploading.
        TrussHandle(TRUSS_DIR).docker_build_setup(build_dir=build_dir)
    yield build_dir


def test_dockerfile_copies_the_package_then_runs_the_configs_install_command(build_context: Path) -> None:
    config = TrussConfig.from_yaml(TRUSS_DIR / "config.yaml")
    (install,) = config.build_commands
    assert '"/packages[vllm]"' in install, "dsocr itself, with the vllm extra"
    lines = (build_context / "Dockerfile").read_text(encoding="utf-8").splitlines()
    copy = lines.index("COPY --chown=root:root ./packages /packages")
    run = next(i for i, line in enumerate(lines) if line.startswith("RUN") and line.endswith(install))
    assert copy < run


def test_the_gathered_package_is_this_repository(build_context: Path) -> None:
    packages = build_context / "packages"
    assert (packages / "pyproject.toml").read_bytes() == (ROOT / "pyproject.toml").read_bytes()
    assert (packages / "README.md").is_file()

    def python_files(root: Path) -> set[str]:
        return {p.relative_to(root).as_posix() for p in root.rglob("*.py") if "__pycache__" not in p.parts}

    assert python_files(packages / "src" / "dsocr") == python_files(ROOT / "src" / "dsocr")
    assert (packages / "src" / "dsocr" / "static" / "index.html").is_file()


def test_installing_the_gathered_package_registers_the_vllm_plugin(
    build_context: Path, tmp_path: Path
) -> None:
    # A copy: an in-tree build writes build/ and *.egg-info next to the sources.
    source = shutil.copytree(build_context / "packages", tmp_path / "packages")
    target = tmp_path / "site"
    # --no-deps and no build isolation: offline and fast; the image's command also installs the
    # dependencies (they are checked against pyproject.toml in test_truss_config.py).
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip, "--target", str(target), str(source)], check=True, timeout=300)
    done = subprocess.run(
        [sys.executable, "-S", "-c", ENTRY_POINTS],
        env={"PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    found = json.loads(done.stdout)
    assert found["plugins"] == {"dsocr_modes": "dsocr.engine.vllm.model:register"}
    assert Path(found["dsocr_files"]).is_relative_to(target)
    assert (target / "bin" / "dsocr").is_file(), "the console script the start command runs"
