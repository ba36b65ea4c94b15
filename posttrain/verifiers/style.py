"""Style faults of one response that no constraint asked for: degenerate repetition (a sentence, or many 4-grams
of words or of symbols, said again), a whole answer wrapped in double quotes, an all-capitals answer, an
all-lowercase answer; and an answer that repeats its prompt's instruction wording (``echoes_instruction``). Pure
functions over text (standard library only). ``eval/drift.py`` turns them into rates over a suite;
``VerifierJudge(style_penalty=...)`` (``judges/verifier.py``) lowers the score of a response that has one of the
first four (``style_faults``), so online
DPO, GRPO and judged pairs learn the constraint without learning the habit."""

from __future__ import annotations

import re
from typing import Any

from posttrain.verifiers.constraints import constraints_from_metadata, double_quotes
from posttrain.verifiers.counting import sentences, words

NGRAM = 4
NGRAM_REPEAT_THRESHOLD = 0.3
MIN_SENTENCE_WORDS = 3
MIN_CAPS_WORDS = 3
QUOTE_KINDS = frozenset({"double_quotes", "wrapped_in_quotes"})
CAPS_KINDS = frozenset({"all_caps", "uppercase", "capital_word_frequency"})
LOWER_KINDS = frozenset({"lowercase"})  # IFEval's change_case:english_lowercase reads as "lowercase"

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")


def sentence_tokens(text: str) -> list[str]:
    """The lowercased words the repetition metrics compare (letters, digits, inner apostrophes)."""
    return _TOKEN.findall(text.lower())


def repeated_ngram_fraction(text: str, n: int = NGRAM) -> float:
    """Of the response's word n-grams, the fraction that repeat an earlier n-gram of the same response.

    Words: runs of ASCII letters and digits (with inner apostrophes), lowercased, so punctuation and case do not
    make a repeat look new. With W words there are W - n + 1 n-grams; the fraction is
    (n-grams - distinct n-grams) / n-grams, and 0.0 when W < n. "a b c d a b c d" with n=4: 5 n-grams, 4
    distinct, 0.2."""
    return _repeat_fraction(sentence_tokens(text), n)


def repeated_chunk_fraction(text: str, n: int = NGRAM) -> float:
    """``repeated_ngram_fraction`` over the response's whitespace-separated chunks (lowercased) instead of its
    words, so that symbols count: an answer that loops on "* * *" lines or rows of "****" until the token limit has
    no words at all, and a loop of emoji or markdown rules between a few words has too few to show. "* * * * * *":
    6 chunks, 3 four-grams, 1 distinct, 2/3. Prose repeats its chunks about as rarely as its words (punctuation
    kept on a chunk makes it rarer still); punctuation-only chunks, a " - " between words or a table's "|", add
    a little."""
    return _repeat_fraction(text.lower().split(), n)


def _ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i: i + n]) for i in range(len(tokens) - n + 1)]


def _repeat_fraction(tokens: list[str], n: int) -> float:
    grams = _ngrams(tokens, n)
    return (len(grams) - len(set(grams))) / len(grams) if grams else 0.0


def has_repeated_sentence(text: str, min_words: int = MIN_SENTENCE_WORDS) -> bool:
    """Whether a sentence of at least ``min_words`` words occurs twice or more. Sentences are split as the
    constraint verifiers split them (``counting.sentences``: at . ! ? before whitespace, or a line break) and
    compared on their words (``repeated_ngram_fraction``'s tokens), so "The sky is blue." and "the sky is blue!"
    are the same sentence."""
    seen: set[tuple[str, ...]] = set()
    for sentence in sentences(text):
        words = tuple(sentence_tokens(sentence))
        if len(words) < min_words:
            continue
        if words in seen:
            return True
        seen.add(words)
    return False


def is_repetitive(text: str) -> bool:
    """A degenerate response: ``has_repeated_sentence``, or ``repeated_ngram_fraction`` (word 4-grams) or
    ``repeated_chunk_fraction`` (4-grams of whitespace-separated chunks, symbols included) of at least
    ``NGRAM_REPEAT_THRESHOLD`` (0.3). Ordinary prose stays far below 0.3; a reply that loops on one sentence, or on
    a line of symbols, until the token limit is far above it. The chunk test came in with issue 16, session 40:
    the words-only tests did not see answers made of "* * *" lines or "****" rows (often under a prompt that asks
    for '* ' bullets): 11 more of the quickstart model's 457 eval answers are degenerate with it (71, against 60),
    3 more of the base's (101, against 98); recipe_full's model of sessions 28-39 7 more of its 99 answers on
    constraints_ood2 (the base: 1 more) and 5 more of 100 on the reserve suite (the base: none)."""
    return (has_repeated_sentence(text) or repeated_ngram_fraction(text) >= NGRAM_REPEAT_THRESHOLD
            or repeated_chunk_fraction(text) >= NGRAM_REPEAT_THRESHOLD)


