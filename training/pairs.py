"""Training pairs for the learned verifier: (a, b, label), label 1 when one answer serves both.

Carrier questions are Quora's (``../shared/data/gptcache_qqp/similiar_qqp.json``), minus every
text that appears in GPTCache's benchmark (``mock_data.json``, held out: it is read only to leave
its texts out). Kinds of pairs, each a known label:

* positives: Quora's duplicate pairs (restructured questions); one content word replaced by a
  WordNet synonym of the same most frequent sense; the same request in another question frame
  ("How do I X?" / "What are the steps to X?"); surface noise (a typo, case, punctuation,
  contractions, a greeting or a sign-off);
* hard negatives of the same type - the decisive signal: one noun replaced by a WordNet sibling
  (another drug, city, weekday, animal, job), one word by its antonym, one word by another real
  word spelled almost alike ("cerium" / "cesium": a misspelling is a positive, another word is
  not), two nouns trading places ("cups in a liter" / "liters in a cup"), one possessive or
  pronoun by another person's ("my" / "my colleague's"), and a Quora question paired with a
  *different* Quora question that the embedding finds close.

A share of every kind's pairs is set after a sentence of context both sides share, so that long
requests are judged by what differs, not by their length.

Everything is drawn with one seeded ``random.Random``: the same inputs give the same pairs.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .wordnet import WordNet

WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")
STOP = frozenset("""a an the is are was were be been being do does did have has had of to in on at for with by from
about as into like through after over between out against during without before under around among i you he she
it we they me him her us them my your his its our their mine yours what which who whom whose this that these those
am can could should would will shall may might must how why when where there here and or but if then than so not
no nor too very just also any some all each every other such only own same few more most much many get got make
made go going know think want need use way thing things one two best good new people""".split())
PRONOUN_SWAPS = [("my", "your"), ("my", "his"), ("my", "her"), ("my", "our"), ("your", "my"), ("his", "her"),
                 ("my", "my colleague's"), ("my", "my wife's"), ("my", "my son's"), ("our", "their"),
                 ("i", "my friend"), ("me", "my team")]
# WordNet lexicographer files whose members are swapped for siblings: noun.animal (5), artifact (6),
# body (8), food (13), location (15), person (18), plant (20), substance (27), time (28)
SWAPPABLE_KINDS = frozenset({5, 6, 8, 13, 15, 18, 20, 27, 28})
SYMMETRIC = frozenset("and or vs versus between & nor".split())  # "X and Y" / "Y and X" ask the same
CONTEXT_SHARE = 0.2
GREETINGS = ["Hi, ", "Hello! ", "Hey, ", "Quick question: ", "Please tell me: "]
SIGN_OFFS = [" Thanks!", " Thank you.", " Please help.", " Thanks in advance."]
# Question frames that ask the same thing of the same rest ("How do I X?" / "What's the way to X?")
FRAMES = {
    "how_to": ["How do I {x}?", "How can I {x}?", "How to {x}?", "What is the way to {x}?",
               "What's the best way to {x}?", "What are the steps to {x}?", "Is there a way to {x}?",
               "How would I {x}?", "Tell me how to {x}.", "Explain how to {x}.", "How should I {x}?",
               "What should I do to {x}?"],
    "what_is": ["What is {x}?", "What's {x}?", "Explain {x}.", "Can you explain {x}?", "What does {x} mean?",
                "Tell me what {x} is.", "Define {x}."],
}
FRAME_PATTERNS = {
    "how_to": re.compile(
        r"^(?:how (?:do|can|should|would) i|how to|what is the (?:best )?way to|what's the (?:best )?way to|"
        r"what are the steps to|is there a way to|tell me how to|explain how to)\s+(?P<x>[^?.!]{6,}?)\s*[?.!]*$", re.I),
    "what_is": re.compile(r"^(?:what is|what's|explain|define)\s+(?P<x>(?:an? |the )?[^?.!,]{3,40}?)\s*[?.!]*$", re.I),
}
MOVABLE = re.compile(
    r"^(?P<head>(?:how|what|which|where|when|who|why|is|are|can|do|does|should|will|would|could)\b.+?)\s+"
    r"(?P<phrase>(?:in|on|for|with|at|during|using|by|after|before|without|within|under|near|over)\s+[^,?.!]{2,40})"
    r"(?P<end>[?.!]?)$", re.I)
CONJUNCTS = re.compile(r"\b([A-Za-z][\w+#-]*) (and|or|vs\.?|versus) ([A-Za-z][\w+#-]*)\b")
CONTRACTIONS = [("what is", "what's"), ("how is", "how's"), ("do not", "don't"), ("i am", "i'm"), ("it is", "it's"),
                ("cannot", "can't"), ("does not", "doesn't"), ("where is", "where's")]


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    label: int
    kind: str


def quora_pairs(path: Path, held_out: set[str]) -> list[tuple[str, str]]:
    """Quora's duplicate pairs, minus any whose text is in the held-out benchmark."""
    rows = json.loads(path.read_text(encoding="utf-8"))
    out = []
    for row in rows:
        a, b = row["origin"].strip(), row["similar"].strip()
        if a and b and a != b and a not in held_out and b not in held_out and len(a) < 200 and len(b) < 200:
            out.append((a, b))
    return out


