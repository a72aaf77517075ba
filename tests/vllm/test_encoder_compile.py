"""dsocr.engine.encoder_compile: compiled for the warmed view sizes, eager otherwise, and never a
compile while serving. A counting torch.compile backend sees every graph dynamo hands over."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")

from dsocr.engine.encoder_compile import CompiledBySide  # noqa: E402


class Encoder(torch.nn.Module):
    """Small stand-in for SAM: a patch conv, a norm over channels, GELU, a strided conv."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = torch.nn.Conv2d(3, 8, kernel_size=4, stride=4)
        self.norm = torch.nn.LayerNorm(8)
        self.neck = torch.nn.Conv2d(8, 4, kernel_size=3, stride=2, padding=1)

    def forward(self, x: Any) -> Any:
        x = self.patch(x).permute(0, 2, 3, 1)
        x = torch.nn.functional.gelu(self.norm(x)).permute(0, 3, 1, 2)
        return self.neck(x)


class CountingBackend:
    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, graph: Any, example_inputs: Any) -> Any:
        self.graphs += 1
        return graph.forward


@pytest.fixture
def encoder() -> Any:
    torch.manual_seed(0)
    torch._dynamo.reset()
    return Encoder().eval()


def pages(batch: int, side: int, dtype: Any = None) -> tuple[Any]:
    return (torch.randn(batch, 3, side, side, dtype=dtype or torch.float32),)


def test_warmed_sides_serve_every_batch_size_without_compiling_again(encoder: Any) -> None:
    backend = CountingBackend()
    compiled = CompiledBySide(encoder, backend=backend)
    with torch.inference_mode():
        report = compiled.warm([(64, 6), (32, 3)], pages)
        assert report.sides == [64, 32]
        assert report.batches == {64: [1, 2, 6], 32: [1, 2, 3]}
        warmed = backend.graphs
        assert warmed >= 2  # at least one graph per side
        for side in (64, 32):
            for batch in (1, 2, 3, 5, 6):
                (x,) = pages(batch, side)
                assert torch.allclose(compiled(x), encoder(x), atol=1e-6)
    assert backend.graphs == warmed


def test_a_side_not_warmed_runs_eager(encoder: Any) -> None:
    backend = CountingBackend()
    compiled = CompiledBySide(encoder, backend=backend)
    with torch.inference_mode():
        compiled.warm([(64, 2)], pages)
        warmed = backend.graphs
        (x,) = pages(3, 48)
        assert torch.equal(compiled(x), encoder(x))
    assert backend.graphs == warmed


def test_an_input_the_graphs_do_not_cover_runs_eager_instead_of_compiling(encoder: Any) -> None:
    backend = CountingBackend()
    compiled = CompiledBySide(encoder, backend=backend)
    with torch.inference_mode():
        compiled.warm([(32, 2)], pages)
        warmed = backend.graphs
        # A transposed (non-contiguous) batch fails the graphs' stride guards: serving runs it
        # eager rather than compile while a request waits.
        (x,) = pages(3, 32)
        flipped = x.transpose(2, 3)
        assert not flipped.is_contiguous()
        assert torch.allclose(compiled(flipped), encoder(flipped), atol=1e-6)
    assert backend.graphs == warmed


def test_nothing_compiles_before_warm(encoder: Any) -> None:
    backend = CountingBackend()
    compiled = CompiledBySide(encoder, backend=backend)
    with torch.inference_mode():
        (x,) = pages(2, 32)
        assert torch.equal(compiled(x), encoder(x))
    assert backend.graphs == 0 and compiled.sides == frozenset()
