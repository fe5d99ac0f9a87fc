"""The seed paper's answer metrics on generated text, as its ``summarize_results.py`` defines them.

All three compare the decoded new tokens (stripped) with the gold answer:

- **normalized exact match**: both lowercased, stripped, every ``string.punctuation`` character removed,
  runs of whitespace collapsed; then equal;
- **word-boundary contains**: the normalized answer occurs in the normalized prediction with no word
  character right before or after it;
- **legacy contains**: the stripped, lowercased answer is a substring of the lowercased prediction
  (the paper's historical, lenient metric: "Asia" counts inside "Eurasian").
"""

from __future__ import annotations

import re
import string

METRICS = ("normalized_exact_match", "boundary_contains", "legacy_contains")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_text(text: str) -> str:
    """Lowercase, strip, drop punctuation, collapse whitespace."""
    return re.sub(r"\s+", " ", text.strip().lower().translate(_PUNCTUATION)).strip()


def normalized_exact_match(prediction: str, gold: str) -> bool:
    return normalize_text(prediction) == normalize_text(gold)


def boundary_contains(prediction: str, gold: str) -> bool:
    needle = normalize_text(gold)
    if not needle:
        return False
    return re.search(rf"(?<!\w){re.escape(needle)}(?!\w)", normalize_text(prediction)) is not None


def legacy_contains(prediction: str, gold: str) -> bool:
    return gold.strip().lower() in prediction.lower()


def score(prediction: str, gold: str) -> dict[str, bool]:
    """Every metric of one prediction."""
    return {
        "normalized_exact_match": normalized_exact_match(prediction, gold),
        "boundary_contains": boundary_contains(prediction, gold),
        "legacy_contains": legacy_contains(prediction, gold),
    }
