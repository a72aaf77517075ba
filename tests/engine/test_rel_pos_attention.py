"""SAM's relative-position attention without a bias tensor, against the dense-bias formula.

The formula below is SAM's (and vLLM's ``RelPosAttention``): scores ``scale·q·k`` plus
``rel_h[q, k_row] + rel_w[q, k_col]`` added as a dense mask. tests/vllm compare the installed
layer with vLLM's own class; these pin the maths on plain torch, in float64 where rounding
cannot hide a wrong index.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from dsocr.engine.vllm.rel_pos_attention import decomposed_rel_pos, rel_pos_attention  # noqa: E402


def dense_bias_attention(q, k, v, rel_rows, rel_cols, height, width, scale):  # type: ignore[no-untyped-def]
    """Reference: the bias as an explicit ``[.., n, n]`` tensor, built index by index."""
    tokens = height * width
    rows = torch.arange(tokens) // width
    cols = torch.arange(tokens) % width
    # bias[q, k] = q · R_rows[row(q), row(k)] + q · R_cols[col(q), col(k)]
    bias = torch.einsum("...qc,qkc->...qk", q, rel_rows[rows][:, rows]) + torch.einsum(
        "...qc,qkc->...qk", q, rel_cols[cols][:, cols]
    )
    scores = scale * q @ k.transpose(-1, -2) + bias
    return scores.softmax(-1) @ v


@pytest.mark.parametrize(
    ("height", "width", "head_dim"),
    [(14, 14, 64), (8, 5, 64), (3, 7, 16), (4, 4, 30)],
    ids=["sam-window", "wide", "tall", "odd-head-dim"],
)
def test_matches_the_dense_bias_formula(height: int, width: int, head_dim: int) -> None:
    g = torch.Generator().manual_seed(height * 100 + width)
    q, k, v = (
        torch.randn(2, 3, height * width, head_dim, generator=g, dtype=torch.float64) for _ in range(3)
    )
    rel_rows = torch.randn(height, height, head_dim, generator=g, dtype=torch.float64)
    rel_cols = torch.randn(width, width, head_dim, generator=g, dtype=torch.float64)
    scale = head_dim**-0.5

    rel_h, rel_w = decomposed_rel_pos(q, rel_rows, rel_cols, height, width)
    out = rel_pos_attention(q, k, v, rel_h, rel_w, scale)

    expected = dense_bias_attention(q, k, v, rel_rows, rel_cols, height, width, scale)
    assert out.shape == expected.shape == v.shape
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_the_bias_changes_the_output() -> None:
    # Guards the reference itself: with the bias dropped the result must differ, so the match
    # above cannot come from a bias that is silently zero.
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 36, 16, generator=g, dtype=torch.float64) for _ in range(3))
    rel = torch.randn(6, 6, 16, generator=g, dtype=torch.float64)
    rel_h, rel_w = decomposed_rel_pos(q, rel, rel, 6, 6)
    with_bias = rel_pos_attention(q, k, v, rel_h, rel_w, 0.25)
    without = F.scaled_dot_product_attention(q, k, v, scale=0.25)
    assert (with_bias - without).abs().max() > 0.1


def test_bfloat16_is_closer_to_exact_than_a_rounded_dense_bias() -> None:
    # In bf16 the dense-mask path rounds rel_h + rel_w to bf16 before the kernel adds it; here the
    # two terms meet in the kernel's float32 accumulator. Both are compared with float64 maths on
    # the same bf16 inputs.
    g = torch.Generator().manual_seed(1)
    height = width = 14
    q, k, v = (torch.randn(2, 4, height * width, 64, generator=g).bfloat16() for _ in range(3))
    rel_rows, rel_cols = ((torch.randn(14, 14, 64, generator=g) * 0.3).bfloat16() for _ in range(2))
    scale = 64**-0.5
    exact = dense_bias_attention(*(t.double() for t in (q, k, v, rel_rows, rel_cols)), height, width, scale)
    rel_h, rel_w = decomposed_rel_pos(q, rel_rows, rel_cols, height, width)
    ours = rel_pos_attention(q, k, v, rel_h, rel_w, scale)
    dense = F.scaled_dot_product_attention(
        q, k, v, attn_mask=(rel_h[..., :, None] + rel_w[..., None, :]).flatten(-2), scale=scale
    )
    assert ours.dtype == torch.bfloat16
    ours_err = (ours.double() - exact).abs().mean()
    dense_err = (dense.double() - exact).abs().mean()
    assert ours_err < dense_err


def test_a_grid_that_does_not_match_the_tokens_is_refused() -> None:
    q = torch.zeros(1, 1, 12, 8)
    with pytest.raises(ValueError, match="12 tokens for a 3×3 grid"):
        rel_pos_attention(q, q, q, torch.zeros(1, 1, 12, 3), torch.zeros(1, 1, 12, 3), 1.0)
