"""Final-answer extraction and exact equivalence for math problems (no model; sympy only through math-verify when
that optional package is installed, see ``math_answer_equal``).

``extract_final_answer`` picks the answer a response commits to; ``parse_number`` reads it as an exact
``Fraction`` when it is a number, so 0.5, 1/2, \\frac{1}{2} and "50%"/100 compare without float error;
anything else falls back to a normalised string comparison.
"""

from __future__ import annotations

import re
import threading
from fractions import Fraction

_UNSIGNED = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|\.\d+"
# The last number of free text: a minus only counts when it is not a hyphen inside a word or range ("3-5").
_LAST_NUMBER = re.compile(r"(?:(?<![\w)])-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?(?![\d,]*\d)")
_ANSWER_IS = re.compile(r"answer\s*(?:is\b|:|=)\s*:?\s*", re.IGNORECASE)
# A trailing unit: up to three words like "cm", "km/h", "m^2", "apples" after a number.
_UNIT = r"(?:\s*[A-Za-z°µ]+\.?(?:\^\d+)?(?:/[A-Za-z]+(?:\^\d+)?)?){1,3}"


def _braced(text: str, start: int) -> tuple[str, int] | None:
    """(content, index after the closing brace) of the brace group opening at ``text[start] == "{"``."""
    if start >= len(text) or text[start] != "{":
        return None
    depth = 0
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start + 1:i], i + 1
    return None  # unbalanced: no answer rather than a truncated one


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), nested braces included."""
    for m in reversed(list(re.finditer(r"\\(?:boxed|fbox)\s*(?={)", text))):
        group = _braced(text, m.end())
        if group is not None:
            return group[0].strip()
    return None


def _first_sentence(s: str) -> str:
    """``s`` cut at the first sentence end (. ! ? followed by whitespace), so "8. Hope this helps." is "8"."""
    return re.split(r"(?<=[.!?])\s", s.strip(), maxsplit=1)[0]


def _trim(answer: str) -> str:
    """Drop markup and the sentence's closing punctuation and quotes: '"The answer is 7."' and "24!" answer 7, 24."""
    return answer.strip(" *`$\"'").rstrip(".!?").strip(" \"'")


def extract_final_answer(text: str) -> str | None:
    """The answer ``text`` commits to, in this order: the last ``\\boxed{...}``; else what follows the last
    "answer is" / "answer:" (to the end of that sentence); else what follows "=" on the last non-empty line;
    else the last number (integer, decimal, "1,000" or "a/b"). None when there is none of these."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    said = list(_ANSWER_IS.finditer(text))
    if said:
        answer = _trim(_first_sentence(text[said[-1].end():].split("\n", 1)[0]))
        if answer:
            return answer
    lines = [line for line in text.splitlines() if line.strip()]
    if lines and "=" in lines[-1]:
        answer = _trim(_first_sentence(lines[-1].rsplit("=", 1)[1]))
        if answer:
            return answer
    numbers = _LAST_NUMBER.findall(text)
    return numbers[-1] if numbers else None


def _strip_latex(s: str) -> str:
    """Remove the LaTeX and markdown wrapping that does not change an answer's value."""
    s = s.strip().replace("−", "-").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\\(?:text|textbf|mathrm|mathbf)\s*{([^{}]*)}", r"\1", s)
    s = re.sub(r"\\(?:left|right)\b|\\[,;:! ]|\\\(|\\\)|\\\[|\\\]|[$`]", "", s).strip("* ")
    s = s.replace("\\%", "%").replace("^\\circ", "").replace("^{\\circ}", "").replace("°", "")
    s = re.sub(r"^[A-Za-z]\s*=\s*", "", s.strip())  # "x = 5" answers 5
    return s.strip().rstrip(".").strip()


def _frac(s: str) -> str:
    """``\\frac{a}{b}`` and ``\\frac12`` rewritten as ``(a)/(b)``; left unchanged when the braces do not parse."""
    while (m := re.search(r"\\frac\s*", s)) is not None:
        i = m.end()
        if i + 1 < len(s) and s[i].isdigit() and s[i + 1].isdigit():  # \frac12
            s = f"{s[:m.start()]}({s[i]})/({s[i + 1]}){s[i + 2:]}"
            continue
        num = _braced(s, i)
        den = _braced(s, num[1]) if num else None
        if not (num and den):
            return s
        s = f"{s[:m.start()]}({num[0]})/({den[0]}){s[den[1]:]}"
    return s


