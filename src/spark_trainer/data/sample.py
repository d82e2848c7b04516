"""Deterministic embedded data: a learnable corpus, an MMLU-format set, planted problems.

    python stages/sample.py data/sample

Four subjects a few-million-parameter model can learn on a CPU in minutes:
`arithmetic`, `string_manipulation` and `unit_conversion` put everything needed in the
question (so held-out questions test a skill, not recall), and `world_facts` describes a
small fictional world whose facts appear in the corpus as statements, passages and
question/answer pairs (so its questions test recall of what the corpus says).

Corpus documents are `Question: ...\\nAnswer: ...` pairs (the format lm-eval's
continuation scoring uses) and longer passages. Into them go planted problems with
ground-truth labels for the quality gates: exact and near duplicates, PII and toxic lines.
Only `random.Random(seed)` is used, in a fixed order, so one seed gives one byte stream.
"""

from __future__ import annotations

import csv
import functools
import io
import random
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

SUBJECTS = ("arithmetic", "string_manipulation", "unit_conversion", "world_facts")
LETTERS = "ABCD"


@dataclass(frozen=True)
class Question:
    subject: str
    question: str
    answer: str
    distractors: tuple[str, str, str]


@dataclass
class Document:
    subject: str
    text: str
    kind: str  # qa | fact | passage | planted
    labels: dict = field(default_factory=dict)


# ------------------------------------------------------------------ vocabulary

_WORD_SYLLABLES = ["ba", "ko", "mi", "tu", "re", "sa", "lo", "ne", "pi", "da", "vu", "ge", "fo", "zi", "ha"]
_NAME_SYLLABLES = ["zor", "mel", "ath", "vin", "dra", "kel", "osk", "tar", "bel", "run", "fen", "gal", "ish"]
_RIVERS = ["Ambel", "Corrin", "Dusk", "Elvar", "Fennow", "Glimm", "Harrow", "Istra"]
_COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
_GOODS = ["copper", "salt", "wool", "amber", "silk", "timber", "honey", "glass", "iron", "spice"]
_UNITS = [  # (larger, smaller, factor, larger singular)
    ("meters", "centimeters", 100, "meter"),
    ("kilometers", "meters", 1000, "kilometer"),
    ("kilograms", "grams", 1000, "kilogram"),
    ("liters", "milliliters", 1000, "liter"),
    ("hours", "minutes", 60, "hour"),
    ("minutes", "seconds", 60, "minute"),
    ("days", "hours", 24, "day"),
    ("weeks", "days", 7, "week"),
    ("feet", "inches", 12, "foot"),
    ("years", "months", 12, "year"),
]


def _pseudo_words(rng: random.Random) -> list[str]:
    words = [a + b for a in _WORD_SYLLABLES for b in _WORD_SYLLABLES]
    words += [a + b + c for a in _WORD_SYLLABLES[:8] for b in _WORD_SYLLABLES for c in _WORD_SYLLABLES[:8]]
    rng.shuffle(words)
    return words


def _distinct(answer: str, candidates: list[str], fallback: Callable[[], str]) -> tuple[str, str, str]:
    """Three distractors, distinct from each other and from the answer."""
    chosen: list[str] = []
    for c in candidates:
        if c != answer and c not in chosen:
            chosen.append(c)
        if len(chosen) == 3:
            return tuple(chosen)  # type: ignore[return-value]
    while len(chosen) < 3:
        c = fallback()
        if c != answer and c not in chosen:
            chosen.append(c)
    return tuple(chosen)  # type: ignore[return-value]


# ------------------------------------------------------------------ question pools


