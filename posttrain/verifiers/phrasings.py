"""Ways to ask for each instruction constraint: for every verifier kind (``constraints.py``), an argument sampler
and 3-5 independently worded instruction sentences, plus which kinds cannot share one prompt; ``MORE_PHRASINGS``
adds more wordings per kind for constraint augmentation only.

Used to write training prompts (``examples/data/make_prompts.py``) and to turn a model's plain replies into
instruction-following examples (``posttrain/data/augment.py``: a task + sampled constraint sentences, the reply
repaired to obey them). Written for this project; the eval suites' phrasings are different on purpose
(``tests/unit/eval/test_suites.py`` checks that no 6-word run is shared, for both tables).
"""

from __future__ import annotations

KEYWORDS = ["simple", "today", "friendly", "careful", "bright", "together", "small", "morning", "useful", "calm",
            "happy", "clear", "gentle", "quick", "fresh"]
OPENERS = ["Sure thing", "Here is my answer", "Good question", "Absolutely", "Well", "Alright", "Of course"]
CLOSERS = ["Thanks for reading.", "That is all.", "Hope this helps!", "The end.", "Have a great day.",
           "Any other questions?"]
FORBIDDEN = ["very", "really", "thing", "good", "nice", "just"]
FIRST_WORDS = ["then", "also", "finally", "so"]  # the word that opens a second paragraph


def _kw(rng):
    return {"keywords": rng.sample(KEYWORDS, rng.choice([1, 2]))}


def _keywords_text(args):
    return " and ".join(f"'{k}'" for k in args["keywords"])


def _naming(template, **args):
    """``template``, marked as naming some of its constraint's arguments itself (the bullet marker, the paragraph
    divider): a row drawn with it gets those arguments (``fixed_args``), so that its verifier holds the reply to
    what the sentence literally asks and the repaired demonstration writes it. No random draw is involved, so
    marking a template changes no other row."""
    template.fixed = args
    return template


def fixed_args(template) -> dict:
    """The arguments a phrasing template names itself (``_naming``); {} for the others."""
    return dict(getattr(template, "fixed", {}))


