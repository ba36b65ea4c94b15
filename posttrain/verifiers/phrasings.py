"""Ways to ask for each instruction constraint: for every verifier kind (``constraints.py``), an argument sampler
and 3-5 independently worded instruction sentences, plus which kinds cannot share one prompt.

Used to write training prompts (``examples/data/make_prompts.py``) and to turn a model's plain replies into
instruction-following examples (``posttrain/data/augment.py``: a task + sampled constraint sentences, the reply
repaired to obey them). Written for this project; the eval suites' phrasings are different on purpose
(``tests/unit/examples/test_make_prompts.py`` checks that no 6-word run is shared).
"""

from __future__ import annotations

KEYWORDS = ["simple", "today", "friendly", "careful", "bright", "together", "small", "morning", "useful", "calm",
            "happy", "clear", "gentle", "quick", "fresh"]
OPENERS = ["Sure thing", "Here is my answer", "Good question", "Absolutely", "Well", "Alright", "Of course"]
CLOSERS = ["Thanks for reading.", "That is all.", "Hope this helps!", "The end.", "Have a great day.",
           "Any other questions?"]
FORBIDDEN = ["very", "really", "thing", "good", "nice", "just"]


def _kw(rng):
    return {"keywords": rng.sample(KEYWORDS, rng.choice([1, 2]))}


def _keywords_text(args):
    return " and ".join(f"'{k}'" for k in args["keywords"])


# kind -> (args sampler, [phrasing templates]). Each template is a function of args -> sentence. Phrasings of one
# kind differ in wording and position of the key words, not only in punctuation.
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
        lambda a: f"Give exactly {a['n']} bullet points (lines starting with '- ') and nothing else.",
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
        lambda a: "Use precisely two paragraphs divided by the markdown divider ***.",
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
    "paragraph_first_word": (lambda rng: {"n": 2, "nth": 2, "word": rng.choice(["then", "also", "finally", "so"])}, [
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
