"""``style_faults`` on hand-made responses: which faults, in which order, and when a constraint asks for the style."""

from posttrain.verifiers.style import style_faults

LOOP = "The sky is blue. The sky is blue. The sky is blue."


def test_faults_in_fixed_order():
    assert style_faults("Tides follow the moon.", {}) == []
    assert style_faults(LOOP, {}) == ["repetition"]
    assert style_faults('"Tides follow the moon."', {}) == ["unrequested_quotes"]
    assert style_faults("TIDES FOLLOW THE MOON.", {}) == ["unrequested_caps"]
    assert style_faults("tides follow the moon.", {}) == ["unrequested_lowercase"]
    assert style_faults('"THE SKY IS BLUE. THE SKY IS BLUE."', {}) == ["repetition", "unrequested_quotes",
                                                                       "unrequested_caps"]


def test_asked_for_styles_are_no_fault():
    quotes = {"constraints": [{"kind": "double_quotes"}]}
    caps = {"constraint": "all_caps"}
    lower = {"constraints": [{"kind": "lowercase", "args": {}}]}
    assert style_faults('"Tides follow the moon."', quotes) == []
    assert style_faults("TIDES FOLLOW THE MOON.", caps) == []
    assert style_faults("tides follow the moon.", lower) == []
    # asking for one does not excuse the other
    assert style_faults('"TIDES FOLLOW THE MOON."', quotes) == ["unrequested_caps"]
    # a malformed constraint spec asks for nothing
    assert style_faults('"Tides follow the moon."', {"constraints": "oops"}) == ["unrequested_quotes"]
