"""A vision-encoder part run ``torch.compile``d for the view sizes compiled at start, eager otherwise.

SAM's blocks are GEMMs between many small memory-bound ops (layer norms, GELU, window padding
and permutes, the relative-position terms); eager PyTorch launches each one as its own kernel.
Compiled by inductor they fuse: the encoder takes 14.88 instead of 19.68 ms per A4 Gundam page
on an H100, but a whole 256-page pass gained 4 % on average over four pairs (−4 to +11 %, inside
the pass-to-pass spread), and the compile adds 137–147 s to every engine start (bench/README.md,
session 10), so it is opt-in (``VllmSettings.compile_encoder``). Compiling happens once, at
engine start (``warm``), for the view sizes that matter (Gundam's 1024² view and 640² tiles); a
request never waits for a compile: a size that was not warmed runs eager, and a batch shape the
warmed graphs do not cover runs eager too (torch's ``eager_on_recompile`` stance).

One graph per view size for every batch size: the batch dimension is marked dynamic and the
others static, so a new batch size reuses the graph instead of compiling a new one, and the view
size stays a constant the kernels are specialised for. Batch 1 gets its own graph (torch
specialises sizes 0 and 1); warming batch 1, 2 and the largest batch covers the rest.

Pure torch, no vLLM: dsocr.engine.vllm_modes installs it in dsocr's model class.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["CompiledBySide", "WarmReport", "mark_batch_dynamic"]


@dataclass
class WarmReport:
    """What ``CompiledBySide.warm`` compiled: the sides, the batch sizes run, the seconds."""

    sides: list[int] = field(default_factory=list)
    batches: dict[int, list[int]] = field(default_factory=dict)
    seconds: float = 0.0


class CompiledBySide:
    """Calls ``module`` on ``[batch, channels, side, side]`` inputs, compiled for warmed sides.

    ``backend`` is torch.compile's (inductor by default; tests pass a cheap one).
    """

    def __init__(self, module: torch.nn.Module, *, backend: str | Callable[..., Any] = "inductor") -> None:
        self.module = module
        self._compiled = torch.compile(module, backend=backend)
        self.sides: frozenset[int] = frozenset()

    def __call__(self, images: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] not in self.sides:
            return self.module(images, *rest)  # type: ignore[no-any-return]
        mark_batch_dynamic(images, *rest)
        with torch.compiler.set_stance("eager_on_recompile"):
            return self._compiled(images, *rest)  # type: ignore[no-any-return]

    def warm(
        self, shapes: Iterable[tuple[int, int]], make_input: Callable[[int, int], tuple[torch.Tensor, ...]]
    ) -> WarmReport:
        """Compile for each ``(side, largest batch)``: runs batch 1, 2 and the largest batch of
        ``make_input(batch, side)``. Call before serving (it takes minutes the first time on a
        machine; torch's on-disk cache shortens later starts)."""
        report = WarmReport()
        start = time.monotonic()
        for side, largest in shapes:
            batches = sorted({1, min(2, largest), largest})
            for batch in batches:
                inputs = make_input(batch, side)
                mark_batch_dynamic(*inputs)
                self._compiled(*inputs)
            report.sides.append(side)
            report.batches[side] = batches
            self.sides = self.sides | {side}
        report.seconds = time.monotonic() - start
        return report


def mark_batch_dynamic(*tensors: torch.Tensor) -> None:
    """Dim 0 dynamic (one graph for every batch size above 1), every other dim static."""
    for tensor in tensors:
        torch._dynamo.maybe_mark_dynamic(tensor, 0)  # mark_unbacked would also cover batch 1,
        for dim in range(1, tensor.dim()):  # but breaks the stride checks of SAM's neck convs
            torch._dynamo.mark_static(tensor, dim)