def arithmetic_pool(rng: random.Random) -> list[Question]:
    pool = []
    for a in range(21):
        for b in range(21):
            s = a + b
            pool.append(Question("arithmetic", f"What is {a} plus {b}?", str(s),
                                 _distinct(str(s), [str(s + 1), str(abs(s - 1)), str(s + 10), str(a * b)],
                                           lambda: str(rng.randint(0, 40)))))
    for a in range(31):
        for b in range(a + 1):
            d = a - b
            pool.append(Question("arithmetic", f"What is {a} minus {b}?", str(d),
                                 _distinct(str(d), [str(a + b), str(d + 1), str(abs(d - 1)), str(d + 10)],
                                           lambda: str(rng.randint(0, 40)))))
    for _ in range(1200):
        a, b = rng.sample(range(10, 100), 2)
        word, ans, other = ("larger", max(a, b), min(a, b)) if rng.random() < 0.5 else ("smaller", min(a, b), max(a, b))
        pool.append(Question("arithmetic", f"Which is {word}, {a} or {b}?", str(ans),
                             _distinct(str(ans), [str(other), str(rng.randint(10, 99)), str(rng.randint(10, 99))],
                                       lambda: str(rng.randint(10, 99)))))
    return pool


def string_pool(rng: random.Random, words: list[str]) -> list[Question]:
    pool = []
    letters = lambda: rng.choice(string.ascii_lowercase)
    for i, w in enumerate(words):
        other = words[(i + 1) % len(words)]
        op = i % 5
        if op == 0:
            swapped = w[1] + w[0] + w[2:][::-1] if len(w) > 2 else w
            pool.append(Question("string_manipulation", f"What is '{w}' spelled backwards?", w[::-1],
                                 _distinct(w[::-1], [w, other[::-1], swapped[::-1], w[::-1] + w[0]], letters)))
        elif op == 1:
            pool.append(Question("string_manipulation", f"What is '{w}' in capital letters?", w.upper(),
                                 _distinct(w.upper(), [w, other.upper(), w.capitalize(), w[::-1].upper()], letters)))
        elif op == 2:
            pool.append(Question("string_manipulation", f"What is the first letter of '{w}'?", w[0],
                                 _distinct(w[0], [w[-1], w[1], other[0]], letters)))
        elif op == 3:
            pool.append(Question("string_manipulation", f"What is the last letter of '{w}'?", w[-1],
                                 _distinct(w[-1], [w[0], w[-2], other[-1]], letters)))
        else:
            n = len(w)
            pool.append(Question("string_manipulation", f"How many letters are in '{w}'?", str(n),
                                 _distinct(str(n), [str(n + 1), str(n - 1), str(n + 2)], lambda: str(rng.randint(1, 9)))))
    return pool


def unit_pool(rng: random.Random) -> list[Question]:
    pool = []
    factors = [u[2] for u in _UNITS]
    for big, small, f, one in _UNITS:
        for n in range(1, 41):
            big_n = one if n == 1 else big
            ans = n * f
            wrong_f = rng.choice([x for x in factors if x != f])
            pool.append(Question("unit_conversion", f"How many {small} are in {n} {big_n}?", str(ans),
                                 _distinct(str(ans), [str(ans * 10), str(n * wrong_f), str(n + f), str(n)],
                                           lambda: str(rng.randint(1, 4000)))))
            pool.append(Question("unit_conversion", f"How many {big} are in {ans} {small}?", str(n),
                                 _distinct(str(n), [str(ans), str(n * 10), str(n + 1), str(max(1, n - 1))],
                                           lambda: str(rng.randint(1, 60)))))
    return pool


@dataclass(frozen=True)
class Town:
    name: str
    river: str
    colour: str
    good: str
    ruler: str


def build_world(rng: random.Random, n_towns: int) -> list[Town]:
    names = sorted({(a + b + c).capitalize() for a in _NAME_SYLLABLES for b in _NAME_SYLLABLES
                    for c in _NAME_SYLLABLES if len({a, b, c}) == 3})
    picked = rng.sample(names, 2 * n_towns)
    towns, rulers = picked[:n_towns], picked[n_towns:]
    return [Town(t, rng.choice(_RIVERS), rng.choice(_COLOURS), rng.choice(_GOODS), f"Queen {r}" if i % 2 else f"King {r}")
            for i, (t, r) in enumerate(zip(towns, rulers, strict=True))]