def parse_number(answer: str) -> Fraction | None:
    """The exact value of ``answer`` when it is one number: an integer, a decimal, scientific notation,
    "1,000" (thousands separators), "a/b", ``\\frac{a}{b}``/``\\dfrac``, leading signs, an optional
    trailing "%" (dropped: "50%" is 50, as MATH graders do) and up to three trailing unit words ("42 days" is
    42, "5 km/h" is 5). None for anything else (expressions, words, intervals)."""
    plain = _strip_latex(answer)
    s = re.sub(rf"\((-?(?:{_UNSIGNED}))\)", r"\1", _frac(plain).replace(" ", ""))  # (1)/(2) from \frac
    m = re.fullmatch(rf"([-+]*)({_UNSIGNED})(?:/([-+]?)({_UNSIGNED}))?%?", s)
    if m is not None:
        signs, num, den_sign, den = m.groups()
    else:
        unit = re.fullmatch(rf"([-+]?)({_UNSIGNED})\s*%?{_UNIT}", plain)
        if unit is None:
            return None
        (signs, num), den_sign, den = unit.groups(), "", None
    try:
        value = Fraction(num.replace(",", "")) / Fraction(den.replace(",", "") if den else 1)
    except (ValueError, ZeroDivisionError):
        return None
    negative = (signs.count("-") + (den_sign == "-")) % 2 == 1
    return -value if negative else value


def normalise_answer(answer: str) -> str:
    """Non-numeric answers as compared: LaTeX/markdown wrapping removed, lowercased, all whitespace dropped."""
    return "".join(_strip_latex(answer).lower().split())


def answers_equal(answer: str, reference: str) -> bool:
    """Exact numeric equality when both parse as numbers, else equality of ``normalise_answer`` strings."""
    a, r = parse_number(answer), parse_number(reference)
    if a is not None and r is not None:
        return a == r
    if (a is None) != (r is None):  # "1/2" vs "one half": no guessing, not equal
        return False
    return normalise_answer(answer) == normalise_answer(reference)


def math_answer_equal(response: str, reference: str) -> bool:
    """Whether the final answer of ``response`` (``extract_final_answer``) equals ``reference`` (itself unwrapped
    from ``\\boxed{}`` when boxed). False when the response commits to no answer.

    The comparison here is textual and numeric (``answers_equal``). Where it says no and ``math-verify`` is
    installed (``pip install 'posttrain[math]'``, the checker TRL's accuracy reward uses), that library decides:
    it parses both sides into sympy and compares them symbolically, so ``\\frac{\\sqrt2}{2}`` equals
    ``\\frac{1}{\\sqrt2}``, ``\\{1,2\\}`` equals ``\\{2,1\\}``, ``3x+2`` equals ``2+3x`` and ``50\\%`` equals ``1/2``."""
    answer = extract_final_answer(response)
    ref = last_boxed(reference) or reference
    if answer is not None and answers_equal(answer, ref):
        return True
    return bool(_math_verify_equal(response, ref))


def _math_verify_equal(response: str, reference: str) -> bool | None:
    """math-verify's verdict (None when it is not installed). Its timeouts use SIGALRM, which only the main
    thread may set: elsewhere it runs without one."""
    try:
        from math_verify import parse, verify  # optional dependency (tests hide it)
    except ImportError:
        return None
    main = threading.current_thread() is threading.main_thread()
    timeout = 5 if main else None
    gold_text = reference if "$" in reference or "\\boxed" in reference else f"${reference}$"
    try:
        gold = parse(gold_text, parsing_timeout=timeout)
        target = parse(response, parsing_timeout=timeout)
        return bool(gold) and bool(target) and verify(gold, target, timeout_seconds=timeout)
    except Exception:  # noqa: BLE001 (a parse math-verify cannot handle is a "no", never a crash)
        return False
