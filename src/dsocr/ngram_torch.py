"""Batched no-repeat n-gram rule in torch, for a sampler's every decoding step (§4.1).

Gives exactly the banned sets of ``dsocr.ngram.banned_tokens`` for every row of a batch, with no
Python loop over rows or positions and no device-to-host synchronisation, so it can run on the GPU
inside vLLM's sampler for a batch of 256 each step.

**History layout: left-aligned.** Row ``b`` holds its generated tokens (never prompt tokens) in
``history[b, :lengths[b]]``, oldest first; entries past ``lengths[b]`` are ignored and may hold any
value. The rule only looks at the last ``window`` tokens, so ``history`` may hold just the tail of
each sequence (at least its last ``window`` tokens, with ``lengths`` counting the tokens present):
the result is the same as for the full sequence, and memory stays ``O(batch · window)``.

**Per-row settings.** ``ngram_size`` and ``window`` are an ``int`` for the whole batch or one value
per row (a Python sequence, so the kernel's shapes are known without reading the GPU; ``0`` as a
row's ``ngram_size`` turns the rule off for that row). The cost is set by the largest values.

This module imports torch; ``import dsocr`` does not import it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch

from dsocr.errors import InvalidInput
from dsocr.ngram import validate_ngram_params

__all__ = ["apply_ngram_ban", "banned_mask", "banned_pairs"]

IntOrPerRow = int | Sequence[int]


def banned_pairs(
    history: torch.Tensor,
    lengths: torch.Tensor,
    *,
    ngram_size: IntOrPerRow,
    window: IntOrPerRow,
    whitelist: Collection[int] | torch.Tensor = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Banned (row, token) candidates as ``(banned, tokens)``, both ``[batch, K]``.

    ``tokens[b, e]`` is the token at the ``e``-th of the last ``K`` positions of row ``b`` and
    ``banned[b, e]`` says whether that occurrence completes a banned n-gram. A token may appear
    several times; ``logits[rows, cols] = -inf`` with ``rows, cols`` taken where ``banned`` holds
    is idempotent, so duplicates are harmless.
    """
    batch, width = _check_shapes(history, lengths)
    device = history.device
    size_list, window_list = _settings(ngram_size, window, batch)
    max_n = max(size_list, default=0)
    keep = min(max(window_list, default=0), width)  # K: only the last ``window`` tokens matter
    if max_n < 2 or keep == 0:
        nothing = torch.zeros((batch, 0), dtype=torch.bool, device=device)
        return nothing, history[:, :0]
    sizes = torch.tensor(size_list, dtype=torch.long).to(device, non_blocking=True)
    windows = torch.tensor(window_list, dtype=torch.long).to(device, non_blocking=True)
    lengths = lengths.to(device=device, dtype=torch.long)

    # tail[b, k] = token at position lengths[b] - K + k (right-aligned; junk where that is < 0).
    offsets = torch.arange(keep, device=device)
    index = lengths[:, None] - keep + offsets[None, :]
    tail = history.gather(1, index.clamp(min=0, max=width - 1))

    # Pad on the left so that window e of ``unfold`` holds the max_n - 1 tokens before position e.
    span = max_n - 1
    padded = torch.cat([tail.new_full((batch, span), -1), tail], dim=1)
    before = padded.unfold(1, span, 1)[:, :keep]  # [B, K, span]; last column = position e - 1
    prefix = padded[:, keep:]  # [B, span]: the last span tokens
    equal = before == prefix[:, None, :]
    # A row with n-gram size n compares only the last n - 1 columns (columns >= span - (n - 1)).
    columns = torch.arange(span, device=device)
    ignored = columns[None, :] < (span - (sizes - 1))[:, None]
    matches = (equal | ignored[:, None, :]).all(dim=2)  # [B, K]

    # The n-gram ending at e starts at s = e - n + 1, which must be a real token inside the window:
    # s >= K - min(lengths, window), i.e. start >= max(L - w, 0) in sequence positions.
    starts = offsets[None, :] - (sizes[:, None] - 1)
    lowest = keep - torch.minimum(lengths, windows).clamp(max=keep)
    banned = matches & (starts >= lowest[:, None]) & (sizes[:, None] >= 2)
    if len(whitelist) > 0:
        allowed = whitelist if isinstance(whitelist, torch.Tensor) else torch.tensor(sorted(whitelist))
        banned &= ~torch.isin(tail, allowed.to(device=device, dtype=tail.dtype))
    return banned, tail