# kind -> (args sampler, [phrasing templates]). Each template is a function of args -> sentence. Phrasings of one
# kind differ in wording and position of the key words, not only in punctuation. A template that names a marker
# ('- ' bullets, a *** divider) carries it as a fixed argument (``_naming``).
CONSTRAINTS = {
    "lowercase": (lambda rng: {}, [
        lambda a: "Write everything in lowercase letters.",
        lambda a: "Do not use any capital letters at all.",
        lambda a: "Your whole reply must be in lower case, including the first word.",
        lambda a: "Keep every single letter small: no uppercase anywhere.",
        lambda a: "Use only lowercase characters in your response.",
    ]),
    "all_caps": (lambda rng: {}, [
        lambda a: "Write your entire response in capital letters.",
        lambda a: "USE ONLY UPPERCASE LETTERS IN YOUR REPLY.",
        lambda a: "Every letter of your answer should be a capital letter.",
        lambda a: "Reply in all caps, as if you were shouting.",
        lambda a: "No lowercase letters are allowed in your response.",
    ]),
    "no_commas": (lambda rng: {}, [
        lambda a: "Do not use a single comma.",
        lambda a: "Avoid commas entirely in your reply.",
        lambda a: "Your response must contain no commas at all.",
        lambda a: "Write it without any comma characters.",
        lambda a: "Commas are forbidden here.",
    ]),
    "word_count": (lambda rng: {"max": rng.choice([25, 30, 40, 50])}, [
        lambda a: f"Keep it under {a['max']} words.",
        lambda a: f"Use no more than {a['max']} words.",
        lambda a: f"Your reply should be at most {a['max']} words long.",
        lambda a: f"Be brief: {a['max']} words maximum.",
        lambda a: f"Limit yourself to {a['max']} words or fewer.",
    ]),
    "sentence_count": (lambda rng: {"max": rng.choice([2, 3])}, [
        lambda a: f"Answer in at most {a['max']} sentences.",
        lambda a: f"Use no more than {a['max']} sentences.",
        lambda a: f"Your response must not exceed {a['max']} sentences.",
        lambda a: f"Write {a['max']} sentences or fewer.",
    ]),
    "bullet_list": (lambda rng: {"n": rng.choice([2, 3, 4])}, [
        lambda a: f"Format your answer as exactly {a['n']} bullet points, using markdown bullets such as '* '.",
        _naming(lambda a: f"Give exactly {a['n']} bullet points (lines starting with '- ') and nothing else.",
                markers="-"),
        lambda a: f"Respond with a markdown list of precisely {a['n']} bullets.",
        lambda a: f"Your reply must be a bulleted list with {a['n']} items, no more and no fewer.",
    ]),
    "include_keywords": (_kw, [
        lambda a: f"Make sure to include the word {_keywords_text(a)}.",
        lambda a: f"Your response must mention {_keywords_text(a)}.",
        lambda a: f"Use the word {_keywords_text(a)} somewhere in your answer.",
        lambda a: f"Be sure that {_keywords_text(a)} appears in what you write.",
    ]),
    "exclude_keywords": (lambda rng: {"keywords": rng.sample(FORBIDDEN, 2)}, [
        lambda a: f"Do not use the words {_keywords_text(a)}.",
        lambda a: f"Avoid saying {_keywords_text(a)} anywhere.",
        lambda a: f"The words {_keywords_text(a)} must not appear in your reply.",
        lambda a: f"Write it without using {_keywords_text(a)}.",
    ]),
    "starts_with_phrase": (lambda rng: {"phrase": rng.choice(OPENERS)}, [
        lambda a: f"Begin your reply with the words \"{a['phrase']}\".",
        lambda a: f"Your very first words must be: {a['phrase']}",
        lambda a: f"Open your answer with '{a['phrase']}'.",
        lambda a: f"Start with exactly this phrase: {a['phrase']}",
    ]),
    "ends_with_phrase": (lambda rng: {"phrase": rng.choice(CLOSERS)}, [
        lambda a: f"Finish your response with the exact phrase \"{a['phrase']}\"",
        lambda a: f"The last words of your reply must be: {a['phrase']}",
        lambda a: f"Close with '{a['phrase']}' and write nothing after it.",
        lambda a: f"End with this exact sentence: {a['phrase']}",
    ]),
    "postscript": (lambda rng: {}, [
        lambda a: "At the end, add a postscript starting with P.S.",
        lambda a: "Include a P.S. line after the main text.",
        lambda a: "Finish with a short postscript that begins with 'P.S.'.",
        lambda a: "Add a note at the very end that starts with P.S.",
    ]),
    "title": (lambda rng: {}, [
        lambda a: "Give your answer a title wrapped in double angular brackets, like <<my title>>.",
        lambda a: "Put a title at the top inside << and >>.",
        lambda a: "Start with a title written as <<Title>>.",
        lambda a: "Your reply needs a title enclosed in double angle brackets, for example <<A Good Day>>.",
    ]),
    "double_quotes": (lambda rng: {}, [
        lambda a: "Put your whole response inside double quotation marks.",
        lambda a: "Enclose the entire reply in double quotes.",
        lambda a: "Your answer must begin and end with a double quote character.",
        lambda a: "Wrap everything you write in \"double quotes\".",
    ]),
    "highlighted_sections": (lambda rng: {"n": rng.choice([1, 2])}, [
        lambda a: f"Highlight at least {a['n']} part(s) with markdown, like *this part*.",
        lambda a: f"Use *asterisks* to emphasize at least {a['n']} phrase(s).",
        lambda a: f"Mark at least {a['n']} key phrase(s) in italics with single asterisks, e.g. *key idea*.",
        lambda a: f"Include {a['n']} or more highlighted sections in *markdown italics*.",
    ]),
    "paragraph_count": (lambda rng: {"n": 2}, [
        lambda a: "Write exactly 2 paragraphs separated by a blank line.",
        lambda a: "Your answer must have two paragraphs, with an empty line between them.",
        lambda a: "Split your reply into 2 paragraphs (a blank line between them).",
        _naming(lambda a: "Use precisely two paragraphs divided by the markdown divider ***.", divider="***"),
    ]),
    "placeholders": (lambda rng: {"n": rng.choice([1, 2])}, [
        lambda a: f"Include at least {a['n']} placeholder(s) in square brackets, such as [name].",
        lambda a: f"Leave at least {a['n']} blank(s) to fill in, written in square brackets like [date].",
        lambda a: f"Use {a['n']} or more placeholders like [address] in your text.",
    ]),
    "keyword_frequency": (lambda rng: {"keyword": rng.choice(KEYWORDS), "n": rng.choice([2, 3]),
                                       "relation": "at least"}, [
        lambda a: f"Use the word '{a['keyword']}' at least {a['n']} times.",
        lambda a: f"The word {a['keyword']} should appear {a['n']} or more times in your reply.",
        lambda a: f"Mention '{a['keyword']}' no fewer than {a['n']} times.",
        lambda a: f"Say \"{a['keyword']}\" {a['n']} times or more.",
    ]),
    "letter_frequency": (lambda rng: {"letter": rng.choice("aeinorst"), "n": rng.choice([5, 8, 10]),
                                      "relation": "at least"}, [
        lambda a: f"The letter '{a['letter']}' must appear at least {a['n']} times.",
        lambda a: f"Include the letter {a['letter']} {a['n']} or more times.",
        lambda a: f"Make sure your text contains the letter \"{a['letter']}\" no fewer than {a['n']} times.",
    ]),
    "sections": (lambda rng: {"n": rng.choice([2, 3]), "marker": "SECTION"}, [
        lambda a: f"Divide your reply into {a['n']} sections; the first is headed SECTION 1, the next SECTION 2, etc.",
        lambda a: f"Organise the answer as {a['n']} parts; label each part with a line 'SECTION <number>'.",
        lambda a: f"Write {a['n']} parts, each opening with the word SECTION and its number.",
        lambda a: f"Your response needs exactly {a['n']} sections marked SECTION 1 to SECTION {a['n']}.",
    ]),
    "repeat_prompt": (lambda rng: {}, [
        lambda a: "Before you answer, repeat my question word for word (leave out this sentence).",
        lambda a: "First copy the request above exactly, then give your answer. Do not copy this sentence.",
        lambda a: "Start by writing out the first sentence of this message unchanged, then reply to it.",
        lambda a: "Repeat the request (without this instruction) at the top of your reply, then answer it.",
    ]),
    "two_responses": (lambda rng: {}, [
        lambda a: "Give two different answers, separated by six asterisks: ******",
        lambda a: "Write two distinct responses and put ****** between them.",
        lambda a: "Provide two alternative replies with ****** on its own line between them.",
        lambda a: "I want two versions of the answer; separate them with ******.",
    ]),
    "exact_word_count": (lambda rng: {"n": rng.choice([5, 8, 10, 12])}, [
        lambda a: f"Answer in exactly {a['n']} words.",
        lambda a: f"The reply has to contain {a['n']} words exactly.",
        lambda a: f"Use {a['n']} words, not one more and not one fewer.",
        lambda a: f"Write a single line of exactly {a['n']} words.",
    ]),
    "exclamation_sentence": (lambda rng: {}, [
        lambda a: "Answer in one sentence that ends with an exclamation mark.",
        lambda a: "Give one enthusiastic sentence that ends in '!'.",
        lambda a: "Use just one sentence, and finish it with an exclamation point.",
        lambda a: "One sentence only, closing with !",
    ]),
    "capital_word_frequency": (lambda rng: {"n": rng.choice([2, 3, 4]), "relation": "at least"}, [
        lambda a: f"Write at least {a['n']} words entirely in CAPITAL letters.",
        lambda a: f"Put {a['n']} or more words in capitals (LIKE THIS) to stress them.",
        lambda a: f"Have {a['n']} or more words that are fully capitalised.",
        lambda a: f"Emphasise at least {a['n']} words by writing them in UPPERCASE.",
    ]),
    "paragraph_first_word": (lambda rng: {"n": 2, "nth": 2, "word": rng.choice(FIRST_WORDS)}, [
        lambda a: f"Write {a['n']} paragraphs separated by a blank line; the second paragraph must begin with the "
                  f"word '{a['word']}'.",
        lambda a: f"Use two paragraphs (blank line between them) and start paragraph 2 with \"{a['word']}\".",
        lambda a: f"Your reply has exactly two paragraphs, and the second one opens with the word {a['word']}.",
    ]),
    "json_answer": (lambda rng: {}, [
        lambda a: "Reply only with a JSON object of the form {\"answer\": \"...\"}.",
        lambda a: "Format the whole response as JSON: one object whose only key is \"answer\".",
        lambda a: "Output JSON and nothing else, like {\"answer\": \"your text\"}.",
        lambda a: "Wrap your reply in a JSON object with a single field called answer.",
    ]),
    "constrained_response": (lambda rng: {}, [
        # the three options are IFEval's fixed answers (content, not phrasing); words between them keep this
        # wording from running word for word into the OOD suite's lists of the same three sentences
        lambda a: "End with 'My answer is yes.' if you agree, 'My answer is no.' if you disagree, or "
                  "'My answer is maybe.' if you are unsure.",
        lambda a: "Give your verdict at the end: for yes write My answer is yes. For no write My answer is no. "
                  "When unsure write My answer is maybe.",
        lambda a: "Close with a verdict sentence (agreeing: My answer is yes. disagreeing: My answer is no. "
                  "undecided: My answer is maybe.)",
    ]),
    "forbidden_characters": (lambda rng: {"chars": rng.choice(["!", "?", ";", "-", "z"])}, [
        lambda a: f"Do not use the character '{a['chars']}' anywhere.",
        lambda a: f"The character {a['chars']} must not appear in your answer.",
        lambda a: f"Write it without a single '{a['chars']}'.",
    ]),
}

