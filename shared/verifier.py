"""The verifier: may a cached answer to one text be served for another?

The vector tier finds stored requests whose embedding is close to the new one. Closeness is not
sameness: with all-MiniLM-L6-v2, "status of order 44921" and "...44922" score 0.97, "enable 2FA"
and "disable 2FA" and "Boston to Denver" and "Denver to Boston" score above 0.9, while genuine
paraphrases often score 0.7-0.85. A :class:`Verifier` looks at the two texts themselves.

:class:`RuleVerifier` holds the rules that are *certain*. It refuses when the texts differ in

* numbers and identifiers ("44921" / "44922", "3pm" / "3am", "gpt-4o" / "gpt-4o-mini"; "two"
  and "2" are equal),
* negation ("cancel" / "don't cancel"),
* the kind of question ("how long" / "how much", "when" / "where"),
* direction ("Boston to Denver" / "Denver to Boston"),

or when the similarity is under ``min_similarity``; it accepts the same text, and the same words
in the same order (case, punctuation, greetings and sign-offs, chat spellings aside). Everything
else - whether a changed or moved word changes the answer - it leaves open (``certain`` returns
None): the default verifier, :class:`thrifty.learned_verifier.LearnedVerifier`, asks a pair
model; used alone (``verifier.kind: rules``) the rules refuse what they are not certain of. A
verifier never raises: an error is a refusal. Every verdict names its reason.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Protocol, runtime_checkable

import snowballstemmer  # type: ignore[import-untyped]

from .lexicon import DEFAULT_LEXICON, Lexicon
from .settings import ThriftySettings
from .text import Word, normalize_for_key, strip_pleasantries, words


@dataclass(frozen=True, slots=True)
class Verdict:
    """The verifier's decision. ``reason`` is a short stable tag; ``detail`` says what differed."""

    accepted: bool
    reason: str
    detail: str = ""

    @property
    def summary(self) -> str:
        """The reason and what differed, as one line: "learned p=0.12", "number ['2'] vs ['3']"."""
        return summary(self.reason, self.detail)


def summary(reason: str, detail: str) -> str:
    """A verdict's reason and detail as one line (a hit's or a refusal's, in lookups and the ledger)."""
    return f"{reason} {detail}".strip()


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
_ARROWS = frozenset({">", "→"})
_QUESTION = "?"  # prefix of the question-type tokens the lexicon's phrases produce
@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """Snowball stem of ``word`` after folding British spellings to American ones."""
    if not word.isalpha():
        return word
    for pattern, replacement in _SPELLING:
        word = pattern.sub(replacement, word)
    return str(_STEMMER.stemWord(word))


@dataclass(frozen=True, slots=True)
class Term:
    """A token after phrase merging: its written form, its stem and what it is."""

    norm: str  # lower-case, as written (after phrase merging and chat-spelling fixes)
    key: str  # stemmed
    number: str | None
    function: bool
    capitalised: bool = False  # written with a capital the start of a sentence does not explain


@dataclass(frozen=True)
class TextFacts:
    """What the rules read from one text. Built once per text and memoised."""

    text: str
    terms: tuple[Term, ...]
    numbers: Counter[str]
    identifiers: frozenset[str]
    negations: int
    question_types: frozenset[str]
    slots: dict[str, frozenset[str]]  # direction marker -> keys of the words that follow it

    @cached_property
    def norms(self) -> frozenset[str]:
        return frozenset(t.norm for t in self.terms)

    @cached_property
    def keys(self) -> frozenset[str]:
        """Stems of the words that carry meaning: not function words, numbers or markers."""
        return frozenset(t.key for t in self.terms if not t.function)

    @cached_property
    def wording(self) -> tuple[str, ...]:
        """The words in order, numbers by value ("twelve" is "12")."""
        return tuple(t.number or t.norm for t in self.terms)