_RELATIONS = {  # relation -> (question, statement phrasings, value getter, value pool)
    "river": ("What river flows through {t}?",
              ["The river {v} flows through {t}.", "{t} lies on the river {v}.", "{t} is built on the banks of the {v}."],
              lambda town: town.river),
    "colour": ("What colour is the banner of {t}?",
               ["The banner of {t} is {v}.", "{t} flies a {v} banner.", "In {t} the banners are {v}."],
               lambda town: town.colour),
    "good": ("What does {t} trade?",
             ["{t} trades {v}.", "The merchants of {t} sell {v}.", "{t} is known for its {v}."],
             lambda town: town.good),
    "ruler": ("Who rules {t}?",
              ["{t} is ruled by {v}.", "{v} rules {t}.", "The ruler of {t} is {v}."],
              lambda town: town.ruler),
}


def world_pool(towns: list[Town], rng: random.Random) -> list[Question]:
    pool = []
    for town in towns:
        for question, _, value in _RELATIONS.values():
            ans = value(town)
            others = sorted({value(t) for t in towns} - {ans})
            rng.shuffle(others)
            pool.append(Question("world_facts", question.format(t=town.name), ans,
                                 _distinct(ans, others, lambda: rng.choice(_GOODS))))
    return pool


# ------------------------------------------------------------------ passages