# Constraint kinds that cannot sensibly share one prompt (one would make the other impossible or trivial).
CONFLICTS = [{"lowercase", "all_caps"}, {"bullet_list", "paragraph_count"}, {"double_quotes", "starts_with_phrase"},
             {"double_quotes", "ends_with_phrase"}, {"double_quotes", "title"}, {"double_quotes", "bullet_list"},
             {"double_quotes", "postscript"}, {"ends_with_phrase", "postscript"}, {"all_caps", "starts_with_phrase"},
             {"all_caps", "ends_with_phrase"}, {"lowercase", "starts_with_phrase"}, {"lowercase", "ends_with_phrase"},
             {"all_caps", "postscript"}, {"lowercase", "postscript"}, {"all_caps", "title"},
             {"word_count", "paragraph_count"}, {"sentence_count", "bullet_list"},
             {"sentence_count", "paragraph_count"}, {"all_caps", "include_keywords"},
             {"all_caps", "placeholders"}, {"lowercase", "placeholders"}]
# the whole-reply formats (JSON, one sentence, a fixed word count, two answers, a repeated request) combine with
# nothing else: one of them fixes the shape of the entire reply
SOLO = {"json_answer", "exclamation_sentence", "exact_word_count", "two_responses", "repeat_prompt"}


def compatible(kinds: list[str]) -> bool:
    if len(kinds) > 1 and set(kinds) & SOLO:
        return False
    if "sections" in kinds and {"paragraph_count", "paragraph_first_word", "bullet_list"} & set(kinds):
        return False
    if "paragraph_first_word" in kinds and {"paragraph_count", "bullet_list", "word_count", "sentence_count"} & set(kinds):
        return False
    if "capital_word_frequency" in kinds and {"lowercase", "all_caps"} & set(kinds):
        return False
    return not any(set(pair) <= set(kinds) for pair in CONFLICTS)


