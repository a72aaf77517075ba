"""The public surface of ``import dsocr``: light to import, ``__all__`` sorted, complete and importable."""

from __future__ import annotations

import subprocess
import sys
import types

import dsocr

# What a plain `import dsocr` must never pull in: web framework, ML runtimes, cluster, plotting.
HEAVY = ("fastapi", "starlette", "uvicorn", "torch", "vllm", "ray", "rapidocr", "onnxruntime", "matplotlib")


def _modules_loaded_by(code: str) -> set[str]:
    # A fresh interpreter: this test process has imported half the world already.
    # -X importtime lists every module the statement imports, one per stderr line.
    completed = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True
    )
    names = set()
    for line in completed.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


def test_import_dsocr_loads_no_web_framework_ml_runtime_ray_or_plotting() -> None:
    loaded = _modules_loaded_by("import dsocr")
    assert "dsocr" in loaded, "importtime output was not parsed"
    heavy = sorted(name for name in loaded if name.split(".")[0] in HEAVY)
    assert heavy == [], f"import dsocr loaded {heavy}"


def test_all_is_sorted() -> None:
    assert dsocr.__all__ == sorted(dsocr.__all__)


def test_all_is_complete() -> None:
    # Every public name bound in the package (submodules and the __future__ import aside) is exported.
    public = {
        name
        for name, value in vars(dsocr).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType) and name != "annotations"
    }
    assert public | {"__version__"} == set(dsocr.__all__)


def test_every_exported_name_is_importable() -> None:
    namespace: dict[str, object] = {}
    exec("from dsocr import *", namespace)
    for name in dsocr.__all__:
        assert namespace[name] is getattr(dsocr, name), name
    assert isinstance(dsocr.__version__, str) and dsocr.__version__