def passages(subject: str, rng: random.Random, n: int, words: list[str], towns: list[Town]) -> list[str]:
    out = []
    for i in range(n):
        if subject == "arithmetic":
            a, b = rng.randint(0, 30), rng.randint(2, 9)
            steps = ", ".join(str(a + k) for k in range(1, b + 1))
            out.append(f"To add {a} and {b}, start at {a} and count up {b} steps: {steps}. "
                       f"So {a} plus {b} is {a + b}, and {a + b} minus {b} is {a}.")
        elif subject == "string_manipulation":
            w = words[-(i + 1)]
            out.append(f"The word '{w}' has {len(w)} letters: {', '.join(w)}. Spelled backwards it is "
                       f"'{w[::-1]}', in capital letters it is '{w.upper()}', and it starts with '{w[0]}'.")
        elif subject == "unit_conversion":
            big, small, f, one = _UNITS[i % len(_UNITS)]
            n1, n2 = rng.sample(range(2, 30), 2)
            out.append(f"There are {f} {small} in one {one}. So {n1} {big} make {n1 * f} {small}, "
                       f"and {n2} {big} make {n2 * f} {small}; going back, {n2 * f} {small} are {n2} {big}.")
        else:
            t = towns[i % len(towns)]
            if (i // len(towns)) % 2 == 0:
                out.append(f"{t.name} lies on the river {t.river}. Its banner is {t.colour}, its merchants "
                           f"sell {t.good}, and the town is ruled by {t.ruler}, who keeps the old roads open.")
            else:
                out.append(f"Travellers to {t.name} follow the {t.river} upstream until they see {t.colour} "
                           f"banners. The market there is full of {t.good}, and {t.ruler} rules from the hall.")
    return out


# ------------------------------------------------------------------ planted problems

_FIRST = ["Mara", "Jonas", "Lena", "Omar", "Priya", "Tomas", "Ines", "Kofi", "Sara", "Ivan"]
_LAST = ["Velt", "Okafor", "Lindqvist", "Haddad", "Moreau", "Tanaka", "Reyes", "Novak"]
_AREA_CODES = ["212", "312", "415", "617", "646", "702", "713", "808", "917", "206"]
# Toxic comments for the toxicity gate's ground truth, written for this file alone: NOT
# drawn from quality/toxic_terms.tsv (the word-list scorer's vocabulary), so the word list's
# recall on them is a measurement, not true by construction (tests/test_sample.py checks
# that most of them contain none of its terms). Phrased as forum or market comments would
# be; {n} a name, {t} a town, {g} a good. One category each, for reading; the label is `toxic`.
_TOXIC_COMMENTS = [
    ("insult", "{n}, you have the brains of a doorknob and the manners of a goat."),
    ("insult", "Every post you make, {n}, makes this forum a little dumber."),
    ("insult", "Who let this numbskull anywhere near the {g} stall in {t}?"),
    ("insult", "{n} is a lying snake and a leech, and all of {t} knows it."),
    ("insult", "Crawl back under your rock, {n}, you spineless little weasel."),
    ("insult", "You are a waste of oxygen, {n}. Do everyone a favour and log off."),
    ("insult", "Brain-dead take as usual. Were you dropped on your head as a baby, {n}?"),
    ("insult", "Nobody asked for your opinion on {g}, you smug know-nothing hack."),
    ("insult", "{n} couldn't sell {g} in {t} if their miserable life depended on it. What a failure."),
    ("insult", "Look at this fat slob {n} lecturing the rest of {t} about {g}."),
    ("insult", "You're an idiot, {n}, and your {g} prices prove it."),
    ("insult", "Typical {n}: all mouth, zero brain cells, and a face only a mother could tolerate."),
    ("threat", "Keep talking, {n}, and you'll be leaving {t} in an ambulance."),
    ("threat", "I know where you live in {t}, {n}. Sleep with one eye open."),
    ("threat", "Someone should put a bullet in {n} before the next market day in {t}."),
    ("threat", "Say that again and I'll break every bone in your body, {n}."),
    ("threat", "If I see you at the {g} stall again I will smash your teeth in, {n}."),
    ("threat", "{n}, I'm going to burn your shop in {t} to the ground with you inside it."),
    ("threat", "You'll regret this, {n}. I'll make sure nobody ever finds what's left of you."),
    ("threat", "Touch my {g} again, {n}, and I'll strangle you with my bare hands."),
    ("obscene", "Shove your {g} up your arse, {n}."),
    ("obscene", "What the fuck is wrong with you, {n}? This {g} deal is a total shitshow."),
    ("obscene", "{n} is a lying sack of shit and everyone in {t} knows it."),
    ("obscene", "Piss off back to {t}, {n}, you absolute dickhead."),
    ("obscene", "Fuck off with your overpriced {g}, {n}."),
    ("obscene", "This is bullshit and so are you, {n}. Eat shit."),
    ("obscene", "{n} is a total asshole who screws every customer in {t}."),
    ("obscene", "Kiss my ass, {n}, and take your cheap {g} with you."),
    ("identity_attack", "Immigrants like {n} are ruining {t}. Send every last one of them back."),
    ("identity_attack", "Women have no business running the {g} trade; {n} proves it every day."),
    ("identity_attack", "Of course {n} cheats at the scales, that whole religion is a cult of liars."),
    ("identity_attack", "{t} was fine before those foreigners moved in and stank up the place, {n} included."),
    ("identity_attack", "Old people like {n} should just die off and stop voting on the {g} tax."),
    ("identity_attack", "Gay people like {n} shouldn't be allowed near the children of {t}."),
    ("identity_attack", "People from the south are animals, and {n} is the worst of them."),
    ("identity_attack", "Never buy {g} from {n}; those people are born thieves, every one of them."),
]
# Clean controls for precision: ordinary lines with words a careless filter trips on (kill,
# shot, hell, trash, dumb, bloody...). Planted with the toxic lines and labelled `toxic: false`.
_BORDERLINE_CLEAN = [
    "The recipe says to beat the eggs and whip the cream before the {g} glaze goes on.",
    "That new band from {t} absolutely killed it at the festival last night.",
    "{n} shot some beautiful photos of the {g} stalls in {t}.",
    "Kill the process and restart the server if the {t} ledger hangs again.",
    "The Ugly Duckling was the first book {n} ever read alone.",
    "{n} said the climb up to {t} was hell on the knees but worth every step.",
    "Don't be fooled by the cheap {g}; the good stuff in {t} costs more.",
    "Trash collection in {t} now runs on Tuesdays, so put the bins out early.",
    "Our team got destroyed in the final, but {n} played brilliantly.",
    "{n} hates waiting in line and buys {g} before the market opens.",
    "The special at the inn in {t} is a bloody mary with extra pepper.",
    "That joke was so dumb it made {n} laugh for ten minutes straight.",
    "The butcher in {t} sells {g} and freshly killed chickens.",
    "Scunthorpe and Penistone are real towns; {n} has visited both.",
    "Hit the reset button twice and the {g} scale will recalibrate.",
    "We need to attack the backlog before the {t} market opens, {n}.",
    "{n} is dying to try the new {g} bakery in {t}.",
    "The sermon in {t} was about sin, hell and forgiveness.",
    "Breast cancer screening is free at the {t} clinic this month.",
    "Shut the gate behind you or the goats will wander into the {g} field.",
    "The witch in the children's play in {t} was scary, but the kids loved her.",
    "Gun safety classes start in {t} next week, and {n} is teaching them.",
    "{n} is a killer negotiator and got the {g} at half price.",
    "The old cock in {n}'s yard crows at dawn, long before the {t} bells.",
    "Stupidly, I left the {g} out in the rain, {n} told the clerk in {t}.",
    "The documentary about the war crimes trial in {t} was hard to watch.",
]


def _luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    digits = prefix + "".join(str(rng.randint(0, 9)) for _ in range(length - len(prefix) - 1))
    total = 0
    for i, d in enumerate(reversed(digits)):
        x = int(d) * (2 if i % 2 == 0 else 1)
        total += x - 9 if x > 9 else x
    return digits + str((10 - total % 10) % 10)


def _iban_de(rng: random.Random) -> str:
    bban = "".join(str(rng.randint(0, 9)) for _ in range(18))
    numeric = bban + "1314" + "00"  # D=13, E=14, check digits 00
    check = 98 - int(numeric) % 97
    return f"DE{check:02d}{bban}"


def _pii_value(kind: str, rng: random.Random, person: str) -> str:
    if kind == "EMAIL_ADDRESS":
        return f"{person.lower().replace(' ', '.')}@{rng.choice(['example.org', 'mail.example.com', 'post.example.net'])}"
    if kind == "PHONE_NUMBER":
        exchange = rng.choice([n for n in range(201, 990) if n % 100 != 11])  # N11 codes are not valid exchanges
        return f"({rng.choice(_AREA_CODES)}) {exchange}-{rng.randint(1000, 9999)}"
    if kind == "US_SSN":
        return f"{rng.randint(101, 665):03d}-{rng.randint(10, 99):02d}-{rng.randint(1000, 9999):04d}"
    if kind == "CREDIT_CARD":
        card = _luhn_complete(rng.choice(["4", "51", "52", "53"]), 16, rng)
        return " ".join(card[i:i + 4] for i in range(0, 16, 4))
    if kind == "IP_ADDRESS":
        return f"{rng.randint(11, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    if kind == "IBAN_CODE":
        return _iban_de(rng)
    raise ValueError(kind)


PII_TYPES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "US_SSN", "CREDIT_CARD", "IP_ADDRESS", "IBAN_CODE")
_PII_TEMPLATES = {
    "EMAIL_ADDRESS": "For the {t} ledger, write to {p} at {v} before the market opens.",
    "PHONE_NUMBER": "To order {g} from {t}, call {p} on {v} during the day.",
    "US_SSN": "Tax record for {p} of {t}: social security number {v}.",
    "CREDIT_CARD": "{p} paid for the {g} from {t} with card number {v}.",
    "IP_ADDRESS": "The {t} trade office server runs at {v}; ask {p} for access.",
    "IBAN_CODE": "Send payment for the {g} to {p} in {t}, IBAN {v}.",
}


