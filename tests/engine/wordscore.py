"""Order-free word F1 between OCR output and ground truth."""

from __future__ import annotations

import re
from collections import Counter


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def word_f1(predicted: str, truth: str) -> float:
    got, want = Counter(words(predicted)), Counter(words(truth))
    common = sum((got & want).values())
    if not common:
        return 0.0
    precision, recall = common / sum(got.values()), common / sum(want.values())
    return 2 * precision * recall / (precision + recall)