# More ways to ask, for constraint augmentation only (``data/augment.py`` with ``more_phrasings``): the shipped
# prompt files (examples/data) were written from ``CONSTRAINTS`` alone and stay as they are. Issue 16: the kinds
# that never transferred out of distribution (lowercase, one exclamation sentence, a repeated request, keywords) had
# 4-5 training phrasings each, every one of them a variation on one sentence pattern. Each entry: kind -> [(args
# sampler or None for the kind's own, [templates])]; a template's index continues the kind's ``CONSTRAINTS`` list,
# so "kind/i" names one wording in both. word_count also gets its minimum-length side here (a reply that already
# has enough words passes unchanged), so that word limits are not all caps on length.
MORE_PHRASINGS = {
    "lowercase": [(None, [
        lambda a: "Please reply using lowercase only.",
        lambda a: "Write the answer with no uppercase letters, not even at the beginning.",
        lambda a: "Make sure none of the letters you write are capitals.",
        lambda a: "The response should be entirely in small letters.",
        lambda a: "Stick to lowercase from the first letter to the last.",
        lambda a: "Avoid uppercase: every word, names included, goes in lowercase.",
    ])],
    "all_caps": [(None, [
        lambda a: "Please answer using uppercase letters only.",
        lambda a: "Type the whole reply with caps lock on.",
        lambda a: "Make every word of the answer uppercase.",
        lambda a: "Capitalise every single letter you write.",
    ])],
    "no_commas": [(None, [
        lambda a: "Leave out commas completely.",
        lambda a: "Do not put any commas in the answer.",
        lambda a: "Please answer with zero commas.",
        lambda a: "No comma may appear in what you write.",
    ])],
    "word_count": [(None, [
        lambda a: f"Answer in {a['max']} words or less.",
        lambda a: f"Do not go over {a['max']} words.",
        lambda a: f"The reply must stay below {a['max'] + 1} words.",
    ]), (lambda rng: {"min": rng.choice([15, 20, 25, 30, 40])}, [
        lambda a: f"Write at least {a['min']} words.",
        lambda a: f"Your answer should be {a['min']} words or longer.",
        lambda a: f"Use a minimum of {a['min']} words.",
        lambda a: f"Make the reply no shorter than {a['min']} words.",
        lambda a: f"I need {a['min']} words or more.",
    ])],
    "bullet_list": [(None, [
        _naming(lambda a: f"Answer as a list of {a['n']} items, each on its own line starting with '* '.",
                markers="*"),
        lambda a: f"Use {a['n']} markdown bullet points, nothing more.",
        lambda a: f"Break the reply into exactly {a['n']} bulleted lines.",
        lambda a: f"List {a['n']} points, one per bullet.",
    ])],
    "include_keywords": [(None, [
        lambda a: f"Include {_keywords_text(a)} in the reply.",
        lambda a: f"The answer should contain {_keywords_text(a)}.",
        lambda a: f"Somewhere, use {_keywords_text(a)}.",
        lambda a: f"Please work in {_keywords_text(a)}.",
        lambda a: f"Do not leave out {_keywords_text(a)}: it has to be in the text.",
    ])],
    "starts_with_phrase": [(None, [
        lambda a: f"The reply should start with \"{a['phrase']}\".",
        lambda a: f"Kick off with the phrase {a['phrase']}.",
        lambda a: f"First write '{a['phrase']}', then continue.",
        lambda a: f"Make \"{a['phrase']}\" the opening words.",
    ])],
    "ends_with_phrase": [(None, [
        lambda a: f"The final sentence must be \"{a['phrase']}\"",
        lambda a: f"Wrap up with '{a['phrase']}' as the very last thing.",
        lambda a: f"Conclude the reply with: {a['phrase']}",
        lambda a: f"Nothing may follow the closing words {a['phrase']}",
    ])],
    "postscript": [(None, [
        lambda a: "Below the answer, add a P.S. with an extra thought.",
        lambda a: "Close with a postscript (P.S.).",
        lambda a: "Append a line beginning with P.S. at the bottom.",
        lambda a: "After you finish, tack on a P.S.",
    ])],
    "title": [(None, [
        lambda a: "Title the reply, using double angle brackets: <<...>>.",
        lambda a: "The first line should be a title in <<double brackets>>.",
        lambda a: "Add a heading like <<Heading Here>> before the text.",
    ])],
    "highlighted_sections": [(None, [
        lambda a: f"Italicise {a['n']} or more phrases with single asterisks (*like this*).",
        lambda a: f"Emphasise at least {a['n']} bit(s) of the text using *asterisks*.",
        lambda a: f"Put at least {a['n']} phrase(s) between single asterisks to highlight them.",
    ])],
    "paragraph_count": [(None, [
        lambda a: "Write two paragraphs, leaving an empty line between them.",
        lambda a: "The answer should consist of 2 paragraphs; put one empty line between them.",
        lambda a: "Answer in a pair of paragraphs split by one empty line.",
    ])],
    "placeholders": [(None, [
        lambda a: f"Add {a['n']} or more fill-in slots in square brackets, for example [city].",
        lambda a: f"Use square-bracket placeholders such as [time], at least {a['n']} of them.",
        lambda a: f"Leave {a['n']} or more gaps marked with brackets like [item].",
    ])],
    "keyword_frequency": [(None, [
        lambda a: f"Repeat the word '{a['keyword']}' at least {a['n']} times.",
        lambda a: f"'{a['keyword']}' must be used {a['n']} times or more.",
        lambda a: f"Work the word {a['keyword']} in {a['n']} or more times.",
    ])],
    "sections": [(None, [
        lambda a: f"Split the reply into {a['n']} parts, headed SECTION 1, then SECTION 2, etc.",
        lambda a: f"Structure it as {a['n']} sections, each starting with a line 'SECTION' plus its number.",
        lambda a: f"Make {a['n']} numbered sections (SECTION 1 ...).",
    ])],
    "repeat_prompt": [(None, [
        lambda a: "Start by restating my request exactly as written (not this sentence), then answer.",
        lambda a: "Copy my question verbatim as your first line, leaving this instruction out, and then answer it.",
        lambda a: "Quote the request back word for word first (skip this line), then respond.",
        lambda a: "Open with my request repeated exactly, without this sentence, followed by your reply.",
    ])],
    "two_responses": [(None, [
        lambda a: "Give me two separate answers divided by ******.",
        lambda a: "Answer twice, differently, with a line of six asterisks (******) in between.",
        lambda a: "Write two alternative replies, separated by ******.",
    ])],
    "exact_word_count": [(None, [
        lambda a: f"Reply with precisely {a['n']} words.",
        lambda a: f"Your answer must be {a['n']} words long, exactly.",
        lambda a: f"Exactly {a['n']} words, please.",
    ])],
    "exclamation_sentence": [(None, [
        lambda a: "Reply with a single sentence ending in an exclamation mark.",
        lambda a: "Just one excited sentence, please, and end it with '!'.",
        lambda a: "Write only one sentence and put ! at the end of it.",
        lambda a: "Sum it up in one sentence that closes with an exclamation point.",
        lambda a: "Keep it to one line: a single sentence finishing with !",
    ])],
    "capital_word_frequency": [(None, [
        lambda a: f"Pick at least {a['n']} words and write them fully in uppercase.",
        lambda a: f"Use at least {a['n']} fully uppercase words.",
        lambda a: f"Make {a['n']} or more whole words uppercase so that they stand out.",
    ])],
    "paragraph_first_word": [(None, [
        lambda a: f"Write two paragraphs with an empty line between; the second one starts with '{a['word']}'.",
        lambda a: f"Answer in 2 paragraphs; the second paragraph has to start with the word {a['word']}.",
    ])],
    "json_answer": [(None, [
        lambda a: "Answer with JSON only: {\"answer\": \"...\"}.",
        lambda a: "Return a JSON object holding your reply under the key \"answer\".",
        lambda a: "The output must be valid JSON with one key, answer.",
    ])],
}


