"""Drift a benchmark score does not show: degenerate repetition, formatting nobody asked for, and each of these
(and length) relative to a reference model -- the baseline (usually the SFT model) and the base model the whole
recipe started from, so a drift the baseline already had is not hidden by comparing against it alone.

Metric keys (flat, like the rest of ``metrics.json``):

- ``degeneration/repeat_rate``: fraction of responses that are repetitive (``is_repetitive``);
  ``degeneration/repeated_sentence_rate``: fraction with a repeated sentence (``has_repeated_sentence``);
  ``degeneration/ngram_repeat_fraction``: mean over responses of ``repeated_ngram_fraction``;
- ``format/unrequested_quotes_rate``: over rows that ask for no quoting (no ``QUOTE_KINDS`` constraint), the
  fraction of responses wrapped whole in double quotes (``is_wrapped_in_quotes``);
  ``format/unrequested_caps_rate``: over rows that ask for no capitals (no ``CAPS_KINDS`` constraint), the
  fraction of all-capitals responses (``is_all_caps_answer``);
- against a reference ``ref`` (``baseline`` or ``base``), from ``relative_metrics``: ``length/ratio_to_<ref>``
  (mean tokens), ``length/mean_words_ratio_to_<ref>``, ``length/median_words_ratio_to_<ref>`` (and the same for
  every ``group/<g>/length/...``), ``degeneration/delta_vs_<ref>`` (repeat_rate minus the reference's),
  ``format/unrequested_quotes_delta_vs_<ref>``, ``format/unrequested_caps_delta_vs_<ref>``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

NGRAM = 4
NGRAM_REPEAT_THRESHOLD = 0.3
MIN_SENTENCE_WORDS = 3
MIN_CAPS_WORDS = 3
QUOTE_KINDS = frozenset({"double_quotes", "wrapped_in_quotes"})
CAPS_KINDS = frozenset({"all_caps", "uppercase", "capital_word_frequency"})

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def repeated_ngram_fraction(text: str, n: int = NGRAM) -> float:
    """Of the response's word n-grams, the fraction that repeat an earlier n-gram of the same response.

    Words: runs of ASCII letters and digits (with inner apostrophes), lowercased, so punctuation and case do not
    make a repeat look new. With W words there are W - n + 1 n-grams; the fraction is
    (n-grams - distinct n-grams) / n-grams, and 0.0 when W < n. "a b c d a b c d" with n=4: 5 n-grams, 4
    distinct, 0.2."""
    words = _tokens(text)
    grams = [tuple(words[i: i + n]) for i in range(len(words) - n + 1)]
    return (len(grams) - len(set(grams))) / len(grams) if grams else 0.0


def has_repeated_sentence(text: str, min_words: int = MIN_SENTENCE_WORDS) -> bool:
    """Whether a sentence of at least ``min_words`` words occurs twice or more. Sentences are split as the
    constraint verifiers split them (``counting.sentences``: at . ! ? before whitespace, or a line break) and
    compared on their words (``repeated_ngram_fraction``'s tokens), so "The sky is blue." and "the sky is blue!"
    are the same sentence."""
    from posttrain.verifiers.counting import sentences

    seen: set[tuple[str, ...]] = set()
    for sentence in sentences(text):
        words = tuple(_tokens(sentence))
        if len(words) < min_words:
            continue
        if words in seen:
            return True
        seen.add(words)
    return False


def is_repetitive(text: str) -> bool:
    """A degenerate response: ``has_repeated_sentence``, or ``repeated_ngram_fraction`` (4-grams) of at least
    ``NGRAM_REPEAT_THRESHOLD`` (0.3). Ordinary prose stays far below 0.3; a reply that loops on one sentence
    until the token limit is far above it."""
    return has_repeated_sentence(text) or repeated_ngram_fraction(text) >= NGRAM_REPEAT_THRESHOLD


def is_wrapped_in_quotes(text: str) -> bool:
    """The whole stripped response is inside one pair of double quotes (the ``double_quotes`` verifier's rule)."""
    from posttrain.verifiers.constraints import double_quotes

    return bool(text.strip()) and double_quotes(text)


def is_all_caps_answer(text: str, min_words: int = MIN_CAPS_WORDS) -> bool:
    """At least ``min_words`` words (``counting.words``) that contain a letter, and no lowercase letter anywhere:
    "DNA" or "H2O" alone is an answer, not shouting."""
    from posttrain.verifiers.counting import words

    lettered = [w for w in words(text) if any(c.isalpha() for c in w)]
    return len(lettered) >= min_words and not any(c.islower() for c in text)


def asked_kinds(metadata: dict[str, Any]) -> set[str]:
    """The constraint kinds a row asks for (none for a row without constraints or with malformed ones)."""
    from posttrain.verifiers import constraints_from_metadata

    try:
        return {c["kind"] for c in constraints_from_metadata(metadata)}
    except ValueError:
        return set()


def _rate(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def degeneration_stats(texts: Sequence[str]) -> dict[str, float]:
    """``degeneration/*`` over the responses (no keys for no responses)."""
    if not texts:
        return {}
    return {"degeneration/repeat_rate": sum(map(is_repetitive, texts)) / len(texts),
            "degeneration/repeated_sentence_rate": sum(map(has_repeated_sentence, texts)) / len(texts),
            "degeneration/ngram_repeat_fraction": sum(map(repeated_ngram_fraction, texts)) / len(texts)}


def format_stats(metadatas: Sequence[dict[str, Any]], texts: Sequence[str]) -> dict[str, float]:
    """``format/unrequested_*_rate`` for ``texts[i]`` answering a row with ``metadatas[i]`` (a rate whose
    denominator is empty has no key)."""
    quotes, caps = [], []
    for md, text in zip(metadatas, texts):
        kinds = asked_kinds(md)
        if not kinds & QUOTE_KINDS:
            quotes.append(is_wrapped_in_quotes(text))
        if not kinds & CAPS_KINDS:
            caps.append(is_all_caps_answer(text))
    out = {}
    for key, flags in (("format/unrequested_quotes_rate", quotes), ("format/unrequested_caps_rate", caps)):
        if (rate := _rate(flags)) is not None:
            out[key] = rate
    return out


_RATIOS = ("length/mean_words", "length/median_words")
_DELTAS = {"degeneration/repeat_rate": "degeneration/delta_vs_{}",
           "format/unrequested_quotes_rate": "format/unrequested_quotes_delta_vs_{}",
           "format/unrequested_caps_rate": "format/unrequested_caps_delta_vs_{}"}


def relative_metrics(metrics: dict[str, float], reference: dict[str, float], ref: str) -> dict[str, float]:
    """Ratios and deltas of ``metrics`` against a reference model's ``reference`` (same keys), named after
    ``ref`` (see the module docstring). A ratio over a zero or missing reference value has no key."""
    out: dict[str, float] = {}

    def ratio(key: str, name: str) -> None:
        if metrics.get(key) is not None and reference.get(key):
            out[name] = metrics[key] / reference[key]

    ratio("length/mean_tokens", f"length/ratio_to_{ref}")
    for key in metrics:
        if key.endswith(_RATIOS) and (key in _RATIOS or key.startswith("group/")):
            ratio(key, f"{key}_ratio_to_{ref}")
    for key, name in _DELTAS.items():
        if key in metrics and key in reference:
            out[name.format(ref)] = metrics[key] - reference[key]
    return out
