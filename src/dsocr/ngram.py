"""The no-repeat n-gram rule (§4.1) and repetition measures for flagging looping pages.

``banned_tokens`` is the official rule as a pure function; ``dsocr.ngram_torch`` is the batched
torch version for a sampler (same banned sets, tested against this one). The rule forbids
completing an n-gram that already occurred with its start inside the last ``window`` generated
tokens, so a loop of period ``p`` is blocked only when ``p <= window - ngram_size + 1``; longer
loops and near-repeats get through. ``repetition_score`` and ``find_loop`` measure what got through,
so a page can be flagged instead of silently returned as if it were fine.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass
from typing import Final

from dsocr.errors import InvalidInput

__all__ = [
    "Loop",
    "banned_tokens",
    "blocked_max_period",
    "detect_loop",
    "find_loop",
    "repetition_score",
    "validate_ngram_params",
]

# Default n-gram lengths for ``repetition_score``: characters for text (works for scripts without
# spaces, e.g. Chinese), tokens for token ids. Long enough that ordinary prose rarely repeats one.
TEXT_NGRAM: Final = 32
TOKEN_NGRAM: Final = 10


def validate_ngram_params(ngram_size: int, window: int) -> None:
    """Raise ``InvalidInput`` unless ``2 <= ngram_size <= window``.

    ``ngram_size`` 1 is rejected because the official code silently bans nothing for it (its prefix
    slice ``ids[-0:]`` is the whole sequence); ``window < ngram_size`` could never ban anything.
    """
    if isinstance(ngram_size, bool) or not isinstance(ngram_size, int) or ngram_size < 2:
        raise InvalidInput(f"ngram_size must be an integer >= 2, got {ngram_size!r}", field="ngram_size")
    if isinstance(window, bool) or not isinstance(window, int) or window < ngram_size:
        raise InvalidInput(
            f"ngram_window must be an integer >= ngram_size ({ngram_size}), got {window!r}",
            field="ngram_window",
        )


def blocked_max_period(ngram_size: int, window: int) -> int:
    """Longest loop period (in tokens) the rule can block: ``window - ngram_size + 1``."""
    validate_ngram_params(ngram_size, window)
    return window - ngram_size + 1


def banned_tokens(
    generated: Sequence[int], *, ngram_size: int, window: int, whitelist: Collection[int] = ()
) -> set[int]:
    """Token ids that may not come next after ``generated`` (the generated ids only, no prompt).

    With ``L = len(generated)`` and ``n = ngram_size``: nothing when ``L < n``; otherwise, for each
    start ``i`` in ``[max(0, L - window), L - n + 1)`` whose ``n - 1`` tokens equal the last ``n - 1``
    generated tokens, the token at ``i + n - 1`` is banned. Whitelisted ids are never banned.
    """
    validate_ngram_params(ngram_size, window)
    length = len(generated)
    if length < ngram_size:
        return set()
    tokens = list(generated)
    prefix = tokens[length - ngram_size + 1 :]
    banned = set()
    for start in range(max(0, length - window), length - ngram_size + 1):
        if tokens[start : start + ngram_size - 1] == prefix:
            banned.add(tokens[start + ngram_size - 1])
    return banned - set(whitelist)


def repetition_score(output: str | Sequence[int], *, ngram_size: int | None = None) -> float:
    """Share (0..1) of the output that repeats something earlier in it.

    A unit (a character of text, or a token id) counts as repeated when it lies inside an n-gram
    occurrence that is not the first occurrence of that n-gram. Ordinary text scores near 0; a
    block written ``k`` times scores about ``(k - 1) / k``; output shorter than ``n`` scores 0.
    ``n`` defaults to 32 characters for text and 10 tokens for token ids.
    """
    units: Sequence[Hashable] = output
    n = ngram_size if ngram_size is not None else (TEXT_NGRAM if isinstance(output, str) else TOKEN_NGRAM)
    if n < 1:
        raise InvalidInput(f"ngram_size must be >= 1, got {n}", field="ngram_size")
    length = len(units)
    if length < n:
        return 0.0
    seen: set[object] = set()
    # Repeated n-grams as [start, start + n) intervals; starts increase, so one sweep merges them.
    covered = 0
    covered_until = 0
    for start in range(length - n + 1):
        gram = output[start : start + n] if isinstance(output, str) else tuple(output[start : start + n])
        if gram in seen:
            covered += start + n - max(start, covered_until)
            covered_until = start + n
        else:
            seen.add(gram)
    return covered / length


@dataclass(frozen=True, slots=True)
class Loop:
    """A periodic tail: the last ``span`` units repeat a unit of ``period`` units (``repeats`` times)."""

    start: int
    period: int
    span: int

    @property
    def repeats(self) -> float:
        """How many times the period occurs in the tail (may end mid-period)."""
        return self.span / self.period


def find_loop(
    output: str | Sequence[int],
    *,
    min_repeats: int = 3,
    min_span: int | None = None,
    max_period: int | None = None,
) -> Loop | None:
    """The shortest-period loop the output ends in, or ``None``.

    A loop is a tail that is exactly periodic with period ``p`` (``x[i] == x[i + p]`` throughout),
    spans at least ``min_repeats`` periods and at least ``min_span`` units (default: 64 characters
    of text, 32 tokens, so a short ``"......"`` run is not a loop). This is the typical failure:
    the model repeats the same lines until ``max_tokens``.
    """
    if min_repeats < 2:
        raise InvalidInput(f"min_repeats must be >= 2, got {min_repeats}", field="min_repeats")
    length = len(output)
    span_floor = min_span if min_span is not None else (64 if isinstance(output, str) else 32)
    longest = max_period if max_period is not None else length // min_repeats
    if length < 2:
        return None
    # z[p] = length of the common prefix of the reversed output and the reversed output shifted by
    # p, so the tail is p-periodic over ``z[p] + p`` units. Z-algorithm: O(length).
    reversed_units = list(reversed(output))
    z = _z_array(reversed_units)
    for period in range(1, min(longest, length - 1) + 1):
        span = z[period] + period
        if span >= min_repeats * period and span >= span_floor:
            return Loop(start=length - span, period=period, span=span)
    return None


def detect_loop(
    output: str | Sequence[int],
    *,
    threshold: float = 0.5,
    min_repeats: int = 3,
    ngram_size: int | None = None,
) -> bool:
    """Whether a page's output looks degenerate: it ends in a loop, or repeats too much overall.

    True when ``find_loop`` finds a periodic tail (``min_repeats`` copies) or when more than
    ``threshold`` of the output repeats earlier n-grams (``repetition_score``), which also catches
    near-repeats that are not exactly periodic.
    """
    if not 0.0 < threshold <= 1.0:
        raise InvalidInput(f"threshold must be in (0, 1], got {threshold}", field="threshold")
    if find_loop(output, min_repeats=min_repeats) is not None:
        return True
    return repetition_score(output, ngram_size=ngram_size) >= threshold


def _z_array(units: Sequence[Hashable]) -> list[int]:
    length = len(units)
    z = [0] * length
    if length:
        z[0] = length
    left = right = 0
    for i in range(1, length):
        if i < right:
            z[i] = min(right - i, z[i - left])
        while i + z[i] < length and units[z[i]] == units[i + z[i]]:
            z[i] += 1
        if i + z[i] > right:
            left, right = i, i + z[i]
    return z
