# ruff: noqa  # a standalone helper, kept as first written (not linted)
"""Make PyPI's CUDA-only torchvision wheel importable next to the CPU torch wheel.

PyPI's torchvision (e.g. 0.28.0, pinned to torch==2.13.0) ships a _C.so linked
against libtorch_cuda.so / libc10_cuda.so. With torch==2.13.0+cpu that library
fails to load (silently), and then `import torchvision` dies in
torchvision/_meta_registrations.py with
    RuntimeError: operator torchvision::nms does not exist
because it registers fake kernels for torchvision::nms / ::qnms unconditionally.

This module installs a meta-path hook that, just before torchvision is first
imported, defines those two operator schemas (no kernels). torchvision then
imports; its pure-Python parts (transforms, transforms.v2, io of PIL images) work,
its compiled ops (nms, roi_align, deform_conv, decode_jpeg...) raise if called.
vLLM's DeepSeek-OCR processor only needs torchvision.transforms (ToTensor,
Normalize, Compose).

Install: copy this file into site-packages and add a one-line .pth file
    import torchvision_cpu_shim
so that every interpreter (vLLM engine-core / API-server subprocesses included)
gets the hook. Cost when torchvision is never imported: one cheap class def.
"""

import importlib.abc
import sys

_LIB = None  # keep the torch.library.Library alive, or the schemas are dropped


def _define_schemas():
    global _LIB
    import torch

    try:
        torch.ops.torchvision.nms  # real ops already loaded (a CPU torchvision)
        return
    except (AttributeError, RuntimeError):
        pass
    lib = torch.library.Library("torchvision", "DEF")
    for name in ("nms", "qnms"):
        try:
            lib.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        except RuntimeError:
            pass
    _LIB = lib


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision":
            sys.meta_path[:] = [f for f in sys.meta_path if f is not self]
            try:
                # import torchvision's own _C first: if it loads, no shim is needed
                _define_schemas_if_needed()
            except Exception:
                pass
        return None  # let the normal finders import torchvision


def _define_schemas_if_needed():
    import importlib.util
    import os

    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec and spec.submodule_search_locations:
        so = os.path.join(list(spec.submodule_search_locations)[0], "_C.so")
        if os.path.exists(so):
            try:
                torch.ops.load_library(so)
                return  # compatible build, nothing to do
            except OSError:
                pass
    _define_schemas()


if not any(isinstance(f, _Finder) for f in sys.meta_path):
    sys.meta_path.insert(0, _Finder())
