"""Batched no-repeat n-gram rule in torch, for a sampler's every decoding step (§4.1).

Gives exactly the banned sets of ``dsocr.ngram.banned_tokens`` for every row of a batch, with no
Python loop over rows or positions and no device-to-host synchronisation, so it can run on the GPU
inside vLLM's sampler for a batch of 256 each step.

**History layout: left-aligned.** Row ``b`` holds its generated tokens (never prompt tokens) in
``history[b, :lengths[b]]``, oldest first; entries past ``lengths[b]`` are ignored and may hold any
value. The rule only looks at the last ``window`` tokens, so ``history`` may hold just the tail of
each sequence (at least its last ``window`` tokens, with ``lengths`` counting the tokens present):
the result is the same as for the full sequence, and memory stays ``O(batch · window)``.

**Comparison method.** ``method="auto"`` compares prefixes in one broadcast on a GPU and with a
loop over the ``n - 1`` shifts on a CPU (see ``_prefix_matches_by_shift``); both are exact.

**Per-row settings.** ``ngram_size`` and ``window`` are an ``int`` for the whole batch or one value
per row (a Python sequence, so the kernel's shapes are known without reading the GPU; ``0`` as a
row's ``ngram_size`` turns the rule off for that row). The cost is set by the largest values.

**CUDA graphs.** With one ``int`` setting per call (and a tensor or previously used whitelist) a
step reads nothing back from the device and copies nothing to it, so it can be captured in a CUDA
graph and replayed each step: on a GPU an eager step is bound by its ~27 kernel launches, a replay
only by device time (``bench/bench_ngram.py`` prints both). Per-row settings copy their values to
the device each call, which capture does not allow.

This module imports torch; ``import dsocr`` does not import it.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Sequence
from typing import Literal

import torch

from dsocr.errors import InvalidInput
from dsocr.ngram import validate_ngram_params

__all__ = ["apply_ngram_ban", "ban_scatter", "banned_mask", "banned_pairs"]

IntOrPerRow = int | Sequence[int]
# How prefixes are compared: "broadcast" (few kernels; GPU), "by_shift" (a loop over the n - 1
# shifts; CPU), "auto" (by device). All give identical results.
Method = Literal["auto", "broadcast", "by_shift"]


def banned_pairs(
    history: torch.Tensor,
    lengths: torch.Tensor,
    *,
    ngram_size: IntOrPerRow,
    window: IntOrPerRow,
    whitelist: Collection[int] | torch.Tensor = (),
    method: Method = "auto",
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
    lengths = lengths.to(device=device, dtype=torch.long)
    uniform = isinstance(ngram_size, int) and isinstance(window, int)
    # Per-row settings travel to the device; a single setting stays a Python number (fewer copies
    # and kernels per step, which is what a sampler step at batch 256 is bound by on a GPU).
    sizes = None if uniform else torch.tensor(size_list, dtype=torch.long).to(device, non_blocking=True)

    # tail[b, k] = token at position lengths[b] - K + k (right-aligned; junk where that is < 0).
    index = lengths[:, None] + torch.arange(-keep, 0, device=device)[None, :]
    tail = history.gather(1, index.clamp_(min=0, max=width - 1))

    # Pad on the left so that every position has ``span`` earlier slots (junk before the start).
    span = max_n - 1
    padded = torch.cat([tail.new_full((batch, span), -1), tail], dim=1)
    # Rows with a smaller n ignore the earliest shifts; None when every row uses the largest n.
    ignored = None
    if sizes is not None:
        ignored = torch.arange(span, device=device)[None, :] < (span - (sizes - 1))[:, None]
    if method == "auto":
        method = "by_shift" if device.type == "cpu" else "broadcast"
    compare = _prefix_matches_by_shift if method == "by_shift" else _prefix_matches_broadcast
    matches = compare(padded, keep, ignored)  # [B, K]

    # The n-gram ending at e starts at s = e - n + 1, which must be a real token inside the window:
    # s >= K - min(lengths, window), i.e. start >= max(L - w, 0) in sequence positions.
    if sizes is None:
        starts = torch.arange(1 - max_n, keep + 1 - max_n, device=device)[None, :]
        lowest = keep - lengths.clamp(max=min(window_list[0], keep))
        banned = matches & (starts >= lowest[:, None])
    else:
        windows = torch.tensor(window_list, dtype=torch.long).to(device, non_blocking=True)
        starts = torch.arange(keep, device=device)[None, :] - (sizes[:, None] - 1)
        lowest = keep - torch.minimum(lengths, windows).clamp(max=keep)
        banned = matches & (starts >= lowest[:, None]) & (sizes[:, None] >= 2)
    if len(whitelist) > 0:
        if isinstance(whitelist, torch.Tensor):
            allowed = whitelist.to(device=device, dtype=tail.dtype)
        else:
            allowed = _whitelist_tensor(tuple(sorted(whitelist)), device, tail.dtype)
        banned &= ~torch.isin(tail, allowed)
    return banned, tail


def banned_mask(
    history: torch.Tensor,
    lengths: torch.Tensor,
    *,
    vocab_size: int,
    ngram_size: IntOrPerRow,
    window: IntOrPerRow,
    whitelist: Collection[int] | torch.Tensor = (),
    method: Method = "auto",
) -> torch.Tensor:
    """Boolean ``[batch, vocab_size]`` mask of banned next tokens (token ids must be < vocab_size)."""
    banned, tokens = banned_pairs(
        history, lengths, ngram_size=ngram_size, window=window, whitelist=whitelist, method=method
    )
    # Scatter only ``True``s: non-banned entries go to a spare last column that is dropped, so
    # duplicate indices can never overwrite a ban with ``False``.
    columns = torch.where(banned, tokens.long(), vocab_size)
    mask = torch.zeros((banned.shape[0], vocab_size + 1), dtype=torch.bool, device=banned.device)
    mask.scatter_(1, columns, True)
    return mask[:, :vocab_size]


def ban_scatter(
    history: torch.Tensor,
    lengths: torch.Tensor,
    *,
    vocab_size: int,
    dtype: torch.dtype,
    ngram_size: IntOrPerRow,
    window: IntOrPerRow,
    whitelist: Collection[int] | torch.Tensor = (),
    method: Method = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(columns, values)``, both ``[batch, K]``, such that
    ``logits.scatter_reduce_(1, columns, values, reduce="amin")`` bans exactly the banned tokens.

    O(batch · window), never O(batch · vocab): ``values`` is ``-inf`` where a candidate is banned and
    ``+inf`` (a no-op under ``amin``) elsewhere, so a token that occurs both banned and not banned
    in one row still ends up banned. Shapes depend only on the inputs' shapes and the settings,
    and nothing is read back to the host: the kernels can be captured in a CUDA graph.
    """
    banned, tokens = banned_pairs(
        history, lengths, ngram_size=ngram_size, window=window, whitelist=whitelist, method=method
    )
    tokens = tokens.long()
    banned &= (tokens >= 0) & (tokens < vocab_size)
    values = torch.full(banned.shape, float("inf"), dtype=dtype, device=history.device)
    values.masked_fill_(banned, float("-inf"))
    return tokens.clamp(0, vocab_size - 1), values


