"""SAM's attention with decomposed relative positions, on PyTorch's fused attention kernels.

DeepSeek-OCR's vision encoder starts with SAM ViT-B, whose attention adds a relative-position
bias to every score: ``bias[q, k] = rel_h[q, k_row] + rel_w[q, k_col]``, where ``rel_h`` is the
query's dot products with the row offsets' embeddings and ``rel_w`` likewise for columns.
Upstream vLLM 0.26 materialises that bias as a dense ``heads × n × n`` tensor per view (400 MB
in bf16 for one 1024² view's global-attention layer) and hands it to ``scaled_dot_product_attention``
as a mask, which rules out the flash kernel.

The same scores come out of an ordinary dot product over longer vectors:

    q' = [q, rel_h / scale, rel_w / scale]        k' = [k, onehot(k_row), onehot(k_col)]
    scale · (q' · k') = scale · (q · k) + rel_h[q, k_row] + rel_w[q, k_col]

so attention with the bias is plain attention over ``q'``/``k'`` (head dim ``d + H + W``: 192 for a
1024² view's 64 × 64 grid, 96 for a 14 × 14 window, padded to a multiple of 8), which PyTorch runs
on its flash kernel without any bias tensor. Flash wants one head dim for q, k and v, so ``v`` is
padded with zeros and the padding cut from the output. Dividing by ``scale`` (2⁻³ for head dim 64)
is exact in any float format, and the one-hot products add exact zeros and copies, so the only
difference from upstream is where the bias is rounded: here it is summed in the kernel's float32
accumulator instead of first in the model dtype.

Pure torch, no vLLM: dsocr.engine.vllm.model installs it in the vision encoder of dsocr's model
class, and tests compare it with upstream's formula.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["decomposed_rel_pos", "rel_pos_attention"]

_ALIGN = 8  # fused attention kernels take head dims in multiples of 8


def decomposed_rel_pos(
    q: torch.Tensor, rel_rows: torch.Tensor, rel_cols: torch.Tensor, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two bias terms for queries ``q`` ``[..., height·width, d]``.

    ``rel_rows`` ``[height, height, d]`` and ``rel_cols`` ``[width, width, d]`` are the embeddings
    of each (query, key) row and column offset (upstream's ``get_rel_pos``). Returns ``rel_h``
    ``[..., height·width, height]`` and ``rel_w`` ``[..., height·width, width]``.
    """
    grid = q.reshape(*q.shape[:-2], height, width, q.shape[-1])
    rel_h = torch.einsum("...hwc,hkc->...hwk", grid, rel_rows).flatten(-3, -2)
    rel_w = torch.einsum("...hwc,wkc->...hwk", grid, rel_cols).flatten(-3, -2)
    return rel_h, rel_w


def rel_pos_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_h: torch.Tensor,
    rel_w: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """``softmax(scale · q kᵀ + rel_h[q, k_row] + rel_w[q, k_col]) v`` without a bias tensor.

    ``q``, ``k``, ``v``: ``[batch, heads, H·W, d]`` over an ``H × W`` grid in row-major order;
    ``rel_h``: ``[batch, heads, H·W, H]``; ``rel_w``: ``[batch, heads, H·W, W]``.
    """
    height, width = rel_h.shape[-1], rel_w.shape[-1]
    tokens, head_dim = q.shape[-2], q.shape[-1]
    if tokens != height * width:
        raise ValueError(f"{tokens} tokens for a {height}×{width} grid")
    extra = height + width
    pad = -(head_dim + extra) % _ALIGN
    index = torch.arange(tokens, device=q.device)
    keys_pos = torch.cat(
        (
            F.one_hot(index // width, height),
            F.one_hot(index % width, width),
            torch.zeros(tokens, pad, dtype=torch.long, device=q.device),
        ),
        dim=-1,
    ).to(k.dtype)
    queries_pos = torch.cat((rel_h, rel_w), dim=-1).to(q.dtype) / scale
    q_wide = torch.cat((q, F.pad(queries_pos, (0, pad))), dim=-1)
    k_wide = torch.cat((k, keys_pos.expand(*k.shape[:-1], -1)), dim=-1)
    v_wide = F.pad(v, (0, extra + pad))
    out = F.scaled_dot_product_attention(q_wide, k_wide, v_wide, scale=scale)
    return out[..., :head_dim]