def held_out_texts(mock_data: Path) -> set[str]:
    """The texts of GPTCache's benchmark, to leave out of training (the file is not otherwise used)."""
    rows = json.loads(mock_data.read_text(encoding="utf-8"))
    return {str(r.get(k, "")).strip() for r in rows for k in ("origin", "similar")}


class PairMaker:
    """Makes labelled pairs from carrier questions with WordNet and a seeded random source."""

    def __init__(self, wordnet: WordNet, questions: Sequence[str], seed: int) -> None:
        self.wordnet = wordnet
        self.random = random.Random(seed)
        self.counts = Counter(w.lower() for q in questions for w in WORD.findall(q))
        self._deletions: dict[str, list[str]] | None = None

    def is_word(self, word: str) -> bool:
        w = word.lower()
        return bool(self.wordnet.parts_of_speech(w)) or self._lemma(w, "noun") is not None

    def _near_index(self) -> dict[str, list[str]]:
        """Single-word WordNet lemmas by each one-letter deletion of them (words sharing a key
        are at most two edits apart)."""
        if self._deletions is None:
            index: dict[str, list[str]] = {}
            lemmas = {w for (w, _pos) in self.wordnet.senses if w.isalpha() and len(w) >= 4}
            for w in sorted(lemmas):
                for i in range(len(w)):
                    index.setdefault(w[:i] + w[i + 1:], []).append(w)
            self._deletions = index
        return self._deletions

    def near_spellings(self, word: str) -> list[str]:
        """Other real words spelled almost like ``word`` that mean something else: no shared
        sense, and not an inflection of it ("paint" / "paints")."""
        w = word.lower()
        index = self._near_index()
        found = {other for i in range(len(w)) for other in index.get(w[:i] + w[i + 1:], [])}
        senses = {key for pos in ("noun", "verb", "adj", "adv") for key in self.wordnet.senses.get((w, pos), [])}
        out = []
        for other in sorted(found):
            if other == w or other[:1] != w[:1] or other.startswith(w) or w.startswith(other):
                continue
            if senses & {key for pos in ("noun", "verb", "adj", "adv")
                         for key in self.wordnet.senses.get((other, pos), [])}:
                continue  # "colour" / "color"
            out.append(other)
        return out

    def near_spelling(self, text: str) -> str | None:
        """``text`` with one noun replaced by another real noun spelled almost alike (a common
        one, unless the noun itself is rare: "cesium" / "cerium")."""
        words = [m for m in self._content_words(text) if len(m.group()) >= 4 and m.group().isalpha()]
        self.random.shuffle(words)
        for match in words:
            lemma = self._lemma(match.group(), "noun")
            if lemma is None or match.group().lower() != lemma:
                continue
            options = [o for o in self.near_spellings(lemma) if (o, "noun") in self.wordnet.senses]
            if self.common(lemma, 5):
                options = [o for o in options if self.common(o, 3)]
            if options:
                return self._replace(text, match.start(), match.end(), self.random.choice(options))
        return None

    def _mainly_noun(self, word: str) -> bool:
        lemma = self._lemma(word, "noun")
        if lemma is None or "adj" in self.wordnet.parts_of_speech(lemma):
            return False
        return self.wordnet.sense_count(lemma, "noun") > self.wordnet.sense_count(lemma, "verb")

    def swap_nouns(self, text: str) -> str | None:
        """``text`` with two of its nouns trading places across a preposition ("cups in a liter"
        / "liters in a cup"), each taking the other's number; not across a symmetric word
        ("and", "between", "vs")."""
        nouns = [m for m in self._content_words(text) if m.group().isalpha() and self._mainly_noun(m.group())]
        for _ in range(4):
            if len(nouns) < 2:
                return None
            x, y = sorted(self.random.sample(nouns, 2), key=lambda m: m.start())
            between = [w.lower() for w in re.findall(r"[A-Za-z&]+", text[x.end():y.start()])]
            lx, ly = self._lemma(x.group(), "noun"), self._lemma(y.group(), "noun")
            if (lx == ly or lx is None or ly is None or set(between) & SYMMETRIC or "," in text[x.end():y.start()]
                    or not any(w in STOP for w in between)):
                continue
            first = ly + ("s" if x.group().lower() != lx else "")
            second = lx + ("s" if y.group().lower() != ly else "")
            if x.group()[:1].isupper():
                first = first[:1].upper() + first[1:]
            if y.group()[:1].isupper():
                second = second[:1].upper() + second[1:]
            return text[:x.start()] + first + text[x.end():y.start()] + second + text[y.end():]
        return None

    def move_phrase(self, text: str) -> str | None:
        """A question's closing phrase moved to its front ("How do I read a CSV in Python?" / "In
        Python, how do I read a CSV?"): the same request."""
        match = MOVABLE.match(text.strip())
        if match is None:
            return None
        head, phrase = match.group("head"), match.group("phrase")
        return f"{phrase[0].upper()}{phrase[1:]}, {head[0].lower()}{head[1:]}{match.group('end') or '?'}"

    def names(self, texts: Iterable[str], at_least: int = 3) -> list[str]:
        """Capitalised words inside sentences that WordNet does not know, seen at least
        ``at_least`` times (names of products, brands, drugs, places, people; not typos)."""
        seen: Counter[str] = Counter()
        for text in texts:
            for match in WORD.finditer(text):
                word = match.group()
                if match.start() > 0 and word[:1].isupper() and word.isalpha() and len(word) > 2 \
                        and not self.is_word(word):
                    seen[word] += 1
        return sorted(w for w, n in seen.items() if n >= at_least)

    def name_swap(self, text: str, names: Sequence[str]) -> str | None:
        """``text`` with one name WordNet does not know replaced by another such name ("Jira" /
        "Asana", "Celebrex" / "Celexa"): a different thing asked about."""
        known = set(names)
        found = [m for m in WORD.finditer(text) if m.group() in known]
        if not found:
            return None
        match = self.random.choice(found)
        other = self.random.choice(names)
        return None if other == match.group() else text[:match.start()] + other + text[match.end():]

    def adjectives(self, at_least: int = 20) -> list[str]:
        """Words WordNet knows only as adjectives, common in the corpus ("quick", "cheap")."""
        return sorted(w for w, n in self.counts.items() if n >= at_least and w.isalpha() and len(w) > 3
                      and w not in STOP and self.wordnet.parts_of_speech(w) == {"adj"})

    def add_qualifier(self, text: str, adjectives: Sequence[str]) -> str | None:
        """``text`` with an adjective put before one of its nouns ("dinner ideas" / "quick dinner
        ideas"): a narrower question, which a general answer does not serve."""
        nouns = [m for m in self._content_words(text)
                 if m.group().isalpha() and m.group().islower() and self._mainly_noun(m.group())]
        if not nouns or not adjectives:
            return None
        match = self.random.choice(nouns)
        return text[:match.start()] + self.random.choice(adjectives) + " " + text[match.start():]

    def swap_conjuncts(self, text: str) -> str | None:
        """Two single words either side of "and", "or" or "vs" trading places ("TCP and UDP" /
        "UDP and TCP"): the same request."""
        match = CONJUNCTS.search(text)
        if match is None or match.group(1).lower() in STOP or match.group(3).lower() in STOP:
            return None
        return text[:match.start()] + f"{match.group(3)} {match.group(2)} {match.group(1)}" + text[match.end():]

    def with_context(self, pair: Pair, context: str) -> Pair:
        """``pair`` after the same sentence of context on both sides."""
        return Pair(f"{context} {pair.a}", f"{context} {pair.b}", pair.label, pair.kind)

    def common(self, word: str, at_least: int = 3) -> bool:
        return self.counts[word.lower()] >= at_least

    def _lemma(self, word: str, pos: str) -> str | None:
        """The WordNet form of ``word`` (plural nouns singular)."""
        w = word.lower()
        for form in (w, w[:-1] if w.endswith("s") else None, w[:-2] if w.endswith("es") else None,
                     w[:-3] + "y" if w.endswith("ies") else None):
            if form and (form, pos) in self.wordnet.senses:
                return form
        return None

    def _replace(self, text: str, start: int, end: int, replacement: str) -> str:
        original = text[start:end]
        if original[:1].isupper():
            replacement = replacement[:1].upper() + replacement[1:]
        if original.lower().endswith("s") and not replacement.endswith("s") and original.lower() != original[:-1]:
            lemma = self._lemma(original, "noun")
            if lemma is not None and lemma != original.lower():
                replacement += "s"
        return text[:start] + replacement.replace("_", " ") + text[end:]

    def _content_words(self, text: str) -> list[re.Match[str]]:
        return [m for m in WORD.finditer(text) if m.group().lower() not in STOP and len(m.group()) > 2]

    def substitute(self, text: str, relation: str) -> str | None:
        """``text`` with one content word replaced by a WordNet ``relation`` of it (synonym,
        sibling, antonym), both common in the corpus; None when no word has one.

        Precision before coverage: a word is replaced only when its reading is unambiguous
        enough (a noun that is no verb or adjective, with few senses, for synonyms and siblings;
        siblings only in kinds where a swap changes the answer: substances and drugs, places,
        times, people, foods, animals, plants, artifacts, body parts) and the replacement is a
        single common word."""
        words = self._content_words(text)
        self.random.shuffle(words)
        for match in words:
            for pos in (("noun",) if relation in ("sibling", "synonym") else ("noun", "verb", "adj")):
                lemma = self._lemma(match.group(), pos)
                if lemma is None or match.group().lower().endswith("ing"):
                    continue
                if relation != "antonym" and (self.wordnet.parts_of_speech(lemma) != {"noun"}
                                              or self.wordnet.sense_count(lemma, "noun") > 3):
                    continue
                sense = self.wordnet.first_sense(lemma, pos)
                if relation == "sibling" and (sense is None or sense.lexname not in SWAPPABLE_KINDS):
                    continue
                options = {"synonym": self.wordnet.synonyms, "sibling": self.wordnet.siblings,
                           "antonym": self.wordnet.antonyms}[relation](lemma, pos)
                options = [o for o in options if "_" not in o and "-" not in o and o != lemma
                           and self.common(o, 5 if relation == "antonym" else 10)]
                if options:
                    return self._replace(text, match.start(), match.end(), self.random.choice(options))
        return None

    def reframe(self, text: str) -> str | None:
        """The same request in another question frame, when ``text`` is in a known one
        ("How do I X?" / "What are the steps to X?"); only short, single-clause rests."""
        for kind, pattern in FRAME_PATTERNS.items():
            m = pattern.match(text.strip())
            if m and len(m.group("x").split()) <= 9 and " or " not in m.group("x"):
                rest = m.group("x")
                words = rest.lower().split()
                if kind == "what_is" and (len(words) > 4 or any(
                        w in ("you", "your", "my", "i", "difference", "thing") or w.endswith("est") for w in words)):
                    return None  # a term to explain, not "the strangest question you have seen"
                return self.random.choice(FRAMES[kind]).format(x=rest)
        return None

    def pronoun_swap(self, text: str) -> str | None:
        for old, new in self.random.sample(PRONOUN_SWAPS, len(PRONOUN_SWAPS)):
            pattern = re.compile(rf"\b{re.escape(old)}\b", re.IGNORECASE)
            if pattern.search(text):
                return pattern.sub(new, text, count=1)
        return None

    def typo(self, word: str) -> str | None:
        """``word`` misspelled (letters swapped, dropped, doubled or mistyped) into no real word."""
        i = self.random.randrange(1, len(word) - 2)
        how = self.random.randrange(4)
        if how == 0:
            typo = word[:i] + word[i + 1] + word[i] + word[i + 2:]
        elif how == 1:
            typo = word[:i] + word[i + 1:]
        elif how == 2:
            typo = word[:i] + word[i] + word[i:]
        else:
            typo = word[:i] + self.random.choice("aeiourstnl") + word[i + 1:]
        return typo if typo.lower() != word.lower() and not self.is_word(typo) else None

    def noise(self, text: str) -> str:
        """The same question with surface noise: a typo, a contraction, a greeting, case."""
        choice = self.random.randrange(5)
        if choice == 0:
            words = [m for m in WORD.finditer(text) if len(m.group()) > 5 and m.group().isalpha()]
            self.random.shuffle(words)
            for m in words:
                typo = self.typo(m.group())
                if typo is not None:
                    return text[:m.start()] + typo + text[m.end():]
        if choice == 1:
            low = text.lower()
            for full, short in CONTRACTIONS:
                if full in low:
                    return re.sub(re.escape(full), short, text, count=1, flags=re.IGNORECASE)
                if short in low:
                    return re.sub(re.escape(short), full, text, count=1, flags=re.IGNORECASE)
        if choice == 2:
            return self.random.choice(GREETINGS) + text[:1].lower() + text[1:]
        if choice == 3:
            return text.rstrip("?.! ") + self.random.choice(SIGN_OFFS)
        return text.lower().rstrip("?") if self.random.random() < 0.5 else text.upper()[:1] + text[1:]


