import pytest

from posttrain.verifiers.match import exact_match, regex_match


def test_exact_match_options():
    assert exact_match("  Paris  is\n nice ", "Paris is nice")
    assert not exact_match("Paris  is nice", "Paris is nice", normalize_whitespace=False)
    assert not exact_match("paris", "Paris")
    assert exact_match("paris", "PARIS", ignore_case=True)
    assert not exact_match("Paris.", "Paris")
    assert exact_match("Paris!", "Paris", strip_punctuation=True)
    assert not exact_match("Paris", "London", ignore_case=True, strip_punctuation=True)


def test_regex_match_search_and_full():
    assert regex_match("The answer is 42.", r"\b42\b")
    assert not regex_match("The answer is 421.", r"\b42\b")
    assert regex_match("  42 ", r"\d+", full=True)
    assert not regex_match("answer 42", r"\d+", full=True)
    assert regex_match("YES", "yes", ignore_case=True)
    assert not regex_match("YES", "yes")


def test_regex_match_bad_pattern():
    with pytest.raises(ValueError, match=r"invalid regex '\(unclosed'"):
        regex_match("x", "(unclosed")