class RuleVerifier:
    """The certain rules, as a :class:`Verifier` that refuses what it is not certain of.

    Parameters:
        min_similarity: below this cosine nothing is accepted, however alike the words look.
        lexicon: the words the rules read (:mod:`thrifty.lexicon`).
    """

    def __init__(self, *, min_similarity: float = 0.4, lexicon: Lexicon = DEFAULT_LEXICON) -> None:
        self.min_similarity = min_similarity
        self.lexicon = lexicon
        self._facts = lru_cache(maxsize=65536)(self._analyse)
        self._function = frozenset(lexicon.function_words | lexicon.soft_words)
        self._max_phrase = max((len(k) for k in lexicon.phrases), default=1)

    # ----------------------------------------------------------------------------- public API
    def verify(self, query: str, candidate: str, similarity: float) -> Verdict:
        verdict = self.certain(query, candidate, similarity)
        return verdict if verdict is not None else Verdict(False, "uncertain", "worded differently")

    def certain(self, query: str, candidate: str, similarity: float) -> Verdict | None:
        """The rules' verdict where rules are certain, None where only meaning can tell.

        Certain: the same text, or the same words in the same order (accepted); similarity under
        ``min_similarity``, different numbers or identifiers, a different count of negations, a
        different kind of question, or names or numbers moved across a direction ("from X to
        Y") (refused). Never raises: an error is a refusal.
        """
        try:
            if normalize_for_key(query) == normalize_for_key(candidate):
                return Verdict(True, "same_text")
            if similarity < self.min_similarity:
                return Verdict(False, "low_similarity", f"{similarity:.3f} < {self.min_similarity}")
            a, b = self.facts(query), self.facts(candidate)
            for check in (self._numbers, self._identifiers, self._negation, self._question_types, self._direction):
                verdict = check(a, b)
                if verdict is not None:
                    return verdict
            if a.wording == b.wording:
                return Verdict(True, "same_words")
            return None
        except Exception as exc:  # noqa: BLE001 - a verifier bug must be a miss, never a hit
            return Verdict(False, "verifier_error", repr(exc))

    def facts(self, text: str) -> TextFacts:
        """The analysis of ``text`` the rules work on (memoised)."""
        return self._facts(text)

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

    @staticmethod
    def _identifiers(a: TextFacts, b: TextFacts) -> Verdict | None:
        missing_a = {e for e in a.identifiers if not _mentions(b, e)}
        missing_b = {e for e in b.identifiers if not _mentions(a, e)}
        if missing_a or missing_b:
            return Verdict(False, "identifier", _diff(missing_a, missing_b))
        return None

    def _question_types(self, a: TextFacts, b: TextFacts) -> Verdict | None:
        only_a, only_b = a.question_types - b.question_types, b.question_types - a.question_types
        for x in only_a:
            for y in only_b:
                if frozenset({x, y}) not in self.lexicon.compatible_question_types:
                    return Verdict(False, "question_type", f"{x[1:]} vs {y[1:]}")
        return None

    @staticmethod
    def _direction(a: TextFacts, b: TextFacts) -> Verdict | None:
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

    # ----------------------------------------------------------------------------- analysis
    def _analyse(self, text: str) -> TextFacts:
        terms = [self._term(w) for w in self._merge_phrases(words(strip_pleasantries(text)))]
        lex = self.lexicon
        numbers = Counter(t.number for t in terms if t.number is not None)
        identifiers = frozenset(t.norm for t in terms if t.number is None and _looks_like_identifier(t.norm))
        negations = sum(1 for t in terms if t.norm in lex.negations)
        question_types = frozenset(t.norm for t in terms if t.norm.startswith(_QUESTION))
        slots: dict[str, set[str]] = {}
        for i, t in enumerate(terms):
            if t.norm not in lex.direction_markers:
                continue
            follower = next((f for f in terms[i + 1:]
                             if f.norm not in lex.direction_markers and (not f.function or f.number)), None)
            arrow = t.norm in _ARROWS  # "Denver -> Boston" is "from Denver to Boston"
            if follower is not None:
                slots.setdefault("to" if arrow else t.norm, set()).add(follower.number or follower.key)
            leader = next((f for f in reversed(terms[:i])
                           if f.norm not in lex.direction_markers and (not f.function or f.number)), None)
            if arrow and leader is not None:
                slots.setdefault("from", set()).add(leader.number or leader.key)
        return TextFacts(text, tuple(terms), numbers, identifiers, negations, question_types,
                         {k: frozenset(v) for k, v in slots.items()})

    def _term(self, w: Word) -> Term:
        lex = self.lexicon
        norm = lex.spelling_variants.get(w.norm, w.norm)
        if w.number is not None:
            return Term(norm, w.number, w.number, True)
        function = (
            norm in self._function or norm in lex.negations or norm in lex.direction_markers
            or norm.startswith(_QUESTION) or not re.search(r"\w", norm) or norm == "'s"
        )
        # a chat spelling read as another word ("BC" as "because") is no name, whatever its capitals
        return Term(norm, stem(norm), None, function, w.capitalised and norm == w.norm)

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


def _mentions(facts: TextFacts, identifier: str) -> bool:
    """``facts`` names ``identifier``, perhaps split or joined differently ("node js" / "node.js")."""
    if identifier in facts.norms:
        return True
    squashed = re.sub(r"[\s.'_-]", "", identifier)
    norms = [t.norm for t in facts.terms]
    for size in (2, 3):
        for i in range(len(norms) - size + 1):
            if re.sub(r"[\s.'_-]", "", "".join(norms[i:i + size])) == squashed:
                return True
    return False


def verify_all(verifier: Verifier, query: str, candidates: Sequence[tuple[str, float]]) -> list[Verdict]:
    """Verdicts for several candidates of one query: in one batch when the verifier can
    (``verify_many``), one by one otherwise."""
    many = getattr(verifier, "verify_many", None)
    if callable(many):
        return list(many(query, candidates))
    return [verifier.verify(query, text, similarity) for text, similarity in candidates]


def runs_a_model(verifier: Verifier) -> bool:
    """Whether ``verifier`` runs a model (the learned one): async callers then verify on a worker
    thread, never on the event loop."""
    return bool(getattr(verifier, "runs_a_model", False))


def default_verifier(settings: ThriftySettings) -> Verifier:
    """The verifier ``settings.verifier`` describes: the learned one (certain rules, then the pair
    model; the default) or the certain rules alone."""
    rules = rule_verifier(settings)
    if settings.verifier.kind == "learned":
        from .learned_verifier import LearnedVerifier

        return LearnedVerifier(rules=rules, min_probability=settings.verifier.min_probability)
    return rules


def rule_verifier(settings: ThriftySettings) -> RuleVerifier:
    """The :class:`RuleVerifier` ``settings.verifier`` describes."""
    return RuleVerifier(min_similarity=settings.verifier.min_similarity)


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
