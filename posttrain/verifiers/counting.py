"""How the constraint library counts words, sentences, paragraphs and phrases (one definition each, shared).

Every count-based constraint in ``constraints.py`` goes through these functions, so "a word" means the same
thing in ``exact_word_count``, ``word_count`` and ``capital_word_frequency``.
"""

from __future__ import annotations

import re

RELATIONS = ("at least", "at most", "less than", "more than", "exactly")

# A sentence ends at . ! ? (or one of them and a closing quote/bracket) followed by whitespace, or at a line break.
# "3.5" does not end a sentence (no whitespace after the dot); "e.g. this" does.
SENTENCE_BREAK = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"'”’)\]]))\s+|\n+")


def _has_alnum(s: str) -> bool:
    return any(c.isalnum() for c in s)


def words(text: str) -> list[str]:
    """Whitespace-separated tokens that contain at least one letter or digit ("don't" and "3.5" are one word
    each; a lone "-" bullet marker or "—" is not a word). Matches ``len(text.split())`` on ordinary prose."""
    return [w for w in text.split() if _has_alnum(w)]


def sentences(text: str) -> list[str]:
    """Pieces of ``text`` between sentence breaks (see ``SENTENCE_BREAK``) that contain a letter or digit.
    Abbreviations ("e.g. ") and ellipses ("... ") end a sentence: no abbreviation list, so counts are predictable."""
    return [s.strip() for s in SENTENCE_BREAK.split(text) if _has_alnum(s)]


def paragraphs(text: str) -> list[str]:
    """Runs of consecutive lines that are neither blank nor a "***" separator line (a line holding only "***"
    and whitespace); each run, joined with line breaks, is one paragraph."""
    out: list[list[str]] = [[]]
    for line in text.splitlines():
        if line.strip() in ("", "***"):
            out.append([])
        else:
            out[-1].append(line.strip())
    return ["\n".join(lines) for lines in out if lines]


def phrase_count(text: str, phrase: str) -> int:
    """Non-overlapping, case-insensitive occurrences of ``phrase`` as whole words: "cat" is not counted inside
    "category", and internal whitespace in ``phrase`` matches any run of whitespace."""
    body = r"\s+".join(re.escape(part) for part in phrase.split())
    return len(re.findall(rf"(?<!\w){body}(?!\w)", text, flags=re.IGNORECASE))


def compare(count: int, relation: str, n: int) -> bool:
    """``count`` <relation> ``n``, with ``relation`` one of ``RELATIONS``."""
    return {"at least": count >= n, "at most": count <= n, "less than": count < n, "more than": count > n,
            "exactly": count == n}[relation]