def apply_ngram_ban(
    logits: torch.Tensor,
    history: torch.Tensor,
    lengths: torch.Tensor,
    *,
    ngram_size: IntOrPerRow,
    window: IntOrPerRow,
    whitelist: Collection[int] | torch.Tensor = (),
    method: Method = "auto",
) -> torch.Tensor:
    """Set the logits of banned next tokens to ``-inf`` in place and return ``logits`` ``[B, V]``."""
    if logits.dim() != 2 or logits.shape[0] != history.shape[0]:
        raise InvalidInput(
            f"logits must be [batch, vocab] with batch {history.shape[0]}, got {list(logits.shape)}",
            field="logits",
        )
    columns, values = ban_scatter(
        history,
        lengths,
        vocab_size=logits.shape[1],
        dtype=logits.dtype,
        ngram_size=ngram_size,
        window=window,
        whitelist=whitelist,
        method=method,
    )
    return logits.scatter_reduce_(1, columns, values, reduce="amin")


# matches[b, e] says whether the n - 1 tokens before position e equal the last n - 1 tokens:
# tail[e - j] == tail[K - j] for j = 1 … n - 1. Shift c = span - j of ``padded`` holds, for every
# position, the token j places earlier. Both forms give the same result; they differ in speed.


def _prefix_matches_broadcast(padded: torch.Tensor, keep: int, ignored: torch.Tensor | None) -> torch.Tensor:
    """One [B, span, K] comparison: a handful of kernels, best on a GPU."""
    span = padded.shape[1] - keep
    before = padded.unfold(1, keep, 1)[:, :span]  # before[b, c, e] = tail[e - (span - c)]
    equal = before == padded[:, keep:, None]  # padded[b, keep + c] = tail[K - (span - c)]
    if ignored is not None:
        equal |= ignored[:, :, None]
    return equal.all(dim=1)


def _prefix_matches_by_shift(padded: torch.Tensor, keep: int, ignored: torch.Tensor | None) -> torch.Tensor:
    """A loop over the n - 1 shifts (not rows or positions) of [B, K] comparisons.

    On a CPU this is some 50× faster than the broadcast form, whose overlapping strides defeat
    vectorisation; on a GPU the per-shift kernel launches would dominate instead.
    """
    span = padded.shape[1] - keep
    matches = torch.ones((padded.shape[0], keep), dtype=torch.bool, device=padded.device)
    for shift in range(span):
        equal = padded[:, shift : shift + keep] == padded[:, keep + shift, None]
        if ignored is not None:
            equal |= ignored[:, shift, None]
        matches &= equal
    return matches


@functools.lru_cache(maxsize=16)
def _whitelist_tensor(ids: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # Built once per (whitelist, device): a fresh host-to-device copy every step costs more than
    # the check itself.
    return torch.tensor(ids, dtype=dtype, device=device)


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
