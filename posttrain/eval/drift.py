"""Drift a benchmark score does not show: degenerate repetition, formatting nobody asked for, and each of these
(and length) relative to a reference model -- the baseline (usually the SFT model) and the base model the whole
recipe started from, so a drift the baseline already had is not hidden by comparing against it alone.

Metric keys (flat, like the rest of ``metrics.json``):

- ``degeneration/repeat_rate``: fraction of responses that are repetitive (``is_repetitive``: a repeated sentence,
  or word or symbol 4-grams said again; lines of "* * *" count since issue 16, session 40);
  ``degeneration/repeated_sentence_rate``: fraction with a repeated sentence (``has_repeated_sentence``);
  ``degeneration/ngram_repeat_fraction``: mean over responses of ``repeated_ngram_fraction``;
- ``format/unrequested_quotes_rate``: over rows that ask for no quoting (no ``QUOTE_KINDS`` constraint), the
  fraction of responses wrapped whole in double quotes (``is_wrapped_in_quotes``);
  ``format/unrequested_caps_rate``: over rows that ask for no capitals (no ``CAPS_KINDS`` constraint), the
  fraction of all-capitals responses (``is_all_caps_answer``);
  ``format/unrequested_lowercase_rate``: over rows that ask for no lowercase (no ``LOWER_KINDS`` constraint), the
  fraction of all-lowercase responses (``is_lowercase_answer``; a lowercase instruction's habit, issue 16 session 24:
  the session-23 quickstart wrote 14.5% of its answers in lowercase, the base 0.2%);
- ``format/instruction_echo_rate``: over rows with a constraint (when the prompts are given), the fraction of
  responses that repeat the prompt's instruction wording (``echoes_instruction``: 5 words in a row of the sentences
  after the task, quoted text left out) -- a model trained on constraint data can learn to copy the instruction into
  its answer instead of obeying it (issue 16, session 39: recipe_full's model on the 236 constraint rows of its eval
  stage, 7.2% against the base's 3.4%, and 9.1% against 2.0% on ``constraints_ood2``; most echoing answers fail);
- against a reference ``ref`` (``baseline`` or ``base``), from ``relative_metrics``: ``length/ratio_to_<ref>``
  (mean tokens), ``length/mean_words_ratio_to_<ref>``, ``length/median_words_ratio_to_<ref>``,
  ``length/median_words_clean_ratio_to_<ref>`` (the median over non-degenerate answers; and the same for
  every ``group/<g>/length/...``), ``degeneration/delta_vs_<ref>`` (repeat_rate minus the reference's),
  ``format/unrequested_quotes_delta_vs_<ref>``, ``format/unrequested_caps_delta_vs_<ref>``,
  ``format/unrequested_lowercase_delta_vs_<ref>``, ``format/instruction_echo_delta_vs_<ref>``;
- from ``paired_length`` (the rows both answered): ``length/paired_words_ratio_to_<ref>`` and
  ``length/paired_rows_vs_<ref>``, and the same under every ``group/<g>/`` and ``suite/<s>/``: on the rows where
  neither the model's answer nor the reference's loops (``is_repetitive``), the model's words over the
  reference's, in total. Each model's median over its own answers that do not loop (``median_words_clean``)
  compares two different sets of prompts: when the model stops looping on a prompt whose answer is long, that
  long answer joins its set and stays out of the reference's, so a model that loops much less looks longer than
  it is (issue 16, session 27: recipe_full with loop pairs, repeat rate 0.074 against the base's 0.214, had a
  clean median 1.38x the base's and 0.99x on the same prompts).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from posttrain.verifiers.style import (UNREQUESTED, asked_kinds, echoes_instruction, has_repeated_sentence,
                                       is_repetitive, repeated_ngram_fraction)


def _rate(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def degeneration_stats(texts: Sequence[str]) -> dict[str, float]:
    """``degeneration/*`` over the responses (no keys for no responses)."""
    if not texts:
        return {}
    return {"degeneration/repeat_rate": sum(map(is_repetitive, texts)) / len(texts),
            "degeneration/repeated_sentence_rate": sum(map(has_repeated_sentence, texts)) / len(texts),
            "degeneration/ngram_repeat_fraction": sum(map(repeated_ngram_fraction, texts)) / len(texts)}


def format_stats(metadatas: Sequence[dict[str, Any]], texts: Sequence[str],
                 prompts: Sequence[str] | None = None) -> dict[str, float]:
    """``format/unrequested_*_rate`` for ``texts[i]`` answering a row with ``metadatas[i]``, and with the rows' last
    user turns ``prompts``, ``format/instruction_echo_rate`` (a rate whose denominator is empty has no key)."""
    flags: dict[str, list[bool]] = {name: [] for name, _asking, _detect in UNREQUESTED}
    echoes: list[bool] = []
    for i, (md, text) in enumerate(zip(metadatas, texts)):
        kinds = asked_kinds(md)
        for name, asking, detect in UNREQUESTED:
            if not kinds & asking:
                flags[name].append(detect(text))
        if prompts is not None and kinds:
            echoes.append(echoes_instruction(prompts[i], text))
    out = {}
    for name, found in flags.items():
        if (rate := _rate(found)) is not None:
            out[f"format/unrequested_{name}_rate"] = rate
    if (rate := _rate(echoes)) is not None:
        out["format/instruction_echo_rate"] = rate
    return out


_RATIOS = ("length/mean_words", "length/median_words", "length/median_words_clean")
_DELTAS = {"degeneration/repeat_rate": "degeneration/delta_vs_{}",
           **{f"format/unrequested_{name}_rate": f"format/unrequested_{name}_delta_vs_{{}}"
              for name, _asking, _detect in UNREQUESTED},
           "format/instruction_echo_rate": "format/instruction_echo_delta_vs_{}"}


def paired_length(rows: Sequence[Any], texts: Sequence[str], ref_texts: Sequence[str], ref: str
                  ) -> dict[str, float]:
    """``length/paired_words_ratio_to_<ref>`` and ``length/paired_rows_vs_<ref>`` (module docstring), overall and
    for each ``group/<g>/`` and ``suite/<s>/`` of ``rows`` (``EvalRow``-like: ``group``, ``suite``); ``texts[i]``
    and ``ref_texts[i]`` answer ``rows[i]``. A slice where every pair has a looping answer, or whose reference
    answers have no words, has no ratio key."""
    if not len(rows) == len(texts) == len(ref_texts):
        raise ValueError(f"paired_length: {len(rows)} rows, {len(texts)} answers and {len(ref_texts)} {ref} answers")
    words: dict[str, list[int]] = {}
    for row, text, ref_text in zip(rows, texts, ref_texts):
        if is_repetitive(text) or is_repetitive(ref_text):
            continue
        for prefix in ("", f"group/{row.group}/", f"suite/{row.suite}/"):
            total = words.setdefault(prefix, [0, 0, 0])
            total[0] += len(text.split())
            total[1] += len(ref_text.split())
            total[2] += 1
    out: dict[str, float] = {}
    for prefix, (model_words, ref_words, n) in words.items():
        out[f"{prefix}length/paired_rows_vs_{ref}"] = float(n)
        if ref_words:
            out[f"{prefix}length/paired_words_ratio_to_{ref}"] = model_words / ref_words
    return out


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