# Wider argument pools, for constraint augmentation only (``data/augment.py`` with ``more_arguments``): the words
# and phrases a prompt asks the reply to contain, open or close with. With the pools above alone a model sees 15
# keywords, 7 openers, 6 closers and 4 paragraph openers over a whole training run, so it can learn which of those
# to write instead of copying the one the prompt names. The eval suites ask for other words (tests/unit/eval/
# test_suites.py checks that no value here is an argument of a builtin suite).
MORE_KEYWORDS = ["mountain", "pencil", "ladder", "music", "paper", "winter", "summer", "journey", "signal", "energy",
                 "patient", "humble", "warm", "quiet", "strong", "open", "local", "modern", "ancient", "colorful",
                 "healthy", "safe", "reliable", "natural", "daily", "busy", "early", "hidden", "famous", "special",
                 "common", "precise", "soft", "clean", "bold", "wise", "lucky", "proud", "brave", "plain", "tiny",
                 "huge", "copper", "golden", "ocean", "forest", "family", "moment", "future", "pebble"]
MORE_OPENERS = ["Great question", "Let me walk you through it", "Long story short", "Here we go", "Glad to help",
                "First of all", "Okay", "In brief", "Nice one", "Simply put", "Good point", "Now then", "Right",
                "Here is the idea", "My answer is this", "Honestly", "Put simply", "Glad you asked", "Let us see",
                "Briefly", "Interesting question", "The short answer", "Here is what I know", "To answer you"]
