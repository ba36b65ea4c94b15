"""Generate the shipped sample data for the SFT -> DPO -> KTO demo and tests.

    python examples/data/make_sample_data.py

writes, next to this script, deterministically (fixed seed, stdlib only):

- ``sft_demos.jsonl``      demonstrations ``{"messages": [...]}`` (one- and two-turn)
- ``pairs_train.jsonl``    preference pairs ``{"prompt", "chosen", "rejected", "category", "constraint",
                           "constraint_args", "rejected_kind"}``
- ``pairs_heldout.jsonl``  the same layout over subjects that never appear in any other file
- ``kto.jsonl``            unpaired rows ``{"prompt", "completion", "label", "category", "constraint",
                           "constraint_args", "kind"}``

Every prompt is a small factual question plus ONE plainly stated, programmatically checkable instruction
("Answer in all lowercase.", "Do not use any commas.", ...). A chosen reply is correct and obeys it. A rejected
reply either carries the same correct content but breaks the instruction (about 70%, a small edit), or obeys the
instruction with a wrong answer (about 30%). ``check(constraint, args, text)`` decides the instruction; the
script asserts that every chosen reply passes, every constraint-breaking reply fails and every wrong-answer reply
passes, and fails loudly otherwise.
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

SEED = 1234
HERE = Path(__file__).resolve().parent

N_SFT = 240
N_SFT_TWO_TURN = 20
N_PAIRS_TRAIN = 480
N_PAIRS_HELDOUT = 120
N_KTO = 300
WRONG_FRACTION = 0.3          # share of rejected replies that obey the format but answer wrongly
HELDOUT_FRACTION = 0.2        # share of each category's subjects reserved for pairs_heldout.jsonl
MAX_PROMPT_CHARS = 130        # ~35 tokens
MAX_REPLY_CHARS = 110         # ~30 tokens

# --------------------------------------------------------------------------------------------- constraints

ENDING_PHRASES = ["Hope this helps.", "Have a nice day.", "Thanks for asking."]
OPENING_PHRASES = ["Sure!", "Of course.", "Happy to help!"]

CONSTRAINTS = [
    "lowercase", "all_caps", "exclamation_sentence", "ends_with_phrase", "starts_with_phrase",
    "no_commas", "exact_word_count", "double_quotes", "bullet_list_2", "json_answer",
]


def instruction(constraint: str, args: dict) -> str:
    """The sentence appended to the question that states the constraint."""
    return {
        "lowercase": "Answer in all lowercase.",
        "all_caps": "Answer in ALL CAPITAL LETTERS.",
        "exclamation_sentence": "Answer in one sentence that ends with an exclamation mark.",
        "ends_with_phrase": f"End your answer with the phrase '{args.get('phrase')}'",
        "starts_with_phrase": f"Start your answer with '{args.get('phrase')}'",
        "no_commas": "Do not use any commas.",
        "exact_word_count": f"Answer in exactly {args.get('n')} words.",
        "double_quotes": "Wrap your entire answer in double quotes.",
        "bullet_list_2": "Answer with a bullet list of exactly 2 items using '- '.",
        "json_answer": 'Give the answer as JSON like {"answer": ...}.',
    }[constraint]


def check(constraint: str, args: dict, text: str) -> bool:
    """True when ``text`` obeys ``constraint`` (with its ``args``, string values as stored in the files)."""
    t = text.strip()
    if not t:
        return False
    has_letters = any(c.isalpha() for c in t)
    if constraint == "lowercase":
        return has_letters and t == t.lower()
    if constraint == "all_caps":
        return has_letters and t == t.upper()
    if constraint == "exclamation_sentence":
        return "\n" not in t and t.endswith("!") and len(t) > 1 and not any(c in ".!?" for c in t[:-1])
    if constraint == "ends_with_phrase":
        return t.endswith(args["phrase"]) and len(t) > len(args["phrase"])
    if constraint == "starts_with_phrase":
        return t.startswith(args["phrase"]) and len(t) > len(args["phrase"])
    if constraint == "no_commas":
        return "," not in t
    if constraint == "exact_word_count":
        return len(t.split()) == int(args["n"])
    if constraint == "double_quotes":
        return len(t) >= 3 and t[0] == '"' and t[-1] == '"'
    if constraint == "bullet_list_2":
        lines = t.split("\n")
        return len(lines) == 2 and all(line.startswith("- ") and line[2:].strip() for line in lines)
    if constraint == "json_answer":
        try:
            value = json.loads(t)
        except ValueError:
            return False
        return isinstance(value, dict) and list(value) == ["answer"] and value["answer"] not in (None, "")
    raise ValueError(f"unknown constraint {constraint!r}")


# --------------------------------------------------------------------------------------------- item tables

# (country as it reads inside a sentence, capital, a tempting wrong answer or "")
COUNTRIES = [
    ("France", "Paris", ""), ("Germany", "Berlin", "Munich"), ("Italy", "Rome", "Milan"),
    ("Spain", "Madrid", "Barcelona"), ("Portugal", "Lisbon", "Porto"), ("Japan", "Tokyo", "Osaka"),
    ("China", "Beijing", "Shanghai"), ("India", "New Delhi", "Mumbai"), ("Russia", "Moscow", ""),
    ("Egypt", "Cairo", "Alexandria"), ("Kenya", "Nairobi", "Mombasa"), ("Greece", "Athens", ""),
    ("Norway", "Oslo", "Bergen"), ("Sweden", "Stockholm", ""), ("Finland", "Helsinki", ""),
    ("Denmark", "Copenhagen", ""), ("Poland", "Warsaw", "Krakow"), ("Austria", "Vienna", "Salzburg"),
    ("Hungary", "Budapest", ""), ("Ireland", "Dublin", "Cork"), ("Belgium", "Brussels", "Antwerp"),
    ("the Netherlands", "Amsterdam", "Rotterdam"), ("Canada", "Ottawa", "Toronto"),
    ("Australia", "Canberra", "Sydney"), ("Brazil", "Brasilia", "Rio de Janeiro"),
    ("Argentina", "Buenos Aires", ""), ("Mexico", "Mexico City", ""), ("Peru", "Lima", ""),
    ("Chile", "Santiago", ""), ("Colombia", "Bogota", "Medellin"), ("Cuba", "Havana", ""),
    ("Thailand", "Bangkok", ""), ("Vietnam", "Hanoi", "Ho Chi Minh City"), ("South Korea", "Seoul", "Busan"),
    ("Indonesia", "Jakarta", ""), ("the Philippines", "Manila", ""), ("Iran", "Tehran", ""),
    ("Iraq", "Baghdad", "Basra"), ("Turkey", "Ankara", "Istanbul"), ("Saudi Arabia", "Riyadh", "Jeddah"),
    ("Pakistan", "Islamabad", "Karachi"), ("Nigeria", "Abuja", "Lagos"), ("Ethiopia", "Addis Ababa", ""),
    ("Ghana", "Accra", ""), ("Morocco", "Rabat", "Casablanca"), ("the Czech Republic", "Prague", "Brno"),
    ("Romania", "Bucharest", ""), ("Ukraine", "Kyiv", ""), ("Iceland", "Reykjavik", ""),
    ("New Zealand", "Wellington", "Auckland"), ("the United Kingdom", "London", ""),
    ("Switzerland", "Bern", "Zurich"), ("Nepal", "Kathmandu", ""), ("Bangladesh", "Dhaka", ""),
    ("Malaysia", "Kuala Lumpur", ""), ("Qatar", "Doha", ""), ("Jamaica", "Kingston", ""),
    ("Venezuela", "Caracas", ""), ("Uruguay", "Montevideo", ""), ("Croatia", "Zagreb", "Split"),
    ("Serbia", "Belgrade", ""), ("Bulgaria", "Sofia", ""), ("Lebanon", "Beirut", ""),
    ("Mongolia", "Ulaanbaatar", ""), ("Cambodia", "Phnom Penh", ""), ("Senegal", "Dakar", ""),
    ("Zimbabwe", "Harare", ""), ("Jordan", "Amman", ""), ("Algeria", "Algiers", "Oran"),
    ("Tunisia", "Tunis", ""), ("Ecuador", "Quito", "Guayaquil"),
]

# (unit from, unit to, factor)
UNITS = [
    ("kilometers", "meters", 1000), ("meters", "centimeters", 100), ("centimeters", "millimeters", 10),
    ("hours", "minutes", 60), ("minutes", "seconds", 60), ("days", "hours", 24), ("weeks", "days", 7),
    ("kilograms", "grams", 1000), ("liters", "milliliters", 1000), ("feet", "inches", 12),
    ("years", "months", 12),
]

# (word, opposite, a near-synonym of the word, used as the wrong answer)
OPPOSITES = [
    ("hot", "cold", "warm"), ("big", "small", "large"), ("fast", "slow", "quick"), ("happy", "sad", "glad"),
    ("tall", "short", "high"), ("wet", "dry", "damp"), ("full", "empty", "packed"), ("rich", "poor", "wealthy"),
    ("strong", "weak", "powerful"), ("loud", "quiet", "noisy"), ("clean", "dirty", "tidy"),
    ("love", "hate", "adore"), ("win", "lose", "prevail"), ("begin", "end", "start"), ("push", "pull", "shove"),
    ("thick", "thin", "dense"), ("heavy", "light", "hefty"), ("buy", "sell", "purchase"),
    ("brave", "cowardly", "bold"), ("cheap", "expensive", "inexpensive"), ("bright", "dim", "shiny"),
    ("smooth", "rough", "sleek"), ("sharp", "blunt", "pointed"), ("deep", "shallow", "profound"),
    ("wide", "narrow", "broad"), ("near", "far", "close"), ("always", "never", "forever"),
    ("true", "false", "correct"), ("remember", "forget", "recall"), ("arrive", "depart", "reach"),
    ("accept", "refuse", "agree"), ("friend", "enemy", "pal"), ("inside", "outside", "within"),
    ("success", "failure", "triumph"), ("laugh", "cry", "giggle"), ("safe", "dangerous", "secure"),
    ("polite", "rude", "courteous"), ("simple", "complex", "easy"), ("asleep", "awake", "sleeping"),
    ("entrance", "exit", "entry"), ("give", "take", "donate"), ("increase", "decrease", "grow"),
    ("fresh", "stale", "new"), ("open", "closed", "unlocked"), ("lazy", "hardworking", "idle"),
    ("generous", "selfish", "giving"), ("before", "after", "prior"),
]

# (thing, its colour)
COLOUR_THINGS = [
    ("a ripe banana", "yellow"), ("grass", "green"), ("fresh snow", "white"), ("coal", "black"),
    ("a ripe tomato", "red"), ("a carrot", "orange"), ("the clear daytime sky", "blue"), ("a lemon", "yellow"),
    ("milk", "white"), ("a crow", "black"), ("an eggplant", "purple"), ("a lime", "green"),
    ("chocolate", "brown"), ("a pumpkin", "orange"), ("blood", "red"), ("an emerald", "green"),
    ("a ruby", "red"), ("a sapphire", "blue"), ("charcoal", "black"), ("a strawberry", "red"),
    ("a cucumber", "green"), ("a raven", "black"), ("a flamingo", "pink"), ("cotton", "white"),
    ("a panda", "black and white"), ("a zebra", "black and white"), ("ketchup", "red"), ("mustard", "yellow"),
    ("a cherry", "red"), ("a dandelion", "yellow"), ("broccoli", "green"), ("a blueberry", "blue"),
    ("tar", "black"), ("salt", "white"), ("a lavender flower", "purple"), ("soil", "brown"),
]
COLOURS = ["red", "blue", "green", "yellow", "orange", "purple", "pink", "brown", "black", "white", "grey"]

# (animal, name of its young)
BABIES = [
    ("cow", "calf"), ("dog", "puppy"), ("cat", "kitten"), ("sheep", "lamb"), ("horse", "foal"),
    ("goose", "gosling"), ("duck", "duckling"), ("pig", "piglet"), ("bear", "cub"), ("kangaroo", "joey"),
    ("frog", "tadpole"), ("deer", "fawn"), ("goat", "kid"), ("swan", "cygnet"), ("owl", "owlet"),
    ("eagle", "eaglet"), ("hen", "chick"), ("seal", "pup"), ("lion", "cub"), ("elephant", "calf"),
    ("whale", "calf"), ("tiger", "cub"), ("giraffe", "calf"), ("butterfly", "caterpillar"),
]

# (animal, number of legs)
LEGS = [
    ("spider", 8), ("ant", 6), ("bee", 6), ("beetle", 6), ("fly", 6), ("ladybug", 6), ("grasshopper", 6),
    ("scorpion", 8), ("tick", 8), ("dog", 4), ("cat", 4), ("horse", 4), ("cow", 4), ("elephant", 4),
    ("lizard", 4), ("goat", 4), ("sheep", 4), ("crocodile", 4), ("mouse", 4), ("rabbit", 4), ("zebra", 4),
    ("chicken", 2), ("duck", 2), ("ostrich", 2), ("penguin", 2), ("owl", 2), ("parrot", 2), ("kangaroo", 2),
    ("flamingo", 2), ("camel", 4),
]

# (word, short definition, a wrong definition)
DEFINITIONS = [
    ("ancient", "very old", "brand new"), ("enormous", "very large", "very small"),
    ("tiny", "very small", "very large"), ("rapid", "very fast", "very slow"),
    ("fragile", "easily broken", "very sturdy"), ("silent", "making no sound", "making loud noise"),
    ("frigid", "very cold", "very hot"), ("weary", "very tired", "very lively"),
    ("famished", "very hungry", "completely full"), ("furious", "very angry", "very calm"),
    ("timid", "shy and easily scared", "bold and never scared"), ("vacant", "empty and unused", "full of people"),
    ("arid", "very dry", "very wet"), ("humid", "damp and warm", "dry and cool"),
    ("elderly", "old in age", "young in age"), ("gigantic", "extremely big", "extremely small"),
    ("swift", "quick in motion", "slow in motion"), ("cheerful", "happy and bright", "gloomy and sad"),
    ("gloomy", "dark or sad", "bright and happy"), ("drowsy", "sleepy", "alert"),
    ("ill", "sick", "healthy"), ("brief", "short in time", "lasting very long"),
    ("vivid", "bright and clear", "dull and faded"), ("fierce", "violent and aggressive", "gentle and kind"),
    ("hollow", "empty inside", "solid inside"), ("soggy", "soaked with water", "without any water"),
    ("ponder", "to think carefully", "to act hastily"), ("vanish", "to disappear", "to appear"),
    ("devour", "to eat hungrily", "to refuse food"), ("shiver", "to shake from cold", "to sweat from heat"),
    ("stumble", "to trip while walking", "to walk very steadily"), ("whisper", "to speak very softly", "to shout very loudly"),
    ("scarce", "in short supply", "more than enough"), ("abundant", "plentiful", "rare"),
    ("fortunate", "lucky", "unlucky"), ("hesitate", "to pause before acting", "to act at once"),
    ("massive", "very large and heavy", "very small and light"), ("elated", "very happy", "very sad"),
    ("exhausted", "extremely tired", "extremely lively"), ("grateful", "thankful", "resentful"),
    ("curious", "eager to learn", "uninterested in learning"), ("damp", "slightly wet", "completely dry"),
]


def cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def art(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


class Answer:
    """One answer (correct or wrong) to one item, in every surface form the renderers need.

    ``sentences`` are plain, sentence-cased phrasings ending in '.', aligned by template index across answers of
    the same item; ``key`` is the string whose presence (as a whole word) identifies this answer in a reply.
    """

    def __init__(self, sentences, key, json_value, bullets):
        self.sentences = sentences
        self.key = str(key)
        self.json_value = json_value
        self.bullets = bullets


class Item:
    def __init__(self, category, subject, question, correct, wrongs):
        self.category, self.subject, self.question = category, subject, question
        self.correct, self.wrongs = correct, wrongs  # Answer, list[Answer]


def capital_answer(country, city):
    name = country[4:] if country.startswith("the ") else country
    return Answer([f"The capital of {country} is {city}.", f"{city} is the capital of {country}.",
                   f"The capital is {city}.", f"It is {city}.", f"{city}."],
                  city, city, [("Country", name), ("Capital", city)])


def build_capitals(rng):
    items = []
    capitals = [c for _, c, _ in COUNTRIES]
    for country, city, decoy in COUNTRIES:
        others = [c for c in capitals if c != city]
        same_length = [c for c in others if len(c.split()) == len(city.split()) and c != decoy]
        wrong = ([decoy] if decoy else []) + rng.sample(others, 3)
        wrong += [c for c in rng.sample(same_length, 2) if c not in wrong]  # so exact_word_count can go wrong
        items.append(Item("capital", country, f"What is the capital of {country}?", capital_answer(country, city),
                          [capital_answer(country, w) for w in wrong]))
    return items


def arithmetic_answer(a, op, b, r):
    return Answer([f"{a} {op} {b} is {r}.", f"{a} {op} {b} equals {r}.", f"The answer is {r}.",
                   f"It is {r}.", f"{r}."],
                  r, r, [("Problem", f"{a} {op} {b}"), ("Answer", str(r))])


def build_arithmetic(rng):
    triples = set()
    while len(triples) < 60:
        op = rng.choice(["plus", "minus", "times"])
        if op == "times":
            a, b = rng.randint(2, 9), rng.randint(2, 9)
        else:
            a, b = rng.randint(2, 15), rng.randint(2, 12)
            if op == "minus" and a <= b:
                a, b = b + rng.randint(1, 6), a
        triples.add((a, op, b))
    items = []
    for a, op, b in sorted(triples, key=str):
        r = {"plus": a + b, "minus": a - b, "times": a * b}[op]
        wrong = [r + 1] + ([r - 1] if r > 1 else [r + 2])
        items.append(Item("arithmetic", f"{a} {op} {b}", f"What is {a} {op} {b}?",
                          arithmetic_answer(a, op, b, r), [arithmetic_answer(a, op, b, w) for w in wrong]))
    return items


def conversion_answer(n, frm, to, v):
    return Answer([f"There are {v} {to} in {n} {frm}.", f"{n} {frm} is {v} {to}.",
                   f"{n} {frm} equals {v} {to}.", f"It is {v} {to}.", f"{v} {to}."],
                  v, v, [("Given", f"{n} {frm}"), ("Answer", f"{v} {to}")])


def build_conversions(rng):
    items = []
    for frm, to, f in UNITS:
        for n in rng.sample(range(2, 10), 6):
            v = n * f
            wrong = [v + f, v - f] + ([v * 10] if f >= 10 else [v + 2 * f])
            items.append(Item("conversion", f"{n} {frm}", f"How many {to} are in {n} {frm}?",
                              conversion_answer(n, frm, to, v), [conversion_answer(n, frm, to, w) for w in wrong]))
    return items


def opposite_answer(word, opp):
    return Answer([f"The opposite of {word} is {opp}.", f"{cap(opp)} is the opposite of {word}.",
                   f"The opposite is {opp}.", f"It is {opp}.", f"{cap(opp)}."],
                  opp, opp, [("Word", word), ("Opposite", opp)])


def build_opposites(rng):
    items = []
    opposites = [o for _, o, _ in OPPOSITES]
    for word, opp, syn in OPPOSITES:
        other = rng.choice([o for o in opposites if o not in (opp, syn)])
        items.append(Item("opposite", word, f"What is the opposite of {word}?", opposite_answer(word, opp),
                          [opposite_answer(word, syn), opposite_answer(word, other)]))
    return items


def colour_answer(thing, colour):
    return Answer([f"{cap(thing)} is {colour}.", f"The colour of {thing} is {colour}.",
                   f"The colour is {colour}.", f"It is {colour}.", f"{cap(colour)}."],
                  colour, colour, [("Thing", thing), ("Colour", colour)])


def build_colours(rng):
    items = []
    for thing, colour in COLOUR_THINGS:
        palette = [c for c in COLOURS if c not in colour.split()]
        if " and " in colour:  # a two-colour answer goes wrong as another two-colour answer
            palette = [f"{a} and {b}" for a, b in zip(palette, palette[1:] + palette[:1])]
        wrong = rng.sample(palette, 3)
        items.append(Item("colour", thing, f"What colour is {thing}?", colour_answer(thing, colour),
                          [colour_answer(thing, w) for w in wrong]))
    return items


def baby_answer(animal, baby):
    return Answer([f"A baby {animal} is called {art(baby)} {baby}.", f"It is called {art(baby)} {baby}.",
                   f"A baby {animal} is {art(baby)} {baby}.", f"It is {art(baby)} {baby}.", f"{cap(baby)}."],
                  baby, baby, [("Animal", animal), ("Baby", baby)])


def build_babies(rng):
    items = []
    names = sorted({b for _, b in BABIES})
    for animal, baby in BABIES:
        wrong = rng.sample([b for b in names if b != baby], 3)
        items.append(Item("baby_animal", animal, f"What is a baby {animal} called?", baby_answer(animal, baby),
                          [baby_answer(animal, w) for w in wrong]))
    return items


def legs_answer(animal, n):
    return Answer([f"{cap(art(animal))} {animal} has {n} legs.", f"It has {n} legs.", f"The answer is {n}.",
                   f"{n} legs.", f"Every {animal} has {n} legs."],
                  n, n, [("Animal", animal), ("Legs", str(n))])


def build_legs(rng):
    items = []
    for animal, n in LEGS:
        wrong = [n + 2] + ([n - 2] if n > 2 else [n + 4])
        items.append(Item("legs", animal, f"How many legs does {art(animal)} {animal} have?",
                          legs_answer(animal, n), [legs_answer(animal, w) for w in wrong]))
    return items


def definition_answer(word, d):
    return Answer([f"{cap(word)} means {d}.", f"It means {d}.", f"The word {word} means {d}.",
                   f"The meaning is {d}.", f"{cap(d)}."],
                  d, d, [("Word", word), ("Meaning", d)])


def build_definitions(rng):
    return [Item("definition", word, f"What does the word {word} mean?", definition_answer(word, d),
                 [definition_answer(word, w)]) for word, d, w in DEFINITIONS]


BUILDERS = [build_capitals, build_arithmetic, build_conversions, build_opposites, build_colours, build_babies,
            build_legs, build_definitions]

# --------------------------------------------------------------------------------------------- rendering


def render(constraint: str, args: dict, ans: Answer, k: int) -> str:
    """The reply that obeys ``constraint`` built from phrasing ``k`` of ``ans`` (may still fail ``check`` for a
    phrasing that cannot carry the constraint, e.g. a bare number in lowercase; callers filter)."""
    s = ans.sentences[k]
    if constraint == "lowercase":
        return s.lower()
    if constraint == "all_caps":
        return s.upper()
    if constraint == "exclamation_sentence":
        return s[:-1] + "!"
    if constraint == "ends_with_phrase":
        return f"{s} {args['phrase']}"
    if constraint == "starts_with_phrase":
        return f"{args['phrase']} {s}"
    if constraint in ("no_commas", "exact_word_count"):
        return s
    if constraint == "double_quotes":
        return f'"{s}"'
    if constraint == "bullet_list_2":
        return "\n".join(f"- {label}: {value}" for label, value in ans.bullets)
    if constraint == "json_answer":
        return json.dumps({"answer": ans.json_value})
    raise ValueError(constraint)


PROPER_NOUNS = {w for country, city, decoy in COUNTRIES for w in f"{country} {city} {decoy}".split()} - {"the"}


def lower_first(s: str) -> str:
    """``s`` continuing a sentence (after "Well, "): lowercase its first letter unless it starts a name."""
    return s if s.split(" ", 1)[0].rstrip(".") in PROPER_NOUNS else s[0].lower() + s[1:]


def violations(constraint: str, args: dict, ans: Answer) -> list[str]:
    """Replies with the same correct content that break ``constraint`` (small edits of the obeying forms)."""
    out = []
    for s in ans.sentences:
        if constraint == "lowercase":
            out += [s, s.upper()]
        elif constraint == "all_caps":
            out += [s, s.lower()]
        elif constraint == "exclamation_sentence":
            out += [s, "Yes. " + s[:-1] + "!"]
        elif constraint == "ends_with_phrase":
            out += [f"{args['phrase']} {s}", s] + [f"{s} {p}" for p in ENDING_PHRASES if p != args["phrase"]]
        elif constraint == "starts_with_phrase":
            out += [f"{s} {args['phrase']}", s] + [f"{p} {s}" for p in OPENING_PHRASES if p != args["phrase"]]
        elif constraint == "no_commas":
            out += ["Well, " + lower_first(s), "Yes, " + lower_first(s), s[:-1] + ", of course."]
        elif constraint == "exact_word_count":
            out += [s]
        elif constraint == "double_quotes":
            out += [s, f"'{s}'", f'"{s}', f'{s}"']
        elif constraint == "bullet_list_2":
            out += [s]
        elif constraint == "json_answer":
            out += [s]
    if constraint == "bullet_list_2":
        lines = [f"{label}: {value}" for label, value in ans.bullets]
        out += ["\n".join(f"* {line}" for line in lines), "\n".join(f"{i}. {line}" for i, line in enumerate(lines, 1)),
                f"- {lines[1]}", f"- {lines[0]}; {lines[1]}"]
    if constraint == "json_answer":
        v = ans.json_value
        out += [repr({"answer": v}), json.dumps({"answer": v})[1:-1], json.dumps({"result": v}), f"answer: {v}",
                str(v)]
    if constraint in ("lowercase", "all_caps"):  # a reply with no letters at all is no clear violation
        out = [t for t in out if any(c.isalpha() for c in t)]
    return [t for t in out if not check(constraint, args, t)]


def has_key(text: str, key: str, subject: str) -> bool:
    """Whether the answer ``key`` occurs as a whole word in ``text`` outside the question's ``subject`` (so the
    operands of "10 minus 5" do not count as the answer 5)."""
    text = text.lower()
    if subject.lower() not in key.lower():  # "Mexico City" answers "Mexico"
        text = re.sub(r"(?<![\w])" + re.escape(subject.lower()) + r"(?![\w])", " ", text)
    return re.search(r"(?<![\w])" + re.escape(key.lower()) + r"(?![\w])", text) is not None


class NoCandidates(Exception):
    """This item cannot carry this kind of rejected reply under this constraint; the caller draws another."""


def pick_by_length(rng, chosen: str, candidates: list[str], allow_equal: bool) -> str:
    """Pick a rejected reply so that chosen is longer about as often as it is shorter.

    A target (rejected shorter / longer / the same length) is drawn at random; among the candidates that meet it,
    the one closest in length to ``chosen`` (the smallest edit) wins.
    """
    weights = [0.46, 0.46, 0.08] if allow_equal else [0.5, 0.5, 0.0]
    target = rng.choices(["shorter", "longer", "equal"], weights)[0]
    groups = {"shorter": [], "longer": [], "equal": []}
    for c in dict.fromkeys(candidates):  # de-duplicate, keep order
        d = len(c) - len(chosen)
        groups["shorter" if d < 0 else "longer" if d > 0 else "equal"].append(c)
    order = {"shorter": ["shorter", "equal", "longer"], "longer": ["longer", "equal", "shorter"],
             "equal": ["equal", "shorter", "longer"]}[target]
    for name in order:
        if groups[name]:
            best = min(abs(len(c) - len(chosen)) for c in groups[name])
            return rng.choice([c for c in groups[name] if abs(len(c) - len(chosen)) == best])
    raise NoCandidates(chosen)


def draw_args(rng, constraint: str) -> dict:
    if constraint == "ends_with_phrase":
        return {"phrase": rng.choice(ENDING_PHRASES)}
    if constraint == "starts_with_phrase":
        return {"phrase": rng.choice(OPENING_PHRASES)}
    return {}


def obeying_options(constraint: str, args: dict, ans: Answer) -> list[int]:
    """Phrasing indices of ``ans`` whose rendering obeys ``constraint`` and reads naturally."""
    ks = []
    for k, s in enumerate(ans.sentences):
        n_words = len(s.split())
        if constraint == "exact_word_count" and not 2 <= n_words <= 6:
            continue
        if constraint == "exclamation_sentence" and n_words < 3:
            continue
        if check(constraint, {**args, "n": str(n_words)} if constraint == "exact_word_count" else args,
                 render(constraint, args, ans, k)):
            ks.append(k)
    return ks


def make_chosen(rng, item: Item, constraint: str):
    """(args, phrasing index, chosen reply) for ``item`` under ``constraint``."""
    args = draw_args(rng, constraint)
    k = rng.choice(obeying_options(constraint, args, item.correct))
    if constraint == "exact_word_count":
        args = {"n": str(len(item.correct.sentences[k].split()))}
    chosen = render(constraint, args, item.correct, k)
    assert check(constraint, args, chosen), (constraint, args, chosen)
    assert has_key(chosen, item.correct.key, item.subject), (chosen, item.correct.key)
    return args, k, chosen


def make_rejected(rng, item: Item, constraint: str, args: dict, k: int, chosen: str, wrong: bool) -> str:
    if wrong:
        # Same phrasing (a one-answer edit) when it keeps the constraint, else any obeying phrasing.
        cands = []
        for w in item.wrongs:
            text = render(constraint, args, w, k)
            if check(constraint, args, text):
                cands.append(text)
        if not cands:
            for w in item.wrongs:
                cands += [render(constraint, args, w, j) for j in range(len(w.sentences))
                          if check(constraint, args, render(constraint, args, w, j))]
        rejected = pick_by_length(rng, chosen, cands, allow_equal=True)
        assert check(constraint, args, rejected), ("wrong answer must still obey", constraint, rejected)
        assert not has_key(rejected, item.correct.key, item.subject), ("wrong answer has the right one", rejected)
    else:
        cands = violations(constraint, args, item.correct)
        rejected = pick_by_length(rng, chosen, cands, allow_equal=True)
        assert not check(constraint, args, rejected), ("violation passes the check", constraint, rejected)
        assert has_key(rejected, item.correct.key, item.subject), ("violation lost the answer", rejected)
    assert rejected != chosen and rejected.strip()
    return rejected


# --------------------------------------------------------------------------------------------- datasets


def split_items(rng):
    """Per category: held-out items (subjects never used anywhere else) and train items."""
    by_cat = {}
    for build in BUILDERS:
        items = build(rng)
        by_cat[items[0].category] = items
    heldout, train = {}, {}
    for cat, items in by_cat.items():
        shuffled = items[:]
        rng.shuffle(shuffled)
        n = max(4, round(len(items) * HELDOUT_FRACTION))
        heldout[cat] = shuffled[:n]
    held_subjects = {it.subject for items in heldout.values() for it in items}
    for cat, items in by_cat.items():
        train[cat] = [it for it in items if it.subject not in held_subjects]
    return train, heldout


def cells(rng, n: int, categories: list[str]) -> list[tuple[str, str, bool]]:
    """``n`` (category, constraint, wrong) triples: constraints exactly balanced, categories as even as possible
    within each constraint, ``WRONG_FRACTION`` of each constraint's rows wrong-answer rejects."""
    per = n // len(CONSTRAINTS)
    assert per * len(CONSTRAINTS) == n
    out = []
    for ci, constraint in enumerate(CONSTRAINTS):
        cats = categories * (per // len(categories))
        extra = categories[:]
        rng.shuffle(extra)
        cats += extra[: per - len(cats)]
        n_wrong = round(per * WRONG_FRACTION)
        wrong = [True] * n_wrong + [False] * (per - n_wrong)
        rng.shuffle(cats)
        rng.shuffle(wrong)
        out += [(cat, constraint, w) for cat, w in zip(cats, wrong)]
    rng.shuffle(out)
    return out


def prompt_text(item: Item, constraint: str, args: dict) -> str:
    text = f"{item.question} {instruction(constraint, args)}"
    assert len(text) <= MAX_PROMPT_CHARS, text
    return text


def draw(rng, pools: dict, cat: str, constraint: str, wrong: bool, seen: set):
    """A fresh prompt in ``cat`` under ``constraint`` with its chosen and rejected replies."""
    for _ in range(500):
        item = rng.choice(pools[cat])
        args, k, chosen = make_chosen(rng, item, constraint)
        prompt = prompt_text(item, constraint, args)
        if prompt in seen:
            continue
        try:
            rejected = make_rejected(rng, item, constraint, args, k, chosen, wrong)
        except NoCandidates:
            continue
        seen.add(prompt)
        return prompt, args, chosen, rejected, item.correct.key
    raise AssertionError(f"cannot find a fresh prompt for {cat}/{constraint}/wrong={wrong}")


def make_pairs(rng, pools: dict, n: int) -> list[dict]:
    rows, seen = [], set()
    for cat, constraint, wrong in cells(rng, n, sorted(pools)):
        prompt, args, chosen, rejected, key = draw(rng, pools, cat, constraint, wrong, seen)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "category": cat,
                     "constraint": constraint, "constraint_args": args,
                     "rejected_kind": "wrong_answer" if wrong else "violates_constraint", "_answer": key})
    return rows


