"""Only dsocr.engine.vllm imports vLLM: the rest of dsocr runs, and is tested, without it.

Read from the source with ``ast`` (nothing is imported), so an import inside a function body or
a branch is found too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import dsocr

PACKAGE = Path(dsocr.__file__).resolve().parent
VLLM_ENGINE = PACKAGE / "engine" / "vllm"


def _is_vllm(module: object) -> bool:
    return isinstance(module, str) and (module == "vllm" or module.startswith("vllm."))


def vllm_import_lines(source: str) -> list[int]:
    """Lines that import vllm: ``import``, ``from … import`` and ``import_module``/``__import__`` calls."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names: list[object] = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module] if node.level == 0 else []  # relative imports stay inside dsocr
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name | ast.Attribute):
            called = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
            first = node.args[0] if node.args else None
            if called not in ("import_module", "__import__") or not isinstance(first, ast.Constant):
                continue
            names = [first.value]
        else:
            continue
        if any(_is_vllm(name) for name in names):
            lines.append(node.lineno)
    return lines


def test_only_the_vllm_engine_package_imports_vllm() -> None:
    outside = [path for path in PACKAGE.rglob("*.py") if not path.is_relative_to(VLLM_ENGINE)]
    assert len(outside) > 50, "the walk found dsocr's modules"
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{line}"
        for path in outside
        for line in vllm_import_lines(path.read_text(encoding="utf-8"))
    ]
    assert found == [], "vllm imported outside dsocr.engine.vllm"


def test_the_vllm_engine_package_is_where_the_imports_are() -> None:
    assert vllm_import_lines((VLLM_ENGINE / "model.py").read_text(encoding="utf-8"))
    assert vllm_import_lines((VLLM_ENGINE / "engine.py").read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    ("source", "count"),
    [
        ("import vllm", 1),
        ("import os, vllm.envs", 1),
        ("from vllm import SamplingParams", 1),
        ("def f():\n    from vllm.platforms import current_platform", 1),
        ("importlib.import_module('vllm.config')", 1),
        ("__import__('vllm')", 1),
        ("import vllmx", 0),
        ("from dsocr.engine.vllm import engine", 0),
        ("from .vllm import model", 0),
        ("importlib.import_module('dsocr.engine.vllm.engine')", 0),
    ],
)
def test_every_form_of_importing_vllm_is_seen(source: str, count: int) -> None:
    assert len(vllm_import_lines(source)) == count
