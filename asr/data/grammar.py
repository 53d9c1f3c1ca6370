"""A small English grammar that writes varied, plausible sentences for the synthetic corpus.

The sentences are built from a vocabulary of some hundreds of words (people, animals, things, food,
places, adjectives, verbs with all their forms, numbers as words, times) arranged in the structures
of ordinary English: statements with subject, verb, object, prepositional phrases and adverbials in
several tenses, negations and contractions, questions (yes/no and wh-), imperatives, "there is"
sentences, numbers and clock times, reported speech and two clauses joined by a conjunction.

Everything is chosen with one `random.Random`, so a seed gives the same sentences on every machine.
The output is already normalised LibriSpeech style: upper case A-Z, apostrophe, single spaces.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator

MIN_WORDS = 3
MAX_WORDS = 15

# --- vocabulary ---------------------------------------------------------------------------------
# Nouns: "singular/plural" (plural "-" = uncountable), grouped by the role they can play.
# Tags say which verbs can take them as an object.
_NOUNS: dict[str, str] = {
    # people
    "man/men woman/women boy girl child/children teacher doctor farmer driver student nurse baker "
    "sailor soldier king queen friend neighbor brother sister mother father uncle aunt stranger "
    "officer writer singer player cook waiter pilot captain worker visitor guest": "person",
    # animals
    "dog cat horse bird cow sheep/sheep fox/foxes rabbit mouse/mice duck goat pig lion bear "
    "wolf/wolves fish/fish": "animal",
    # portable things
    "box/boxes bag key cup plate bottle lamp clock picture ticket coat hat shoe ball phone "
    "camera pen pencil knife/knives basket bucket blanket rope coin card jacket scarf glove "
    "umbrella ring watch/watches glass/glasses wallet guitar radio candle mirror towel ladder "
    "hammer brush/brushes flower stone shell chair table": "thing",
    # things to read and write
    "book letter newspaper map note story/stories poem list message/messages": "readable",
    # vehicles
    "car bicycle boat bus/buses train truck": "vehicle",
    # food
    "apple orange egg potato/potatoes tomato/tomatoes sandwich/sandwiches cake pie cookie banana "
    "lemon carrot onion peach/peaches pear cherry/cherries bread/- cheese/- soup/- rice/- "
    "butter/- sugar/-": "food",
    # drinks
    "milk/- tea/- coffee/- water/- juice/-": "drink",
    # places
    "kitchen garden park market station library/libraries school hospital office church river "
    "beach/beaches forest village city/cities bridge hill field shop bank restaurant hotel museum "
    "farm harbor airport street lake island mountain valley castle cottage barn house": "place",
}

_ADJECTIVES = {
    "any": "big small old new little large strange beautiful famous".split(),
    "colour": "red blue green yellow black white brown gray".split(),
    "animate": "young tall happy sad angry hungry busy kind clever brave lazy polite careful "
    "nervous friendly tired quiet rich poor lucky".split(),
    "inanimate": "heavy empty clean dirty warm cold wet dry soft hard cheap expensive broken "
    "wooden golden bright dark long short".split(),
}

# Verbs: "base" for regular verbs, "base:past:participle" for irregular ones. `_DOUBLE` doubles
# the final consonant before -ed and -ing.
_DOUBLE = {"stop", "drop", "plan", "grab", "run", "swim", "sit", "put", "cut", "get", "forget",
           "hit", "begin", "shop", "chat", "clap", "hug"}
_IRREGULAR_S = {"have": "has", "do": "does", "go": "goes"}

# transitive verb spec -> tags of the objects it takes
_TRANSITIVE: dict[str, str] = {
    "see:saw:seen": "person animal thing vehicle place food readable",
    "find:found:found": "person animal thing readable",
    "lose:lost:lost": "thing readable",
    "buy:bought:bought": "thing food vehicle readable drink",
    "sell:sold:sold": "thing food vehicle animal",
    "carry": "thing food animal",
    "bring:brought:brought": "thing food drink readable",
    "take:took:taken": "thing food readable",
    "hold:held:held": "thing animal",
    "paint": "thing vehicle place",
    "clean": "thing vehicle place",
    "fix": "thing vehicle",
    "break:broke:broken": "thing",
    "drop": "thing food",
    "watch": "person animal vehicle",
    "want": "thing food drink vehicle",
    "need": "thing food vehicle",
    "like": "person animal thing food drink place",
    "love": "person animal food place",
    "visit": "person place",
    "meet:met:met": "person",
    "call": "person animal",
    "help": "person",
    "follow": "person animal vehicle",
    "ask": "person",
    "thank": "person",
    "miss": "person animal place",
    "wash": "thing vehicle",
    "cook": "food",
    "eat:ate:eaten": "food",
    "drink:drank:drunk": "drink",
    "make:made:made": "food thing",
    "read:read:read": "readable",
    "write:wrote:written": "readable",
    "hide:hid:hidden": "thing food",
    "keep:kept:kept": "thing animal",
    "move": "thing vehicle",
    "throw:threw:thrown": "thing",
    "catch:caught:caught": "thing animal",
    "pull": "thing vehicle",
    "push": "thing vehicle",
    "count": "thing animal",
    "borrow": "thing readable vehicle",
    "order": "food drink",
    "cut:cut:cut": "food thing",
    "feed:fed:fed": "animal",
    "chase": "animal person",
    "remember": "person place thing",
    "forget:forgot:forgotten": "thing person",
    "choose:chose:chosen": "thing food",
    "share": "food thing",
    "send:sent:sent": "readable thing",
    "grab": "thing food",
}

_INTRANSITIVE = ("sleep:slept:slept walk run:ran:run swim:swam:swum sing:sang:sung dance laugh "
                 "smile wait arrive sit:sat:sat stand:stood:stood work play rest cry shout jump "
                 "fall:fell:fallen travel return stay listen talk hurry stop").split()

# verbs that take a person and a thing: "she gave the boy a book"
_DITRANSITIVE = ("give:gave:given send:sent:sent show:showed:shown bring:brought:brought "
                 "sell:sold:sold lend:lent:lent").split()

_NAMES = ("tom anna peter mary james sarah david lucy robert emma john alice michael helen george "
          "kate paul laura mark susan henry julia frank rose daniel clara oliver grace samuel "
          "nina").split()

_ADVERBS_MANNER = ("quickly slowly carefully quietly suddenly happily finally loudly gently "
                   "together again").split()
_ADVERBS_FREQUENCY = "always often usually sometimes never".split()

_TIMES = {
    "past": ["yesterday", "last night", "last week", "this morning", "two days ago",
             "three years ago", "on monday", "on friday", "last summer", "after dinner",
             "before lunch", "in the evening", "at midnight", "an hour ago"],
    "present": ["every day", "every morning", "on sundays", "in the winter", "at night",
                "after school", "on weekends", "twice a week"],
    "future": ["tomorrow", "next week", "next year", "on tuesday", "on saturday", "tonight",
               "after lunch", "in the morning", "soon", "later"],
}

_PREPOSITIONS_PLACE = ["in", "near", "behind", "beside", "next to", "outside", "inside", "at",
                       "across", "by"]
_PREPOSITIONS_THING = ["on", "under", "beside", "behind", "next to", "near", "in"]

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
         "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def number_words(n: int) -> str:
    """Spell an integer 0..999999 the way it is read aloud ("three hundred and five")."""
    if not 0 <= n < 1_000_000:
        raise ValueError(f"number out of range: {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + ("" if ones == 0 else " " + _ONES[ones])
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return _ONES[hundreds] + " hundred" + ("" if rest == 0 else " and " + number_words(rest))
    thousands, rest = divmod(n, 1000)
    words = number_words(thousands) + " thousand"
    if rest == 0:
        return words
    return words + (" and " if rest < 100 else " ") + number_words(rest)


# --- word forms ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Noun:
    singular: str
    plural: str | None  # None: uncountable ("milk", "bread")
    tag: str


@dataclass(frozen=True)
class Verb:
    base: str
    s: str          # third person singular present
    past: str
    participle: str
    ing: str
    objects: tuple[str, ...] = ()  # noun tags it takes as object (transitive verbs)


def _plural(word: str) -> str:
    if word.endswith(("s", "sh", "ch", "x")):
        return word + "es"
    if word.endswith("y") and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def _verb(spec: str, objects: str = "") -> Verb:
    parts = spec.split(":")
    base = parts[0]
    double = base + base[-1] if base in _DOUBLE else base
    if base in _IRREGULAR_S:
        s = _IRREGULAR_S[base]
    elif base.endswith(("s", "sh", "ch", "x", "z", "o")):
        s = base + "es"
    elif base.endswith("y") and base[-2] not in "aeiou":
        s = base[:-1] + "ies"
    else:
        s = base + "s"
    if base.endswith("e") and not base.endswith(("ee", "ye", "oe")):
        ing = base[:-1] + "ing"
    else:
        ing = double + "ing"
    if len(parts) == 3:
        past, participle = parts[1], parts[2]
    else:
        if base.endswith("e"):
            past = base + "d"
        elif base.endswith("y") and base[-2] not in "aeiou":
            past = base[:-1] + "ied"
        else:
            past = double + "ed"
        participle = past
    return Verb(base, s, past, participle, ing, tuple(objects.split()))


def _build_nouns() -> dict[str, list[Noun]]:
    by_tag: dict[str, list[Noun]] = {}
    for words, tag in _NOUNS.items():
        for entry in words.split():
            singular, _, plural = entry.partition("/")
            if plural == "-":
                noun = Noun(singular, None, tag)
            else:
                noun = Noun(singular, plural or _plural(singular), tag)
            by_tag.setdefault(tag, []).append(noun)
    return by_tag


NOUNS = _build_nouns()
TRANSITIVE = [_verb(spec, objects) for spec, objects in _TRANSITIVE.items()]
INTRANSITIVE = [_verb(spec) for spec in _INTRANSITIVE]
DITRANSITIVE = [_verb(spec, "readable thing food") for spec in _DITRANSITIVE]


# --- phrases -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Phrase:
    """A noun phrase with what the verb must agree with."""

    words: str
    person: int = 3          # 1, 2 or 3
    plural: bool = False
    tag: str = "person"      # noun tag of the head, for adjectives that fit


_SUBJECT_PRONOUNS = [Phrase("i", 1), Phrase("you", 2, True), Phrase("he"), Phrase("she"),
                     Phrase("we", 1, True), Phrase("they", 3, True)]
_OBJECT_PRONOUNS = ["me", "you", "him", "her", "us", "them"]
_POSSESSIVES = ["my", "your", "his", "her", "our", "their"]


class SentenceGrammar:
    """Writes one sentence at a time from a seeded `random.Random`."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.templates = [
            (self.statement, 28),
            (self.statement_with_object_place, 8),
            (self.ditransitive, 6),
            (self.copula, 8),
            (self.there_is, 5),
            (self.numbers, 8),
            (self.clock, 4),
            (self.yes_no_question, 7),
            (self.wh_question, 8),
            (self.how_many_question, 3),
            (self.imperative, 5),
            (self.compound, 12),
            (self.reported, 4),
        ]
        self.weights = [w for _, w in self.templates]

    # -- building blocks --
    def choice(self, items):
        return self.rng.choice(items)

    def maybe(self, p: float) -> bool:
        return self.rng.random() < p

    def noun(self, tags: str | tuple[str, ...]) -> Noun:
        tags = tags.split() if isinstance(tags, str) else list(tags)
        return self.choice(NOUNS[self.choice(tags)])

    def adjective(self, tag: str) -> str:
        """An adjective that fits a noun with `tag`."""
        groups = ["any", "animate" if tag in ("person", "animal") else "inanimate"]
        if tag != "person":
            groups.append("colour")
        return self.choice(_ADJECTIVES[self.choice(groups)])

    def noun_phrase(self, tags, allow_plural: bool = True, definite_bias: float = 0.5) -> Phrase:
        """"the old dog", "a red box", "three apples", "my sister", "tom's bicycle"."""
        noun = self.noun(tags)
        plural = allow_plural and noun.plural is not None and self.maybe(0.3)
        head = (noun.plural if plural else noun.singular)
        if self.maybe(0.45):
            head = self.adjective(noun.tag) + " " + head
        r = self.rng.random()
        if r < definite_bias:
            det = "the"
        elif r < definite_bias + 0.15:
            det = self.choice(_POSSESSIVES)
        elif r < definite_bias + 0.22 and noun.tag != "person":
            det = self.choice(_NAMES) + "'s"
        elif plural:
            det = self.choice(["some", "two", "three", "four", "five", "many", "several",
                               "these", "those", "a few"])
        elif noun.plural is None:
            det = self.choice(["some", "the", "more"])
        else:
            det = self.choice(["a", "this", "that", "every"])
            if det == "a" and head[0] in "aeio":
                det = "an"
        return Phrase(f"{det} {head}", 3, plural, noun.tag)

    def subject(self) -> Phrase:
        r = self.rng.random()
        if r < 0.25:
            return Phrase(self.choice(_NAMES))  # tag "person"
        if r < 0.45:
            return self.choice(_SUBJECT_PRONOUNS)
        return self.noun_phrase("person animal", definite_bias=0.6)

    def object_phrase(self, verb: Verb) -> str:
        if "person" in verb.objects and self.maybe(0.25):
            return self.choice(_NAMES + _OBJECT_PRONOUNS)
        return self.noun_phrase(verb.objects).words

    def place_phrase(self) -> str:
        prep = self.choice(_PREPOSITIONS_PLACE)
        place = self.noun_phrase("place", allow_plural=False, definite_bias=0.75).words
        return f"{prep} {place}"

    def verb_group(self, subject: Phrase, verb: Verb, tense: str, negative: bool = False) -> str:
        """The verb in `tense` ("past", "present", "future", ...) agreeing with `subject`."""
        third_singular = subject.person == 3 and not subject.plural
        be_present = "am" if subject.person == 1 and not subject.plural else (
            "is" if third_singular else "are")
        be_past = "was" if (subject.person != 2 and not subject.plural) else "were"
        if tense == "past":
            if negative:
                negation = self.choice(["did not", "didn't", "never"])
                return f"{negation} {verb.past if negation == 'never' else verb.base}"
            return verb.past
        if tense == "present":
            if negative:
                return ("doesn't " if third_singular else "don't ") + verb.base
            return verb.s if third_singular else verb.base
        if tense == "future":
            if negative:
                return self.choice(["will not", "won't"]) + " " + verb.base
            return self.choice(["will", "will", "is going to" if third_singular else (
                "am going to" if be_present == "am" else "are going to")]) + " " + verb.base
        if tense == "modal":
            modal = self.choice(["can", "could", "should", "might", "must", "would"])
            if negative:
                modal = self.choice({"can": ["cannot", "can't"], "could": ["couldn't"],
                                     "should": ["shouldn't"], "might": ["might not"],
                                     "must": ["must not"], "would": ["wouldn't"]}[modal])
            return f"{modal} {verb.base}"
        if tense == "progressive":
            return f"{be_present}{' not' if negative else ''} {verb.ing}"
        if tense == "past_progressive":
            return f"{be_past}{' not' if negative else ''} {verb.ing}"
        if tense == "perfect":
            aux = "has" if third_singular else "have"
            adverb = self.choice(['', 'already ', 'just ']) if not negative else ''
            return f"{aux}{' not' if negative else ''} {adverb}{verb.participle}"
        raise ValueError(tense)

    def tense(self) -> str:
        return self.rng.choices(
            ["past", "present", "future", "modal", "progressive", "past_progressive", "perfect"],
            weights=[35, 15, 15, 12, 10, 6, 7])[0]

    def time_for(self, tense: str) -> str | None:
        key = {"past": "past", "past_progressive": "past", "present": "present",
               "future": "future"}.get(tense)
        return self.choice(_TIMES[key]) if key else None

    # -- sentence templates --
    def clause(self, subject: Phrase | None = None) -> str:
        """subject + verb (+ object) (+ place) (+ adverb) (+ time)."""
        subject = subject or self.subject()
        tense = self.tense()
        negative = self.maybe(0.12)
        if self.maybe(0.65):
            verb = self.choice(TRANSITIVE)
            rest = [self.object_phrase(verb)]
        else:
            verb = self.choice(INTRANSITIVE)
            rest = []
        words = [subject.words]
        if tense == "present" and not negative and self.maybe(0.4):
            words.append(self.choice(_ADVERBS_FREQUENCY))
        words.append(self.verb_group(subject, verb, tense, negative))
        words += rest
        if self.maybe(0.55):
            words.append(self.place_phrase())
        if self.maybe(0.25):
            words.append(self.choice(_ADVERBS_MANNER))
        time = self.time_for(tense)
        if time and self.maybe(0.5):
            if self.maybe(0.3):
                words.insert(0, time)
            else:
                words.append(time)
        return " ".join(words)

    def statement(self) -> str:
        return self.clause()

    def statement_with_object_place(self) -> str:
        subject = self.subject()
        verb = _verb("put:put:put")
        tense = self.choice(["past", "future", "modal"])
        thing = self.noun_phrase("thing food readable").words
        prep = self.choice(_PREPOSITIONS_THING)
        where = self.noun_phrase("thing", allow_plural=False, definite_bias=0.8).words
        return f"{subject.words} {self.verb_group(subject, verb, tense)} {thing} {prep} {where}"

    def ditransitive(self) -> str:
        subject = self.subject()
        verb = self.choice(DITRANSITIVE)
        tense = self.choice(["past", "past", "future", "modal", "perfect"])
        person = self.choice(_NAMES + _OBJECT_PRONOUNS) if self.maybe(0.5) else \
            self.noun_phrase("person", allow_plural=False, definite_bias=0.7).words
        thing = self.noun_phrase(verb.objects).words
        vg = self.verb_group(subject, verb, tense)
        if self.maybe(0.5):
            return f"{subject.words} {vg} {person} {thing}"
        return f"{subject.words} {vg} {thing} to {person}"

    def copula(self) -> str:
        subject = self.noun_phrase("person animal thing food place vehicle", definite_bias=0.7) \
            if self.maybe(0.7) else self.subject()
        adjective = self.adjective(subject.tag)
        if self.maybe(0.3):
            adjective = self.choice(["very", "quite", "too", "so", "rather"]) + " " + adjective
        past = self.maybe(0.5)
        if subject.person == 1 and not subject.plural:
            be = "was" if past else "am"
        elif subject.plural or subject.person == 2:
            be = "were" if past else "are"
        else:
            be = "was" if past else "is"
        if self.maybe(0.15):
            be += " not"
        sentence = f"{subject.words} {be} {adjective}"
        if self.maybe(0.3):
            sentence += " " + self.place_phrase()
        if self.maybe(0.4):
            sentence += " " + self.choice(_TIMES["past"] if past else _TIMES["present"])
        return sentence

    def there_is(self) -> str:
        thing = self.noun_phrase("thing food animal person vehicle readable", definite_bias=0.0)
        be = ("were" if thing.plural else "was") if self.maybe(0.5) else (
            "are" if thing.plural else "is")
        where = self.place_phrase() if self.maybe(0.5) else (
            self.choice(_PREPOSITIONS_THING) + " "
            + self.noun_phrase("thing", allow_plural=False, definite_bias=0.8).words)
        return f"there {be} {thing.words} {where}"

    def numbers(self) -> str:
        r = self.rng.random()
        name = self.subject()
        if r < 0.3:
            noun = self.choice([n for n in NOUNS["food"] + NOUNS["thing"] if n.plural])
            count = self.rng.choice([self.rng.randint(2, 20), self.rng.randint(21, 99),
                                     self.rng.randint(100, 999)])
            verb = self.choice([v for v in TRANSITIVE if set(v.objects) & {"food", "thing"}])
            return f"{name.words} {self.verb_group(name, verb, 'past')} " \
                   f"{number_words(count)} {noun.plural}"
        if r < 0.5:
            age = self.rng.randint(2, 95)
            be = "was" if self.maybe(0.3) and name.person != 2 and not name.plural else (
                "am" if name.person == 1 and not name.plural else
                "is" if name.person == 3 and not name.plural else "are")
            return f"{name.words} {be} {number_words(age)} years old"
        if r < 0.65:
            price = self.rng.randint(2, 500)
            thing = self.noun_phrase("thing vehicle readable", allow_plural=False,
                                     definite_bias=0.9).words
            verb = self.choice(["costs", "cost", "will cost"])
            return f"{thing} {verb} {number_words(price)} {self.choice(['dollars', 'pounds'])}"
        if r < 0.8:
            amount = number_words(self.rng.randint(2, 60))
            unit = self.choice(["minutes", "hours", "days", "weeks", "miles", "years"])
            verb = self.choice(INTRANSITIVE)
            return f"{name.words} {self.verb_group(name, verb, 'past')} for {amount} {unit}"
        if r < 0.9:
            year = self.rng.randint(1900, 2030)
            century, rest = divmod(year, 100)
            spoken = number_words(century) + " " + (
                "hundred" if rest == 0 else ("oh " + _ONES[rest] if rest < 10
                                             else number_words(rest)))
            if 2000 <= year < 2010:
                spoken = number_words(year)
            return f"{name.words} {self.verb_group(name, self.choice(TRANSITIVE), 'past')} " \
                   f"{self.noun_phrase('person place thing').words} in {spoken}"
        room = number_words(self.rng.randint(1, 999))
        return f"{name.words} {self.verb_group(name, _verb('live'), 'past')} in room {room}"

    def clock(self) -> str:
        hour = number_words(self.rng.randint(1, 12))
        minutes = self.rng.choice([None, "fifteen", "thirty", "forty five", "ten", "twenty"])
        when = self.choice([f"{hour} o'clock", f"half past {hour}", f"a quarter to {hour}",
                            f"{hour} {minutes}" if minutes else f"{hour} o'clock"])
        subject = self.choice([self.noun_phrase("vehicle", allow_plural=False,
                                                definite_bias=1.0), self.subject()])
        verb = self.choice([_verb("leave:left:left"), _verb("arrive"), _verb("open"),
                            _verb("close"), _verb("start"), _verb("come:came:come"),
                            _verb("wake:woke:woken")])
        tense = self.choice(["past", "present", "future"])
        return f"{subject.words} {self.verb_group(subject, verb, tense)} at {when}"

    def yes_no_question(self) -> str:
        subject = self.subject()
        verb = self.choice(TRANSITIVE)
        obj = self.object_phrase(verb)
        third_singular = subject.person == 3 and not subject.plural
        aux = self.choice(["did", "will", "can", "could", "should",
                           "does" if third_singular else "do"])
        sentence = f"{aux} {subject.words} {verb.base} {obj}"
        if self.maybe(0.6):
            sentence += " " + self.place_phrase()
        return sentence

    def wh_question(self) -> str:
        subject = self.subject()
        verb = self.choice(TRANSITIVE)
        third_singular = subject.person == 3 and not subject.plural
        aux = self.choice(["did", "will", "can", "does" if third_singular else "do"])
        r = self.rng.random()
        if r < 0.3:
            tense = {"did": "past", "will": "future"}.get(aux, "present")
            tail = self.place_phrase() if self.maybe(0.5) else self.choice(_TIMES[tense])
            return f"what {aux} {subject.words} {verb.base} {tail}"
        if r < 0.5:
            return f"who {verb.past} {self.object_phrase(verb)}"
        if r < 0.6:
            thing = self.noun_phrase("thing vehicle animal food place", definite_bias=0.9)
            be = "are" if thing.plural else self.choice(["is", "was"])
            return f"where {be} {thing.words}"
        wh = self.choice(["where", "why", "when", "how"])
        return f"{wh} {aux} {subject.words} {verb.base} {self.object_phrase(verb)}"

    def how_many_question(self) -> str:
        verb = self.choice([v for v in TRANSITIVE if v.base in
                            ("see", "buy", "find", "sell", "eat", "count", "make", "need", "want")])
        nouns = [n for tag in verb.objects if tag in NOUNS for n in NOUNS[tag] if n.plural]
        noun = self.choice(nouns)
        subject = self.subject()
        aux = "did" if self.maybe(0.6) else "will"
        sentence = f"how many {noun.plural} {aux} {subject.words} {verb.base}"
        if self.maybe(0.4):
            sentence += " " + self.choice(_TIMES["past" if aux == "did" else "future"])
        return sentence

    def imperative(self) -> str:
        verb = self.choice(TRANSITIVE)
        start = self.choice(["please ", "", "", "don't ", "never ", "always "])
        sentence = f"{start}{verb.base} {self.object_phrase(verb)}"
        if self.maybe(0.6):
            sentence += " " + self.place_phrase()
        if self.maybe(0.3):
            sentence += " " + self.choice(_ADVERBS_MANNER)
        return sentence

    def compound(self) -> str:
        first = self.clause()
        joint = self.choice(["and", "but", "because", "so", "when", "while", "before", "after",
                             "and then", "although", "until", "if"])
        return f"{first} {joint} {self.clause()}"

    def reported(self) -> str:
        subject = self.subject()
        verb = self.choice([_verb("say:said:said"), _verb("think:thought:thought"),
                            _verb("know:knew:known"), _verb("hope"), _verb("believe"),
                            _verb("tell:told:told")])
        vg = self.verb_group(subject, verb, self.choice(["past", "present"]))
        if verb.base == "tell":
            vg += " " + self.choice(_NAMES + _OBJECT_PRONOUNS)
        that = "that " if self.maybe(0.5) else ""
        return f"{subject.words} {vg} {that}{self.clause()}"

    def sentence(self) -> str:
        """One sentence of MIN_WORDS..MAX_WORDS words, upper case, no punctuation."""
        while True:
            template = self.rng.choices(self.templates, weights=self.weights)[0][0]
            words = template().split()
            if MIN_WORDS <= len(words) <= MAX_WORDS:
                return " ".join(words).upper()


QUESTION_WORDS = frozenset(
    "DID DOES DO WILL CAN COULD SHOULD WHAT WHO WHERE WHY WHEN HOW".split())


def is_question(text: str) -> bool:
    """Whether a sentence from the grammar is a question (it is spoken with a question mark)."""
    first = text.split(" ", 1)[0].upper()
    return first in QUESTION_WORDS


def sentence_generator(seed: int) -> Iterator[str]:
    """Yield an endless, seeded stream of sentences, each 3-15 words, normalised (A-Z ' space).

    The same seed gives the same stream on every machine and Python version (random.Random).
    """
    grammar = SentenceGrammar(random.Random(seed))
    while True:
        yield grammar.sentence()