def make_kto(rng, pools: dict, n: int) -> list[dict]:
    """Unpaired rows from their own prompts: half keep the chosen reply (label true), half the rejected one."""
    rows, seen = [], set()
    triples = cells(rng, n, sorted(pools))
    labels = [False] * n
    for constraint in CONSTRAINTS:  # half of each constraint's rows desirable, so both labels see the same mix
        idx = [i for i, t in enumerate(triples) if t[1] == constraint]
        for i in rng.sample(idx, len(idx) // 2):
            labels[i] = True
    for (cat, constraint, wrong), label in zip(triples, labels):
        prompt, args, chosen, rejected, _ = draw(rng, pools, cat, constraint, wrong, seen)
        kind = "good" if label else "wrong_answer" if wrong else "violates_constraint"
        rows.append({"prompt": prompt, "completion": chosen if label else rejected, "label": label,
                     "category": cat, "constraint": constraint, "constraint_args": args, "kind": kind})
    return rows


def make_sft(rng, pools: dict, n: int, n_two_turn: int) -> list[dict]:
    def turn():
        cat = rng.choice(sorted(pools))
        constraint = rng.choice(CONSTRAINTS)
        item = rng.choice(pools[cat])
        args, _, chosen = make_chosen(rng, item, constraint)
        return [{"role": "user", "content": prompt_text(item, constraint, args)},
                {"role": "assistant", "content": chosen}]

    rows, seen = [], set()
    while len(rows) < n:
        two = len(rows) >= n - n_two_turn
        messages = turn() + (turn() if two else [])
        if two and sum(len(m["content"]) for m in messages) > 260:  # keep two-turn rows short
            continue
        key = tuple(m["content"] for m in messages)
        if key in seen:
            continue
        seen.add(key)
        rows.append({"messages": messages})
    rng.shuffle(rows)
    return rows


# --------------------------------------------------------------------------------------------- checks + io


def verify_rows(name: str, rows: list[dict]) -> None:
    def plain(value, path):
        if isinstance(value, dict):
            for k, v in value.items():
                plain(v, f"{path}.{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                plain(v, f"{path}[{i}]")
        else:
            assert isinstance(value, (str, bool)), f"{name}: {path} is {type(value).__name__}"
            assert value != "", f"{name}: {path} is empty"

    for i, row in enumerate(rows):
        plain(row, f"row {i + 1}")
        if "chosen" in row:
            assert row["chosen"] != row["rejected"], f"{name}: row {i + 1} chosen == rejected"
            assert check(row["constraint"], row["constraint_args"], row["chosen"]), (name, row)
            breaks = not check(row["constraint"], row["constraint_args"], row["rejected"])
            assert breaks == (row["rejected_kind"] == "violates_constraint"), (name, row)
        if "completion" in row:
            obeys = check(row["constraint"], row["constraint_args"], row["completion"])
            assert obeys == (row["kind"] != "violates_constraint"), (name, row)
        turns = row["messages"] if "messages" in row else [{"role": "user", "content": row["prompt"]}] + [
            {"role": "assistant", "content": row[k]} for k in ("chosen", "rejected", "completion") if k in row]
        for m in turns:
            limit = MAX_PROMPT_CHARS if m["role"] == "user" else MAX_REPLY_CHARS
            assert len(m["content"]) <= limit, (name, m)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def length_stats(rows: list[dict]) -> dict:
    ch = [len(r["chosen"]) for r in rows]
    rj = [len(r["rejected"]) for r in rows]
    longer = sum(c > r for c, r in zip(ch, rj)) / len(rows)
    equal = sum(c == r for c, r in zip(ch, rj)) / len(rows)
    return {"mean_chosen": sum(ch) / len(ch), "mean_rejected": sum(rj) / len(rj), "chosen_longer": longer,
            "equal": equal}


def answer_fields(category: str, key: str) -> dict:
    """How the verifiers check the content of a reply: the correct answer as a whole word, phrase or number
    anywhere in it, case-insensitive (so ALL CAPS, JSON and bullet answers count). Not the math "final answer":
    "There are 540 minutes in 9 hours." ends with the question's own number."""
    if re.fullmatch(r"[\d.]+", key):
        pattern = r"(?<![\d.])" + re.escape(key) + r"(?![\d]|\.\d)"
    else:
        pattern = r"\b" + re.escape(key) + r"\b"
    return {"answer": pattern, "match": "regex", "match_options": {"ignore_case": True}}


def prompt_rows(pairs: list[dict], split: str) -> list[dict]:
    return [{"id": f"{split}-{i:04d}", "prompt": r["prompt"], "category": r["category"],
             "constraints": [{"kind": r["constraint"], "args": r["constraint_args"]}],
             **answer_fields(r["category"], r["_answer"])}
            for i, r in enumerate(pairs)]


def without_private(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]


def main() -> int:
    rng = random.Random(SEED)
    train_pools, heldout_pools = split_items(rng)
    train_subjects = {(c, it.subject) for c, items in train_pools.items() for it in items}
    held_subjects = {it.subject for items in heldout_pools.values() for it in items}
    assert not held_subjects & {s for _, s in train_subjects}

    pairs_train = make_pairs(rng, train_pools, N_PAIRS_TRAIN)
    pairs_heldout = make_pairs(rng, heldout_pools, N_PAIRS_HELDOUT)
    kto = make_kto(rng, train_pools, N_KTO)
    sft = make_sft(rng, train_pools, N_SFT, N_SFT_TWO_TURN)

    assert not {r["prompt"] for r in pairs_train} & {r["prompt"] for r in pairs_heldout}
    for name, rows in [("sft_demos", sft), ("pairs_train", pairs_train), ("pairs_heldout", pairs_heldout),
                       ("kto", kto)]:
        verify_rows(name, rows)

    for name, rows in [("pairs_train", pairs_train), ("pairs_heldout", pairs_heldout)]:
        stats = length_stats(rows)
        assert 0.35 <= stats["chosen_longer"] <= 0.65, (name, stats)
        assert abs(stats["mean_chosen"] - stats["mean_rejected"]) < 3.0, (name, stats)
        print(f"{name}: {len(rows)} rows, mean chars chosen {stats['mean_chosen']:.1f} rejected "
              f"{stats['mean_rejected']:.1f}, chosen longer {stats['chosen_longer']:.3f}, "
              f"same length {stats['equal']:.3f}")

    write_jsonl(HERE / "sft_demos.jsonl", sft)
    write_jsonl(HERE / "pairs_train.jsonl", without_private(pairs_train))
    write_jsonl(HERE / "pairs_heldout.jsonl", without_private(pairs_heldout))
    write_jsonl(HERE / "kto.jsonl", kto)
    # Prompt pools for `posttrain generate` (candidates) and for eval: the same prompts as the pair files, each
    # carrying its constraint as data in the general `constraints` list form (docs/CANDIDATES.md).
    write_jsonl(HERE / "prompts_train.jsonl", prompt_rows(pairs_train, "train"))
    write_jsonl(HERE / "prompts_heldout.jsonl", prompt_rows(pairs_heldout, "heldout"))
    n_true = sum(r["label"] for r in kto)
    mean_true = sum(len(r["completion"]) for r in kto if r["label"]) / n_true
    mean_false = sum(len(r["completion"]) for r in kto if not r["label"]) / (len(kto) - n_true)
    assert abs(mean_true - mean_false) < 3.0, (mean_true, mean_false)
    print(f"sft_demos: {len(sft)} rows ({sum(len(r['messages']) == 4 for r in sft)} two-turn)")
    print(f"kto: {len(kto)} rows ({n_true} true, {len(kto) - n_true} false), mean chars true {mean_true:.1f} "
          f"false {mean_false:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