def _near_duplicate(text: str, rng: random.Random) -> str:
    """One small edit: a word inserted, which keeps word-shingle Jaccard around 0.8."""
    words = text.split(" ")
    pos = rng.randint(2, len(words) - 2)
    return " ".join(words[:pos] + [rng.choice(["indeed", "also", "then", "still"])] + words[pos:])


def _exact_duplicate(text: str, rng: random.Random) -> str:
    """Same text after normalisation (case and surrounding whitespace may differ)."""
    variant = rng.randint(0, 2)
    return text if variant == 0 else (text + "  " if variant == 1 else text.upper())


# ------------------------------------------------------------------ assembly


@dataclass(frozen=True)
class SampleData:
    corpus: list[dict]            # {"id", "subject", "text"}
    labels: list[dict]            # planted items only (clean controls: `toxic: false`); an id absent here is clean
    mmlu: dict[str, dict[str, list[list[str]]]]  # subject -> {"dev": rows, "test": rows}


def generate(seed: int, subjects: tuple[str, ...], qa_per_subject: int, world_towns: int, fact_phrasings: int,
             passages_per_subject: int, mmlu_dev: int, mmlu_test: int, planted: dict[str, int]) -> SampleData:
    rng = random.Random(seed)
    words = _pseudo_words(rng)
    towns = build_world(rng, world_towns)
    pools = {"arithmetic": arithmetic_pool(rng), "string_manipulation": string_pool(rng, words),
             "unit_conversion": unit_pool(rng), "world_facts": world_pool(towns, rng)}

    docs: list[Document] = []
    mmlu: dict[str, dict[str, list[list[str]]]] = {}
    for subject in subjects:
        pool = _unique_questions(pools[subject])
        rng.shuffle(pool)
        held = mmlu_dev + mmlu_test
        if subject == "world_facts":
            # The corpus states every fact, so questions test recall of what it says.
            if held > len(pool):
                raise ValueError(f"world_facts has {len(pool)} facts; raise sample.world_towns "
                                 f"or lower mmlu_dev/test_per_subject below {len(pool)}")
            dev, test, train_qa = pool[:mmlu_dev], pool[mmlu_dev:held], pool
            for town in towns:
                for _, phrasings, value in _RELATIONS.values():
                    for phrase in phrasings[:fact_phrasings]:
                        docs.append(Document(subject, phrase.format(t=town.name, v=value(town)), "fact"))
        else:
            # Held-out questions never appear in the corpus: they test the skill.
            if held + qa_per_subject > len(pool):
                raise ValueError(f"{subject} has {len(pool)} distinct questions; lower "
                                 f"sample.qa_per_subject to {len(pool) - held} or fewer")
            dev, test, train_qa = pool[:mmlu_dev], pool[mmlu_dev:held], pool[held:held + qa_per_subject]
        docs += [Document(subject, f"Question: {q.question}\nAnswer: {q.answer}", "qa") for q in train_qa]
        docs += [Document(subject, p, "passage") for p in passages(subject, rng, passages_per_subject, words, towns)]
        mmlu[subject] = {"dev": _mmlu_rows(dev, rng), "test": _mmlu_rows(test, rng)}

    docs = _drop_repeats(docs)
    rng.shuffle(docs)
    docs += _plant(docs, rng, planted, towns)
    rng.shuffle(docs)

    corpus, labels = [], []
    for i, doc in enumerate(docs):
        doc_id = f"doc-{i:06d}"
        corpus.append({"id": doc_id, "subject": doc.subject, "text": doc.text})
        if doc.labels:
            labels.append({"id": doc_id, **doc.labels})
    # Labels point at their source documents by object until ids exist.
    ids = {id(doc): f"doc-{i:06d}" for i, doc in enumerate(docs)}
    for label in labels:
        for key in ("exact_duplicate_of", "near_duplicate_of"):
            if key in label:
                label[key] = ids[label[key]]
    return SampleData(corpus, labels, mmlu)