def make_pairs(maker: PairMaker, duplicates: Sequence[tuple[str, str]], close_others: Iterable[tuple[str, str]],
               sizes: dict[str, int], extra_carriers: Sequence[str] = ()) -> list[Pair]:
    """The training pairs, ``sizes[kind]`` of each kind (fewer when the carriers run out).

    ``extra_carriers`` (questions in the style the cache will see) join Quora's as texts to
    change; each kind draws from the whole pool, so no kind starves another."""
    rng = maker.random
    carriers = [q for pair in duplicates for q in pair] + list(extra_carriers)
    pairs: list[Pair] = []
    picked = rng.sample(list(duplicates), min(sizes["quora_duplicate"], len(duplicates)))
    pairs += [Pair(a, b, 1, "quora_duplicate") if rng.random() < 0.5 else Pair(b, a, 1, "quora_duplicate")
              for a, b in picked]
    pairs += [Pair(a, b, 0, "quora_close_other") for a, b in list(close_others)[: sizes["quora_close_other"]]]
    makers: dict[str, tuple[int, Callable[[str], str | None]]] = {
              "synonym": (1, lambda t: maker.substitute(t, "synonym")),
              "reframe": (1, maker.reframe),
              "noise": (1, maker.noise),
              "sibling": (0, lambda t: maker.substitute(t, "sibling")),
              "antonym": (0, lambda t: maker.substitute(t, "antonym")),
              "pronoun": (0, maker.pronoun_swap),
              "near_spelling": (0, maker.near_spelling),
              "swap": (0, maker.swap_nouns)}
    for kind, (label, make) in makers.items():
        made = 0
        for text in rng.sample(carriers, len(carriers)):  # each kind draws from every carrier
            if made >= sizes[kind]:
                break
            other = make(text)
            if other and other.strip() != text.strip():
                a, b = (text, other) if rng.random() < 0.5 else (other, text)
                pairs.append(Pair(a, b, label, kind))
                made += 1
    contexts = [q for q in carriers if q.rstrip().endswith(("?", ".")) and 20 <= len(q) <= 160]
    pairs = [maker.with_context(p, rng.choice(contexts)) if contexts and rng.random() < CONTEXT_SHARE else p
             for p in pairs]
    rng.shuffle(pairs)
    return pairs