def banned_mask(
    history: torch.Tensor,
    lengths: torch.Tensor,
    *,
    vocab_size: int,
    ngram_size: IntOrPerRow,
    window: IntOrPerRow,
    whitelist: Collection[int] | torch.Tensor = (),
) -> torch.Tensor:
    """Boolean ``[batch, vocab_size]`` mask of banned next tokens (token ids must be < vocab_size)."""
    banned, tokens = banned_pairs(history, lengths, ngram_size=ngram_size, window=window, whitelist=whitelist)
    # Scatter only ``True``s: non-banned entries go to a spare last column that is dropped, so
    # duplicate indices can never overwrite a ban with ``False``.
    columns = torch.where(banned, tokens.long(), vocab_size)
    mask = torch.zeros((banned.shape[0], vocab_size + 1), dtype=torch.bool, device=banned.device)
    mask.scatter_(1, columns, True)
    return mask[:, :vocab_size]


def apply_ngram_ban(
    logits: torch.Tensor,
    history: torch.Tensor,
    lengths: torch.Tensor,
    *,
    ngram_size: IntOrPerRow,
    window: IntOrPerRow,
    whitelist: Collection[int] | torch.Tensor = (),
) -> torch.Tensor:
    """Set the logits of banned next tokens to ``-inf`` in place and return ``logits`` ``[B, V]``."""
    if logits.dim() != 2 or logits.shape[0] != history.shape[0]:
        raise InvalidInput(
            f"logits must be [batch, vocab] with batch {history.shape[0]}, got {list(logits.shape)}",
            field="logits",
        )
    mask = banned_mask(
        history,
        lengths,
        vocab_size=logits.shape[1],
        ngram_size=ngram_size,
        window=window,
        whitelist=whitelist,
    )
    return logits.masked_fill_(mask, float("-inf"))


def _check_shapes(history: torch.Tensor, lengths: torch.Tensor) -> tuple[int, int]:
    if history.dim() != 2 or history.dtype.is_floating_point or history.dtype == torch.bool:
        raise InvalidInput(
            f"history must be an integer [batch, tokens] tensor, got {history.dtype} {list(history.shape)}",
            field="history",
        )
    if lengths.shape != (history.shape[0],):
        raise InvalidInput(
            f"lengths must have shape [{history.shape[0]}], got {list(lengths.shape)}", field="lengths"
        )
    # Bounds are checked only where it is free: reading a GPU tensor would stall the sampler.
    if (
        lengths.device.type == "cpu"
        and lengths.numel()
        and not bool(((lengths >= 0) & (lengths <= history.shape[1])).all())
    ):
        raise InvalidInput(f"lengths must lie in [0, {history.shape[1]}]", field="lengths")
    return history.shape[0], history.shape[1]


def _settings(ngram_size: IntOrPerRow, window: IntOrPerRow, batch: int) -> tuple[list[int], list[int]]:
    """Per-row (ngram_size, window) lists, validated on the host so the GPU is never read."""
    sizes = [ngram_size] * batch if isinstance(ngram_size, int) else list(ngram_size)
    windows = [window] * batch if isinstance(window, int) else list(window)
    for name, values in (("ngram_size", sizes), ("ngram_window", windows)):
        if len(values) != batch:
            raise InvalidInput(f"{name} needs one value per row ({batch}), got {len(values)}", field=name)
    # A batch usually shares one or two settings: check each distinct pair once.
    for size, row_window in set(zip(sizes, windows, strict=True)):
        if size != 0:
            validate_ngram_params(size, row_window)
    return sizes, windows