def _unique_questions(pool: list[Question]) -> list[Question]:
    seen, out = set(), []
    for q in pool:
        if q.question not in seen:
            seen.add(q.question)
            out.append(q)
    return out


def _normalised(text: str) -> str:
    return " ".join(text.lower().split())


def _drop_repeats(docs: list[Document]) -> list[Document]:
    """The clean corpus holds no duplicates of its own: every duplicate is a planted one."""
    seen, out = set(), []
    for d in docs:
        key = _normalised(d.text)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def _plant(docs: list[Document], rng: random.Random, planted: dict[str, int], towns: list[Town]) -> list[Document]:
    out: list[Document] = []
    sources = [d for d in docs if d.kind in ("qa", "passage", "fact")]
    long_sources = [d for d in docs if d.kind == "passage"]
    for src in rng.sample(sources, min(planted["exact_duplicates"], len(sources))):
        out.append(Document(src.subject, _exact_duplicate(src.text, rng), "planted",
                            {"problems": ["exact_duplicate"], "exact_duplicate_of": id(src)}))
    if planted["near_duplicates"] and len(long_sources) < planted["near_duplicates"]:
        raise ValueError(f"near_duplicates needs as many passages; raise sample.passages_per_subject "
                         f"(have {len(long_sources)}, need {planted['near_duplicates']})")
    for src in rng.sample(long_sources, planted["near_duplicates"]):
        out.append(Document(src.subject, _near_duplicate(src.text, rng), "planted",
                            {"problems": ["near_duplicate"], "near_duplicate_of": id(src)}))
    taken = {_normalised(d.text) for d in docs}
    for i in range(planted["pii"]):
        kind = PII_TYPES[i % len(PII_TYPES)]
        text, labels = _unique(taken, functools.partial(_pii_line, kind, rng, towns))
        out.append(Document("world_facts", text, "planted", labels))
    subjects = sorted({d.subject for d in docs})
    # Each cycle through a list visits every entry once, in an order drawn from the seed.
    toxic = _cycled(rng, _TOXIC_COMMENTS, planted["toxic"])
    clean = _cycled(rng, _BORDERLINE_CLEAN, planted["toxic"])  # as many clean controls as toxic lines
    for (category, template), clean_template in zip(toxic, clean, strict=True):
        text = _unique_comment(taken, template, rng, towns)
        out.append(Document(rng.choice(subjects), text, "planted",
                            {"problems": ["toxic"], "toxic": True, "category": category}))
        text = _unique_comment(taken, clean_template, rng, towns)
        out.append(Document(rng.choice(subjects), text, "planted", {"problems": [], "toxic": False,
                                                                    "borderline": True}))
    return out