MORE_CLOSERS = ["Take it easy.", "Best wishes.", "Good luck!", "Enjoy!", "Farewell.", "That sums it up.",
                "I hope that answers it.", "Let me know what you think.", "Cheers!", "All the best.",
                "Happy learning!", "Stay safe.", "Talk soon.", "With thanks.", "That covers it.", "Have fun!",
                "Thank you.", "Enough said.", "Done.", "Bye for now.", "Warm regards.", "More soon."]
MORE_FIRST_WORDS = ["again", "likewise", "besides", "even", "overall", "later", "instead", "yet", "thus",
                    "first", "second", "here"]

# kind -> its ``CONSTRAINTS`` sampler drawing from the pools above as well (the same arguments otherwise)
MORE_ARGUMENTS = {
    "include_keywords": lambda rng: {"keywords": rng.sample(KEYWORDS + MORE_KEYWORDS, rng.choice([1, 2]))},
    "keyword_frequency": lambda rng: {"keyword": rng.choice(KEYWORDS + MORE_KEYWORDS), "n": rng.choice([2, 3]),
                                      "relation": "at least"},
    "starts_with_phrase": lambda rng: {"phrase": rng.choice(OPENERS + MORE_OPENERS)},
    "ends_with_phrase": lambda rng: {"phrase": rng.choice(CLOSERS + MORE_CLOSERS)},
    "paragraph_first_word": lambda rng: {"n": 2, "nth": 2, "word": rng.choice(FIRST_WORDS + MORE_FIRST_WORDS)},
}


def phrasing_groups(kind: str, more: bool = False, more_arguments: bool = False) -> list[tuple]:
    """[(args sampler, [templates])] of one kind: its ``CONSTRAINTS`` entry, then (``more``) its
    ``MORE_PHRASINGS`` groups, a sampler of None meaning the kind's own. Template indices run on across groups.
    With ``more_arguments`` the kind's own sampler is its ``MORE_ARGUMENTS`` one where it has one."""
    sampler, templates = CONSTRAINTS[kind]
    if more_arguments:
        sampler = MORE_ARGUMENTS.get(kind, sampler)
    groups = [(sampler, templates)]
    if more:
        groups += [(s or sampler, t) for s, t in MORE_PHRASINGS.get(kind, [])]
    return groups
