"""Exact-match and regex-match verifiers over a whole response."""

from __future__ import annotations

import re
import string


def normalise_text(text: str, *, ignore_case: bool = False, normalize_whitespace: bool = True,
                   strip_punctuation: bool = False) -> str:
    """``text`` as ``exact_match`` compares it: surrounding whitespace is always stripped; then optionally
    ASCII punctuation removed, runs of whitespace collapsed to one space, and case folded."""
    if strip_punctuation:
        text = text.translate(str.maketrans("", "", string.punctuation))
    if normalize_whitespace:
        text = " ".join(text.split())
    if ignore_case:
        text = text.casefold()
    return text.strip()


def exact_match(response: str, reference: str, *, ignore_case: bool = False, normalize_whitespace: bool = True,
                strip_punctuation: bool = False) -> bool:
    """Whether response and reference are equal after the same ``normalise_text``."""
    opts = dict(ignore_case=ignore_case, normalize_whitespace=normalize_whitespace,
                strip_punctuation=strip_punctuation)
    return normalise_text(response, **opts) == normalise_text(reference, **opts)


def regex_match(response: str, pattern: str, *, full: bool = False, ignore_case: bool = False) -> bool:
    """``full``: the whole stripped response matches ``pattern`` (``re.fullmatch``); otherwise the pattern
    occurs anywhere (``re.search``). ``ValueError`` naming the pattern when it does not compile."""
    try:
        compiled = re.compile(pattern, re.IGNORECASE if ignore_case else 0)
    except re.error as e:
        raise ValueError(f"invalid regex {pattern!r}: {e}") from None
    if full:
        return compiled.fullmatch(response.strip()) is not None
    return compiled.search(response) is not None
