"""The no-repeat n-gram rule (§4.1), its batched torch form, and loop measures."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dsocr.errors import InvalidInput
from dsocr.ngram import (
    banned_tokens,
    blocked_max_period,
    detect_loop,
    find_loop,
    repetition_score,
    validate_ngram_params,
)
from dsocr.ngram_torch import Method, apply_ngram_ban, banned_mask, banned_pairs

METHODS: tuple[Method, ...] = ("broadcast", "by_shift")
# The batched rule runs on a GPU in production; where one is present, check it there too.
DEVICES = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)

# --- the pure rule on hand-worked examples -------------------------------------------------------


def test_nothing_is_banned_before_n_tokens() -> None:
    assert banned_tokens([1, 2], ngram_size=3, window=10) == set()


def test_completing_an_earlier_trigram_is_banned() -> None:
    # prefix (1, 2) occurred at 0 followed by 3.
    assert banned_tokens([1, 2, 3, 1, 2], ngram_size=3, window=10) == {3}


def test_every_earlier_continuation_of_the_prefix_is_banned() -> None:
    assert banned_tokens([5, 6, 1, 5, 6, 2, 5, 6], ngram_size=3, window=10) == {1, 2}


def test_window_edge_start_must_lie_inside_the_window() -> None:
    generated = [1, 2, 3, 9, 8, 7, 1, 2]  # L = 8; the earlier (1, 2, 3) starts at 0
    assert banned_tokens(generated, ngram_size=3, window=8) == {3}  # search from max(0, 8 - 8) = 0
    assert banned_tokens(generated, ngram_size=3, window=7) == set()  # search from 1


def test_whitelisted_tokens_are_never_banned() -> None:
    generated = [5, 6, 1, 5, 6, 2, 5, 6]
    assert banned_tokens(generated, ngram_size=3, window=10, whitelist={1}) == {2}
    assert banned_tokens(generated, ngram_size=3, window=10, whitelist=(1, 2)) == set()


def test_overlapping_occurrences_inside_a_run() -> None:
    assert banned_tokens([7, 7, 7, 7], ngram_size=3, window=10) == {7}


def test_window_equal_to_n_blocks_period_one() -> None:
    assert banned_tokens([4, 1, 1], ngram_size=2, window=2) == {1}


def test_only_generated_tokens_are_compared() -> None:
    # The function sees what it is given: a prefix match at the very start counts.
    assert banned_tokens([3, 4, 3], ngram_size=2, window=100) == {4}


@pytest.mark.parametrize(("n", "w"), [(30, 90), (20, 50), (40, 90), (20, 90), (3, 10), (2, 2)])
def test_loops_are_blocked_exactly_up_to_period_w_minus_n_plus_1(n: int, w: int) -> None:
    bound = blocked_max_period(n, w)
    assert bound == w - n + 1
    for period in (1, max(1, bound - 1), bound, bound + 1, bound + 7):
        generated = [t % period for t in range(3 * w + period)]
        next_token = len(generated) % period
        blocked = next_token in banned_tokens(generated, ngram_size=n, window=w)
        assert blocked == (period <= bound), (period, bound)


@pytest.mark.parametrize(
    ("n", "w", "field"), [(1, 90, "ngram_size"), (0, 90, "ngram_size"), (30, 29, "ngram_window")]
)
def test_useless_settings_are_rejected(n: int, w: int, field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_ngram_params(n, w)
    assert info.value.field == field


# --- the batched torch rule equals the pure rule ---------------------------------------------------


def _pure_masks(
    rows: list[list[int]], sizes: list[int], windows: list[int], whitelist: set[int]
) -> list[set[int]]:
    return [
        banned_tokens(row, ngram_size=n, window=w, whitelist=whitelist) if n else set()
        for row, n, w in zip(rows, sizes, windows, strict=True)
    ]


def _left_aligned(rows: list[list[int]], width: int, junk: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Padding holds arbitrary values (negative, out of vocabulary): it must be ignored.
    history = torch.full((len(rows), width), junk, dtype=torch.long)
    for b, row in enumerate(rows):
        history[b, : len(row)] = torch.tensor(row, dtype=torch.long)
    return history, torch.tensor([len(row) for row in rows])


def _mask_sets(mask: torch.Tensor) -> list[set[int]]:
    return [set(torch.nonzero(row).flatten().tolist()) for row in mask.cpu()]


@st.composite
def batches(draw: st.DrawFn) -> tuple[list[list[int]], list[int], list[int], set[int], int, int]:
    vocab = draw(st.integers(2, 5))  # a small vocabulary makes matches frequent
    batch = draw(st.integers(1, 6))
    width = draw(st.integers(1, 40))
    rows = [draw(st.lists(st.integers(0, vocab - 1), max_size=width)) for _ in range(batch)]
    per_row = draw(st.booleans())
    if per_row:
        sizes = [draw(st.sampled_from([0, 2, 3, 4, 5, 6])) for _ in range(batch)]
        windows = [draw(st.integers(max(n, 2), 45)) for n in sizes]
    else:
        n = draw(st.integers(2, 6))
        sizes, windows = [n] * batch, [draw(st.integers(n, 45))] * batch
    whitelist = draw(st.sets(st.integers(0, vocab - 1), max_size=2))
    junk = draw(st.sampled_from([-1, 0, 10**6]))
    return rows, sizes, windows, whitelist, width, junk


@settings(max_examples=300, deadline=None)
@given(batches(), st.sampled_from(METHODS), st.sampled_from(DEVICES))
def test_batched_mask_equals_the_pure_rule(
    case: tuple[list[list[int]], list[int], list[int], set[int], int, int], method: Method, device: str
) -> None:
    rows, sizes, windows, whitelist, width, junk = case
    history, lengths = (tensor.to(device) for tensor in _left_aligned(rows, width, junk))
    same = len(set(zip(sizes, windows, strict=True))) == 1
    mask = banned_mask(
        history,
        lengths,
        vocab_size=5,
        ngram_size=sizes[0] if same else sizes,
        window=windows[0] if same else windows,
        whitelist=whitelist,
        method=method,
    )
    assert mask.shape == (len(rows), 5)
    assert _mask_sets(mask) == _pure_masks(rows, sizes, windows, whitelist)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", METHODS)
def test_random_batch_of_256_official_settings_equals_the_pure_rule(method: Method, device: str) -> None:
    rng = random.Random(1234)
    rows = []
    for _ in range(256):
        length = rng.randint(0, 200)
        period = rng.randint(1, 80)
        loop = [rng.randrange(50) for _ in range(period)]
        # Mix loops of all periods with noise so some rows are blocked and some are not.
        rows.append([loop[t % period] if rng.random() > 0.02 else rng.randrange(50) for t in range(length)])
    history, lengths = (tensor.to(device) for tensor in _left_aligned(rows, 200, -1))
    mask = banned_mask(
        history, lengths, vocab_size=50, ngram_size=30, window=90, whitelist={7, 8}, method=method
    )
    expected = _pure_masks(rows, [30] * 256, [90] * 256, {7, 8})
    assert _mask_sets(mask) == expected
    assert sum(1 for banned in expected if banned) > 20  # the case exercises real bans


def test_history_holding_only_the_last_window_tokens_gives_the_same_bans() -> None:
    rng = random.Random(7)
    rows = [[rng.randrange(3) for _ in range(rng.randint(0, 300))] for _ in range(64)]
    tails = [row[-90:] for row in rows]
    full_history, full_lengths = _left_aligned(rows, 300, 0)
    tail_history, tail_lengths = _left_aligned(tails, 90, 0)
    full = banned_mask(full_history, full_lengths, vocab_size=3, ngram_size=5, window=90)
    tail = banned_mask(tail_history, tail_lengths, vocab_size=3, ngram_size=5, window=90)
    assert torch.equal(full, tail)
    assert _mask_sets(full) == _pure_masks(rows, [5] * 64, [90] * 64, set())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("device", DEVICES)
def test_apply_bans_to_minus_infinity_and_keeps_the_rest(device: str, dtype: torch.dtype) -> None:
    rows = [[1, 2, 3, 1, 2], [5, 6, 1, 5, 6, 2, 5, 6], [0, 1]]
    history, lengths = (tensor.to(device) for tensor in _left_aligned(rows, 8, 0))
    logits = torch.randn(3, 10).to(device=device, dtype=dtype)
    before = logits.clone()
    whitelist = torch.tensor([2], device=device)
    out = apply_ngram_ban(logits, history, lengths, ngram_size=3, window=10, whitelist=whitelist)
    assert out is logits
    banned = torch.isinf(out)
    assert _mask_sets(banned) == [{3}, {1}, set()]
    assert torch.equal(out[~banned], before[~banned])
    assert bool((out[banned] < 0).all())


def test_pairs_index_logits_like_the_mask() -> None:
    rows = [[5, 6, 1, 5, 6, 2, 5, 6]]
    history, lengths = _left_aligned(rows, 8, 0)
    banned, tokens = banned_pairs(history, lengths, ngram_size=3, window=10)
    row_index, position = torch.nonzero(banned, as_tuple=True)
    logits = torch.zeros(1, 8)
    logits.index_put_((row_index, tokens[row_index, position]), torch.tensor(float("-inf")))
    assert _mask_sets(torch.isinf(logits)) == [{1, 2}]


def test_disabled_rows_and_empty_history_ban_nothing() -> None:
    history, lengths = _left_aligned([[1, 1, 1, 1], []], 4, 0)
    mask = banned_mask(history, lengths, vocab_size=3, ngram_size=[0, 2], window=[10, 10])
    assert not bool(mask.any())
    empty = banned_mask(torch.zeros((2, 0), dtype=torch.long), torch.zeros(2, dtype=torch.long),
                        vocab_size=3, ngram_size=3, window=10)  # fmt: skip
    assert empty.shape == (2, 3) and not bool(empty.any())


def test_int32_history_works() -> None:
    history, lengths = _left_aligned([[1, 2, 3, 1, 2]], 5, 0)
    mask = banned_mask(history.int(), lengths.int(), vocab_size=4, ngram_size=3, window=10)
    assert _mask_sets(mask) == [{3}]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"ngram_size": 1, "window": 10}, "ngram_size"),
        ({"ngram_size": [3, 3], "window": 10}, "ngram_size"),
        ({"ngram_size": 5, "window": 4}, "ngram_window"),
    ],
)
def test_batched_bad_settings_are_rejected(kwargs: dict[str, object], field: str) -> None:
    history, lengths = _left_aligned([[1, 2, 3]], 3, 0)
    with pytest.raises(InvalidInput) as info:
        banned_mask(history, lengths, vocab_size=4, **kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_batched_bad_shapes_are_rejected() -> None:
    history = torch.zeros((2, 5), dtype=torch.long)
    with pytest.raises(InvalidInput) as info:
        banned_mask(history, torch.tensor([1, 9]), vocab_size=4, ngram_size=3, window=10)
    assert info.value.field == "lengths"
    with pytest.raises(InvalidInput) as info:
        banned_mask(history.float(), torch.tensor([1, 1]), vocab_size=4, ngram_size=3, window=10)
    assert info.value.field == "history"
    with pytest.raises(InvalidInput) as info:
        apply_ngram_ban(torch.zeros(3, 4), history, torch.tensor([1, 1]), ngram_size=3, window=10)
    assert info.value.field == "logits"


# --- repetition measures -------------------------------------------------------------------------

PARAGRAPH = (
    "DeepSeek-OCR compresses long documents into a small number of vision tokens and decodes them "
    "with a mixture-of-experts language model. The paper reports that at a compression ratio below "
    "ten, the decoder recovers about ninety-seven percent of the text, while at twenty times the "
    "precision drops to roughly sixty percent. Pages are rendered at 144 DPI, cut into tiles of "
    "640 pixels, and a padded global view of the whole page is added before the separator token."
)


def test_text_without_repeats_scores_zero() -> None:
    assert repetition_score(PARAGRAPH) == 0.0
    assert repetition_score("short") == 0.0


@pytest.mark.parametrize("copies", [2, 3, 5])
def test_a_block_written_k_times_scores_k_minus_1_over_k(copies: int) -> None:
    block = "".join(chr(0x4E00 + i) for i in range(100))  # 100 distinct CJK characters, no spaces
    assert repetition_score(block * copies) == pytest.approx((copies - 1) / copies)
    tokens = list(range(40)) * copies
    assert repetition_score(tokens) == pytest.approx((copies - 1) / copies)


def test_repetition_score_is_a_share_between_0_and_1() -> None:
    rng = random.Random(3)
    for _ in range(50):
        tokens = [rng.randrange(3) for _ in range(rng.randint(0, 200))]
        assert 0.0 <= repetition_score(tokens, ngram_size=4) <= 1.0


def test_find_loop_reports_the_looping_tail() -> None:
    intro = "# Report\nThe quarterly figures follow:"  # ends unlike the unit
    unit = "| Hakate Toolbox | 12 |\n"
    loop = find_loop(intro + unit * 10)
    assert loop is not None
    assert loop.period == len(unit)
    assert loop.start == len(intro)
    assert loop.repeats == 10


def test_find_loop_reports_the_shortest_period() -> None:
    loop = find_loop([9, 9] + [1, 2] * 40)
    assert loop is not None and loop.period == 2


def test_too_few_copies_or_too_short_runs_are_not_loops() -> None:
    assert find_loop(PARAGRAPH + "| row | 1 |\n" * 2) is None
    assert find_loop("Wait......") is None
    assert find_loop(PARAGRAPH) is None


def test_detect_loop_flags_exact_loops_and_near_repeats_but_not_prose() -> None:
    assert detect_loop(PARAGRAPH + "the same line again\n" * 20)
    # Numbers change on every line, so the tail is not periodic; most of it still repeats.
    near = "".join(f"Item {i}: Hakate Toolbox, blue, boxed, sold by the dozen\n" for i in range(40))
    assert find_loop(near) is None
    assert detect_loop(near)
    assert not detect_loop(PARAGRAPH)


def test_detect_loop_rejects_a_bad_threshold() -> None:
    with pytest.raises(InvalidInput) as info:
        detect_loop("x", threshold=0)
    assert info.value.field == "threshold"


def test_the_pure_modules_do_not_import_torch() -> None:
    # ``import dsocr`` must stay light; only dsocr.ngram_torch needs torch.
    code = "import sys, dsocr.ngram, dsocr.modes, dsocr.prompts; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
