from fractions import Fraction

import pytest

from posttrain.verifiers.math import (answers_equal, extract_final_answer, last_boxed, math_answer_equal,
                                             parse_number)


@pytest.mark.parametrize("text, expected", [
    (r"First \boxed{1}, finally \boxed{\frac{3}{4}}.", r"\frac{3}{4}"),
    (r"$\boxed{\{1, \{2\}\}}$", r"\{1, \{2\}\}"),
    (r"\boxed{a^{2}+b_{1}}", "a^{2}+b_{1}"),
    ("So the answer is 8. Hope this helps.", "8"),
    ("The answer is 24!", "24"),  # closing punctuation and quotes are not part of the answer
    ('"The answer is 7."', "7"),
    ("x = 9?", "9"),
    ("The answer is 5, no wait, the final answer is: 7", "7"),
    ("**Answer:** 12", "12"),
    ("We compute 3 + 4\nx = 7.", "7"),
    ("I counted 3 cats and 12 dogs", "12"),
    ("It totals 1,000 apples", "1,000"),
    ("Half is 1/2", "1/2"),
    ("It is -4 degrees", "-4"),
    ("pages 3-5", "5"),
    ("No numbers at all", None),
    (r"unbalanced \boxed{3", "3"),  # no closing brace: not a boxed answer, falls back to the last number
])
def test_extract_final_answer(text, expected):
    assert extract_final_answer(text) == expected


def test_last_boxed_nested():
    assert last_boxed(r"\boxed{\frac{1}{\sqrt{2}}} and \fbox{x}") == "x"
    assert last_boxed("nothing") is None


@pytest.mark.parametrize("answer, value", [
    ("42", 42), ("-7", -7), ("+3", 3), ("0.5", Fraction(1, 2)), (".25", Fraction(1, 4)), ("1,000", 1000),
    ("1,234,567.5", Fraction(2469135, 2)), ("3/4", Fraction(3, 4)), ("-3/4", Fraction(-3, 4)),
    (r"\frac{3}{4}", Fraction(3, 4)), (r"\dfrac{1}{2}", Fraction(1, 2)), (r"\tfrac12", Fraction(1, 2)),
    (r"-\frac{1}{2}", Fraction(-1, 2)), (r"\frac{-1}{2}", Fraction(-1, 2)), (r"-\frac{-1}{2}", Fraction(1, 2)),
    ("50%", 50), (r"50\%", 50), ("42 days", 42), ("5 km/h", 5), (r"12\text{ cm}", 12), ("8.", 8),
    ("$1.5$", Fraction(3, 2)), ("x = 5", 5), ("−2", -2), ("1e3", 1000),
])
def test_parse_number(answer, value):
    assert parse_number(answer) == value


@pytest.mark.parametrize("answer", ["x+1", "New Delhi", "1,2", r"\sqrt{2}", "3/0", "[1, 2]", "5 apples and 3 pears"])
def test_parse_number_rejects_non_numbers(answer):
    assert parse_number(answer) is None


@pytest.mark.parametrize("response, reference", [
    ("The answer is 42.", "42"),
    ("The answer is 42.0", "42"),
    ("That makes 1,000 in total", "1000"),
    ("It is 0.5", "1/2"),
    (r"$\boxed{\frac{3}{4}}$", "0.75"),
    ("0.75", r"\frac{3}{4}"),
    (r"\boxed{\dfrac{1}{2}}", r"\boxed{0.5}"),
    ("The temperature drops to -3.", "-3"),
    (r"\boxed{-\frac{6}{8}}", "-0.75"),
    ("So we need 42 days.", "42"),
    (r"\boxed{\text{New Delhi}}", "new  delhi"),
    (r"\boxed{3\sqrt{2}}", r"3 \sqrt{2}"),
])
def test_equal(response, reference):
    assert math_answer_equal(response, reference)


@pytest.mark.parametrize("response, reference", [
    ("The answer is 41.", "42"),
    ("It is 0.5", "1/3"),
    (r"\boxed{\frac{3}{4}}", "0.7"),
    ("The answer is 3.", "-3"),
    ("1,000", "100"),
    ("no answer here", "42"),
    (r"\boxed{\text{Mumbai}}", "New Delhi"),
    ("The answer is one half.", "1/2"),  # a number against words: no guessing
    (r"\boxed{x+1}", "x+2"),
])
def test_not_equal(response, reference):
    assert not math_answer_equal(response, reference)


def test_answers_equal_is_exact_not_float():
    assert not answers_equal("0.3333333333", "1/3")
    assert answers_equal("0.1", "1/10")


SYMBOLIC = [(r"So the value is $\frac{1}{\sqrt2}$.", r"\frac{\sqrt2}{2}"),
            (r"The set is $\{2,1\}$", r"\{1,2\}"),
            (r"It is $2+3x$.", "3x+2"),
            (r"\boxed{2+3x}", "3x+2"),
            ("The answer is 1/2", r"50\%")]


@pytest.mark.parametrize("response, reference", SYMBOLIC)
def test_symbolic_equivalence_through_math_verify(response, reference):
    pytest.importorskip("math_verify", reason="math-verify is a dev dependency (extra: posttrain[math])")
    assert math_answer_equal(response, reference)


def test_math_verify_says_no_to_different_answers():
    pytest.importorskip("math_verify", reason="math-verify is a dev dependency (extra: posttrain[math])")
    assert not math_answer_equal(r"$x = 3$", "4")
    assert not math_answer_equal(r"The set is $\{1,3\}$", r"\{1,2\}")
    assert not math_answer_equal("I cannot say.", r"\frac{1}{2}")


def test_without_math_verify_the_own_comparison_decides(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_math_verify(name, *args, **kwargs):
        if name.startswith("math_verify"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_math_verify)
    assert math_answer_equal("The answer is 1/2", "0.5")  # numeric: exact fractions
    assert not math_answer_equal(r"It is $2+3x$.", "3x+2")  # symbolic: needs math-verify