def is_wrapped_in_quotes(text: str) -> bool:
    """The whole stripped response is inside one pair of double quotes (the ``double_quotes`` verifier's rule)."""
    return bool(text.strip()) and double_quotes(text)


def _lettered_words(text: str) -> int:
    """How many words (``counting.words``) contain a letter."""
    return sum(any(c.isalpha() for c in w) for w in words(text))


def is_all_caps_answer(text: str, min_words: int = MIN_CAPS_WORDS) -> bool:
    """At least ``min_words`` words (``counting.words``) that contain a letter, and no lowercase letter anywhere:
    "DNA" or "H2O" alone is an answer, not shouting."""
    return _lettered_words(text) >= min_words and not any(c.islower() for c in text)


def is_lowercase_answer(text: str, min_words: int = MIN_CAPS_WORDS) -> bool:
    """At least ``min_words`` words (``counting.words``) that contain a letter, the first character that is not
    whitespace, a quote or markdown (``"'*#>-``) is a lowercase letter, and no uppercase letter anywhere: "the sky
    is blue." is the habit a lowercase instruction leaves; "81 divided by 9 is 9." (a number first) is not."""
    start = text.lstrip(" \t\n\"'*#>-\u201c\u2018")
    return (_lettered_words(text) >= min_words and start[:1].isalpha() and start[:1].islower()
            and not any(c.isupper() for c in text))


ECHO_WORDS = 5
# Spans a prompt quotes are text it asks to be written (a phrase to start or end with, a title, a placeholder)
_QUOTED = re.compile(r"\"[^\"]*\"|\u201c[^\u201d]*\u201d|(?<![A-Za-z])'[^']*'(?![A-Za-z])|<<[^>]*>>|\[[^\]]*\]")
_SENTENCE_END = re.compile(r"(?<=[.?!:])\s+")


def _word_runs(text: str, n: int) -> set[tuple[str, ...]]:
    return set(_ngrams(sentence_tokens(text), n))


def echoes_instruction(prompt: str, text: str, n: int = ECHO_WORDS) -> bool:
    """The response repeats ``n`` consecutive words of the prompt's instructions instead of obeying them ("Each letter
    should be uppercase from start to finish." as a sentence of the answer). The instructions: the prompt's sentences
    after its first (the task), less what they quote ("...", '...', <<...>>, [...]: text the prompt asks to be
    written) and less the runs the first sentence has too (restating the task is no echo); words as in
    ``sentence_tokens`` (case and punctuation ignored). A one-sentence prompt has no instructions to echo.
    "Describe a fox. Capital letters are not allowed anywhere." answered "A fox. Capital letters are not allowed
    anywhere." echoes; answered "a fox, describe a fox." does not."""
    task, *rest = _SENTENCE_END.split(prompt.strip(), maxsplit=1)
    if not rest:
        return False
    parts = _QUOTED.split(rest[0])
    asked = set().union(*(_word_runs(part, n) for part in parts)) - _word_runs(task, n)
    return bool(asked & _word_runs(text, n))


# (name, the constraint kinds that ask for the format, its detector): the formats counted when nobody asked
UNREQUESTED = (("quotes", QUOTE_KINDS, is_wrapped_in_quotes), ("caps", CAPS_KINDS, is_all_caps_answer),
               ("lowercase", LOWER_KINDS, is_lowercase_answer))


def asked_kinds(metadata: dict[str, Any]) -> set[str]:
    """The constraint kinds a row asks for (none for a row without constraints or with malformed ones)."""
    try:
        return {c["kind"] for c in constraints_from_metadata(metadata)}
    except ValueError:
        return set()


def style_faults(text: str, metadata: dict[str, Any]) -> list[str]:
    """The faults of ``text`` answering a row with ``metadata``, in a fixed order: "repetition"
    (``is_repetitive``), "unrequested_quotes" (``is_wrapped_in_quotes`` on a row with no ``QUOTE_KINDS``
    constraint), "unrequested_caps" (``is_all_caps_answer`` on a row with no ``CAPS_KINDS`` constraint),
    "unrequested_lowercase" (``is_lowercase_answer`` on a row with no ``LOWER_KINDS`` constraint)."""
    kinds = asked_kinds(metadata)
    faults = ["repetition"] if is_repetitive(text) else []
    return faults + [f"unrequested_{name}" for name, asking, detect in UNREQUESTED
                     if not kinds & asking and detect(text)]