def acronyms(wordnet: WordNet) -> list[tuple[str, str]]:
    """(acronym, what it stands for) from WordNet's synsets that hold both ("CPU" / "central
    processing unit": one lemma is the initials of another)."""
    found: set[tuple[str, str]] = set()
    for synset in wordnet.synsets.values():
        lemmas = [lemma.replace("_", " ") for lemma in synset.lemmas]
        for short in lemmas:
            letters = short.replace(".", "")
            if not (letters.isalpha() and 2 <= len(letters) <= 5):
                continue
            for long in lemmas:
                parts = long.split()
                if len(parts) >= 2 and "".join(w[0] for w in parts).lower() == letters.lower():
                    found.add((letters.upper(), long))
    return sorted(found)


def acronym_pairs(pairs: Sequence[tuple[str, str]], questions: Sequence[str], rng: random.Random,
                  per_form: int = 4) -> list[Pair]:
    """Positives: a question that names an acronym or what it stands for, and the same question
    with the other form."""
    out: list[Pair] = []
    for short, long in rng.sample(list(pairs), len(pairs)):
        for form, other in ((short, long), (long, short)):
            pattern = re.compile(r"\b" + re.escape(form) + r"\b", re.I)
            for question in [q for q in questions if pattern.search(q)][:per_form]:
                out.append(Pair(question, pattern.sub(other, question, count=1), 1, "acronym"))
    return out
