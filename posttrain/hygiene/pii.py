"""PII redaction: builtin detectors (a regex for candidates, then a check where one exists: Luhn for cards,
mod-97 for IBANs, ``ipaddress`` for IPs) replaced by typed placeholders such as ``[EMAIL]``; counts per type.

Detectors run in table order, each over the output of the previous one. The order matters: URLs with
credentials and secrets go before e-mail (``https://user:pw@host`` is not an address), cards and IBANs before
phones (their digit groups look like phone numbers). Placeholders contain no digits, '@' or ':' so no later
detector can match inside one.

``backend="presidio"`` runs the builtin detectors, then Microsoft Presidio's analyzer on what is left (names,
locations, ...), each entity replaced by ``[ENTITY_TYPE]``. Presidio is optional; asking for it when it is not
installed is a ``PIIBackendError`` that says how to install it.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from dataclasses import dataclass
from typing import Callable

BACKENDS = ("builtin", "presidio")


class PIIBackendError(ValueError):
    """The requested backend cannot run here (one line for the user)."""


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum of a digit string (every card number satisfies it; 1 in 10 random numbers does)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# ISO 13616 lengths of the countries that issue IBANs most often; an unknown country only needs 15-34 chars.
IBAN_LENGTHS = {"AT": 20, "BE": 16, "CH": 21, "CZ": 24, "DE": 22, "DK": 18, "ES": 24, "FI": 18, "FR": 27,
                "GB": 22, "GR": 27, "HU": 28, "IE": 22, "IT": 27, "LU": 20, "NL": 18, "NO": 15, "PL": 28,
                "PT": 25, "RO": 24, "SE": 24, "SK": 24}


def iban_ok(candidate: str) -> bool:
    """Country length (when known) and the ISO 7064 mod-97 check: rearranged, letters as numbers, == 1 mod 97."""
    iban = candidate.replace(" ", "").upper()
    if not 15 <= len(iban) <= 34 or IBAN_LENGTHS.get(iban[:2], len(iban)) != len(iban):
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _card_ok(match: re.Match) -> bool:
    digits = re.sub(r"[ -]", "", match.group(0))
    return 13 <= len(digits) <= 19 and luhn_ok(digits)


def _ipv4_ok(match: re.Match) -> bool:
    try:
        ipaddress.IPv4Address(match.group(0))
        return True
    except ValueError:
        return False


def _ipv6_ok(match: re.Match) -> bool:
    text = match.group(0)
    if not any(c.isdigit() for c in text):  # "dead::beef" is a valid address but far more often a C++ scope
        return False
    try:
        ipaddress.IPv6Address(text)
        return True
    except ValueError:
        return False


def _phone_ok(match: re.Match) -> bool:
    digits = sum(c.isdigit() for c in match.group(0))
    return 10 <= digits <= 15 or (match.group(0).startswith("+") and 8 <= digits <= 15)


@dataclass(frozen=True)
class Detector:
    name: str  # the type: key of the counts, and the placeholder [NAME]
    pattern: re.Pattern
    check: Callable[[re.Match], bool] | None = None
    group: int = 0  # the part of the match that is replaced (0: all of it)
    hint: Callable[[str], bool] | None = None  # cheap pre-test: False means no match possible (most text skips)

    @property
    def placeholder(self) -> str:
        return f"[{self.name.upper()}]"


_SECRET_PREFIXES = (
    r"sk-(?:ant-|proj-)?[A-Za-z0-9_\-]{20,}",  # OpenAI / Anthropic
    r"ghp_[A-Za-z0-9]{36}", r"gh[ousr]_[A-Za-z0-9]{36}", r"github_pat_[A-Za-z0-9_]{22,}",
    r"xox[abprs]-[A-Za-z0-9\-]{10,}",  # Slack
    r"AKIA[0-9A-Z]{16}",  # AWS access key id
    r"AIza[0-9A-Za-z_\-]{35}",  # Google API key
    r"hf_[A-Za-z0-9]{30,}",  # Hugging Face
    r"glpat-[A-Za-z0-9_\-]{20}",  # GitLab
)

_SECRET_HINTS = ("sk-", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "xox", "AKIA", "AIza", "hf_",
                 "glpat-")
_has_digit = re.compile(r"\d").search

DETECTORS: tuple[Detector, ...] = (
    # scheme://user:password@host -> scheme://[URL_CREDENTIALS]@host (the URL itself stays readable)
    Detector("url_credentials", re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.\-]*://([^\s:/@]+:[^\s@/]+)@(?=[^\s@/])"),
             group=1, hint=lambda t: "://" in t),
    Detector("secret", re.compile(r"(?<![A-Za-z0-9_\-])(?:" + "|".join(_SECRET_PREFIXES) + r")(?![A-Za-z0-9_\-])"),
             hint=lambda t: any(p in t for p in _SECRET_HINTS)),
    # key = value assignments of credentials: only the value is replaced
    Detector("secret", re.compile(r"(?i)\b(?:api[_\-]?key|secret(?:[_\-]?key)?|access[_\-]?token|auth[_\-]?token|"
                                  r"password|passwd)\b[\"']?\s*[:=]\s*[\"']?([A-Za-z0-9_\-/+=.]{16,})"), group=1,
             hint=lambda t: any(w in t.lower() for w in ("key", "secret", "token", "passw"))),
    Detector("email", re.compile(r"(?<![\w.+\-])[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}"
                                 r"(?![\w\-])"), hint=lambda t: "@" in t),
    Detector("iban", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b"), lambda m: iban_ok(m.group(0)),
             hint=_has_digit),
    Detector("credit_card", re.compile(r"(?<![\d\-])\d(?:[ \-]?\d){12,18}(?![\d\-])"), _card_ok,
             hint=_has_digit),
    Detector("us_ssn", re.compile(r"(?<![\d\-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d\-])"),
             hint=lambda t: "-" in t and _has_digit(t)),
    Detector("ipv4", re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.]*\d)"), _ipv4_ok,
             hint=lambda t: "." in t and _has_digit(t)),
    Detector("ipv6", re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])"), _ipv6_ok,
             hint=lambda t: t.count(":") >= 2 and _has_digit(t)),
    # Not part of a longer run of digit groups (a failed card or IBAN is not a phone number either).
    Detector("phone", re.compile(r"(?<![\w+])(?<!\d[ .\-])(?:\+\d{1,3}[ .\-]?)?(?:\(\d{2,4}\)[ .\-]?|\d{2,4}[ .\-])"
                                 r"\d{3,4}[ .\-]\d{3,4}(?![\w\-])(?![ .\-]\d)"), _phone_ok,
             hint=_has_digit),
)
TYPES = tuple(dict.fromkeys(d.name for d in DETECTORS))


def _replace(detector: Detector, counts: Counter) -> Callable[[re.Match], str]:
    def sub(match: re.Match) -> str:
        if detector.check is not None and not detector.check(match):
            return match.group(0)
        counts[detector.name] += 1
        if detector.group == 0:
            return detector.placeholder
        start, end = match.span(detector.group)
        offset = match.start()
        whole = match.group(0)
        return whole[: start - offset] + detector.placeholder + whole[end - offset:]

    return sub


def redact_builtin(text: str, types: tuple[str, ...] = TYPES) -> tuple[str, Counter]:
    """``text`` with every detected item of ``types`` replaced by its placeholder, and the counts per type."""
    counts: Counter = Counter()
    for detector in DETECTORS:
        if detector.name in types and (detector.hint is None or detector.hint(text)):
            text = detector.pattern.sub(_replace(detector, counts), text)
    return text, counts


class Redactor:
    """Redacts strings with the chosen backend; ``counts`` accumulates over every call."""

    def __init__(self, backend: str = "builtin", types: tuple[str, ...] = TYPES, language: str = "en"):
        unknown = [t for t in types if t not in TYPES]
        if unknown:
            raise PIIBackendError(f"unknown PII type '{unknown[0]}' (types: {', '.join(TYPES)})")
        if backend not in BACKENDS:
            raise PIIBackendError(f"unknown PII backend '{backend}' (expected {' | '.join(BACKENDS)})")
        self.types, self.language, self.counts = tuple(types), language, Counter()
        self._analyzer = _presidio_analyzer() if backend == "presidio" else None

    def __call__(self, text: str) -> str:
        text, counts = redact_builtin(text, self.types)
        self.counts.update(counts)
        if self._analyzer is not None:
            text = self._presidio(text)
        return text

    def _presidio(self, text: str) -> str:
        results = self._analyzer.analyze(text=text, language=self.language)
        # Right to left so earlier spans keep their offsets; overlapping results keep the first (rightmost) one.
        end_limit = len(text) + 1
        for r in sorted(results, key=lambda r: r.start, reverse=True):
            if r.end > end_limit or text[r.start:r.end].startswith("["):
                continue
            name = r.entity_type.lower()
            self.counts[f"presidio:{name}"] += 1
            text = text[: r.start] + f"[{r.entity_type.upper()}]" + text[r.end:]
            end_limit = r.start
        return text


def _presidio_analyzer():
    try:
        from presidio_analyzer import AnalyzerEngine  # optional dependency
    except ImportError:
        raise PIIBackendError("PII backend 'presidio' needs Microsoft Presidio, which is not installed: "
                              "pip install presidio-analyzer (and a spaCy model, e.g. python -m spacy download "
                              "en_core_web_lg), or use the builtin backend") from None
    return AnalyzerEngine()


# Keys whose values are text written by people or models; everything else (ids, scores, roles) is left alone.
TEXT_KEYS = frozenset({"prompt", "completion", "chosen", "rejected", "messages", "conversations", "instruction",
                       "input", "output", "system", "response", "content", "value", "text",
                       # feedback events (docs/FEEDBACK.md)
                       "response_a", "response_b", "responses", "edited", "comment"})
_STRUCTURE_KEYS = frozenset({"role", "from", "name"})


def redact_record(record: dict, redact: Callable[[str], str]) -> dict:
    """A copy of a raw record with every string under a text key redacted (message roles untouched)."""
    def walk(value, in_text: bool):
        if isinstance(value, str):
            return redact(value) if in_text else value
        if isinstance(value, list):
            return [walk(v, in_text) for v in value]
        if isinstance(value, dict):
            return {k: walk(v, (in_text or k in TEXT_KEYS) and k not in _STRUCTURE_KEYS) for k, v in value.items()}
        return value

    return walk(record, False)
