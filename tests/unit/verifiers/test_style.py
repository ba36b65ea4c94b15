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


def test_echoes_instruction_counts_only_the_instruction_wording():
    from posttrain.verifiers.style import echoes_instruction

    prompt = "Describe a fox crossing a frosty field. Capital letters are not allowed anywhere in this response."
    # five words in a row of the instruction sentence, case and punctuation ignored
    assert echoes_instruction(prompt, "A fox runs. CAPITAL LETTERS, are not allowed anywhere!")
    assert not echoes_instruction(prompt, "a fox. capital letters are banned here.")  # four words in a row only
    # restating the task is no echo, nor is a one-sentence prompt
    assert not echoes_instruction(prompt, "Describe a fox crossing a frosty field: it trots.")
    assert not echoes_instruction("Describe a fox crossing a frosty field.", "Describe a fox crossing a frosty field.")
    # quoted text is what the prompt asks to be written; an apostrophe inside a word quotes nothing
    asks = ("What is rain? Don't forget to end with 'that is all for today then'. "
            "Put <<a title in brackets here>> first.")
    assert not echoes_instruction(asks, "<<Rain falls down on us>> Water falls. That is all for today then.")
    assert not echoes_instruction(asks, "A title in brackets here, rain.")
    assert echoes_instruction(asks, "Rain. Don't forget to end with it.")
    # runs the task sentence shares are left out even when an instruction repeats them
    shared = "Write about the old stone bridge. Mention the old stone bridge twice."
    assert not echoes_instruction(shared, "I love the old stone bridge.")
    assert echoes_instruction(shared, "Mention the old stone bridge twice.")