def _unique_comment(taken: set[str], template: str, rng: random.Random, towns: list[Town]) -> str:
    """A comment from the template that duplicates no other document (names and towns vary)."""
    for _ in range(200):
        town, person = rng.choice(towns), rng.choice(_FIRST)
        text = template.format(n=person, t=town.name, g=town.good)
        if _normalised(text) not in taken:
            taken.add(_normalised(text))
            return text
    raise ValueError(f"too few distinct comments for '{template}'; lower sample.planted.toxic or raise "
                     "sample.world_towns")


def _cycled(rng: random.Random, entries: list, n: int) -> list:
    out: list = []
    while len(out) < n:
        out += rng.sample(entries, len(entries))
    return out[:n]


def _unique(taken: set[str], draw: Callable[[], tuple[str, dict]]) -> tuple[str, dict]:
    """Draw until the text duplicates no other document: a planted line's only
    label is the one planted."""
    while True:
        text, labels = draw()
        if _normalised(text) not in taken:
            taken.add(_normalised(text))
            return text, labels


def _pii_line(kind: str, rng: random.Random, towns: list[Town]) -> tuple[str, dict]:
    town, person = rng.choice(towns), f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
    value = _pii_value(kind, rng, person)
    text = _PII_TEMPLATES[kind].format(t=town.name, p=person, g=town.good, v=value)
    start = text.index(value)
    return text, {"problems": ["pii"], "pii": [{"type": kind, "start": start, "end": start + len(value),
                                                 "value": value}]}


def _mmlu_rows(questions: list[Question], rng: random.Random) -> list[list[str]]:
    """Rows `question, A, B, C, D, answer`; answer letters are balanced across the set."""
    positions = [i % 4 for i in range(len(questions))]
    rng.shuffle(positions)
    rows = []
    for q, pos in zip(questions, positions, strict=True):
        choices = list(q.distractors)
        rng.shuffle(choices)
        choices.insert(pos, q.answer)
        rows.append([q.question, *choices, LETTERS[pos]])
    return rows


def mmlu_csv(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def summary(data: SampleData) -> dict:
    problems = Counter(p for label in data.labels for p in label["problems"])
    pii_types = Counter(e["type"] for label in data.labels for e in label.get("pii", []))
    return {
        "corpus_documents": len(data.corpus),
        "documents_per_subject": dict(Counter(d["subject"] for d in data.corpus)),
        "planted": dict(problems),
        "planted_pii_types": dict(pii_types),
        "mmlu": {s: {"dev": len(v["dev"]), "test": len(v["test"]),
                     "test_answer_letters": dict(Counter(r[5] for r in v["test"]))} for s, v in data.mmlu.items()},
    }
