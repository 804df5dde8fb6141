"""What differs between two texts, as numbers: the alignment view the learned verifier weighs.

The pair model (a cross-encoder) reads both texts at once and says how likely one answer serves
both; it is unsure exactly where a token alignment is plain: the same words moved ("In Python,
how do I read a CSV?" / "How do I read a CSV in Python?"), an acronym written out ("CPU" /
"central processing unit"), a misspelling of a common word ("enviroment"), a content word only
one side has ("World War II" / "World War II in the Pacific"), a possessive that changes whose
thing is asked about. :func:`pair_features` describes the pair by the words each side has that the
other lacks (after the rules' stemming and phrase merging) and what kind they are; the verifier's
combiner weighs these with the pair model's logit and the embeddings' cosine.

Nothing here is a list of words that may be swapped: only which words are unmatched, how alike
they are spelled, whether the tokenizer knows them whole, and whether a possessive moved.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

from rapidfuzz.fuzz import ratio

from .related_words import DEFAULT_RELATED_WORDS, RelatedWords
from .verifier import RuleVerifier, Term, TextFacts

# Words that say whose thing is asked about ("my manager" / "my manager's manager").
POSSESSIVES = frozenset("my mine your yours his her hers our ours their theirs 's '".split())
# Words that name a person: the possessives and the pronouns ("Can I see ..." / "Can my parents see ...").
PERSONS = POSSESSIVES | frozenset("i me myself you yourself he him she we us they them".split())
FEATURES = ("pair_model", "similarity", "unmatched_new", "unmatched_stored", "unmatched_most", "unmatched_share",
            "same_words_moved", "same_content", "function_changes", "person_changes", "acronym",
            "spelling_likeness", "unmatched_capitalised", "one_for_one", "content_size", "length_ratio",
            "block_moved", "one_side_adds", "misspelling", "both_unknown", "both_known", "possessive_scope",
            "related_swap", "related_share", "unknown_unmatched", "content_reordered", "content_rotated",
            "conjuncts_swapped")
SYMMETRIC = frozenset({"and", "or", "vs", "versus"})  # "X and Y" asks what "Y and X" asks
TYPO_LIKENESS = 0.75  # unmatched words spelled at least this alike are read as a misspelling or a near name
_MAX_LOGIT = 8.0


def pair_features(rules: RuleVerifier, pieces: Callable[[str], int], new: str, stored: str,
                  similarity: float, pair_logit: float, related: RelatedWords = DEFAULT_RELATED_WORDS) -> list[float]:
    """The pair's features in :data:`FEATURES` order, each scaled to about [0, 2].

    ``pieces`` counts the word pieces the pair model's tokenizer cuts a word into (1: a word it
    knows whole). ``pair_logit`` is the pair model's logit for the pair. ``related`` says which
    words WordNet relates (:mod:`thrifty.related_words`)."""
    fa, fb = rules.facts(new), rules.facts(stored)
    ta, tb = fa.terms, fb.terms
    order_a, order_b = _content_order(fa, fb, related)
    content_a, content_b = Counter(order_a), Counter(order_b)
    only_a, only_b = content_a - content_b, content_b - content_a
    na, nb = sum(only_a.values()), sum(only_b.values())
    n_content = max(1, sum(content_a.values()) + sum(content_b.values()))
    all_a, all_b = Counter(fa.wording), Counter(fb.wording)
    function_a = Counter(t.norm for t in ta if t.function and not t.number)
    function_b = Counter(t.norm for t in tb if t.function and not t.number)
    function_changes = sum(((function_a - function_b) + (function_b - function_a)).values())
    unmatched_a = {t.norm for t in ta if not t.function and t.key in only_a}
    unmatched_b = {t.norm for t in tb if not t.function and t.key in only_b}
    likeness, misspelling, both_unknown, both_known = _closest_spelling(unmatched_a, unmatched_b, pieces)
    capitalised = (any(t.capitalised and t.norm in unmatched_a for t in ta)
                   or any(t.capitalised and t.norm in unmatched_b for t in tb))
    seq_a, seq_b = _spoken(fa), _spoken(fb)
    moved = Counter(seq_a) == Counter(seq_b) and seq_a != seq_b
    la, lb = len(ta), len(tb)
    alpha_a, alpha_b = sorted(w for w in unmatched_a if w.isalpha()), sorted(w for w in unmatched_b if w.isalpha())
    paired = [w for w in alpha_a if any(related.related(w, o) for o in alpha_b)]
    paired += [w for w in alpha_b if any(related.related(w, o) for o in alpha_a)]
    related_share = len(paired) / max(1, len(alpha_a) + len(alpha_b))
    unknown = any(not related.known(w) for w in alpha_a + alpha_b)
    reordered = content_a == content_b and order_a != order_b
    return [
        max(-_MAX_LOGIT, min(_MAX_LOGIT, pair_logit)) / 4, similarity,
        min(na, 4) / 2, min(nb, 4) / 2, min(max(na, nb), 4) / 2, (na + nb) / n_content,
        float(all_a == all_b), float(na == 0 and nb == 0), min(function_changes, 6) / 3,
        float(_counted(ta, PERSONS) != _counted(tb, PERSONS)),
        float(_acronym(only_a, tb) or _acronym(only_b, ta)), likeness, float(capitalised),
        float(na == 1 and nb == 1), min(n_content, 30) / 10, min(la, lb) / max(1, la, lb),
        float(moved and _rotation(seq_a, seq_b)), float((na == 0) != (nb == 0)),
        misspelling, both_unknown, both_known, float(_counted(ta, POSSESSIVES) != _counted(tb, POSSESSIVES)),
        float(bool(alpha_a) and bool(alpha_b) and related_share == 1.0), related_share, float(unknown),
        float(reordered), float(reordered and _rotation(order_a, order_b)),
        float(_conjuncts_swapped(seq_a, seq_b)),
    ]


def _content_order(a: TextFacts, b: TextFacts, related: RelatedWords) -> tuple[list[str], list[str]]:
    """Each side's content words in order, by stem, a word of one side written as the other's form
    of the same word ("feet" / "foot") where the stems differ."""
    keys_a = [t.key for t in a.terms if not t.function]
    keys_b = [t.key for t in b.terms if not t.function]
    norms_b = {t.key: t.norm for t in b.terms if not t.function}
    missing_b = set(keys_b) - set(keys_a)
    renamed: dict[str, str] = {}
    for t in a.terms:
        if t.function or t.key in keys_b or not t.norm.isalpha():
            continue
        match = next((k for k in sorted(missing_b) if norms_b[k].isalpha() and related.same_word(t.norm, norms_b[k])),
                     None)
        if match is not None:
            renamed[t.key] = match
    return [renamed.get(k, k) for k in keys_a], keys_b


def _conjuncts_swapped(a: Sequence[str], b: Sequence[str]) -> bool:
    """``b`` is ``a`` with the two words either side of one "and" / "or" / "vs" trading places."""
    for i in range(1, len(a) - 1):
        if a[i] in SYMMETRIC and [*a[:i - 1], a[i + 1], a[i], a[i - 1], *a[i + 2:]] == list(b):
            return True
    return False


def _spoken(facts: TextFacts) -> list[str]:
    """The words in order, punctuation left out."""
    return [w for w in facts.wording if any(c.isalnum() for c in w)]


def _rotation(a: Sequence[str], b: Sequence[str]) -> bool:
    """``b`` is ``a`` with one block moved from its end to its start."""
    return any(list(a[i:]) + list(a[:i]) == list(b) for i in range(1, len(a)))


def _counted(terms: Sequence[Term], kind: frozenset[str]) -> Counter[str]:
    return Counter(t.norm for t in terms if t.norm in kind)


def _acronym(unmatched: Counter[str], other: Sequence[Term]) -> bool:
    """An unmatched word of one side is the initials of a run of the other side's words."""
    norms = [t.norm for t in other]
    for word in unmatched:
        if not word.isalpha() or not 2 <= len(word) <= 6:
            continue
        for i in range(len(norms) - len(word) + 1):
            run = norms[i:i + len(word)]
            if "".join(n[:1] for n in run) == word and all(n.isalpha() for n in run):
                return True
    return False


def _closest_spelling(a: set[str], b: set[str], pieces: Callable[[str], int]) -> tuple[float, float, float, float]:
    """How alike the closest-spelled pair of unmatched words is, and for that pair (when at least
    :data:`TYPO_LIKENESS` alike): one known whole and one not (a misspelling), neither, both."""
    best: tuple[float, str, str] | None = None
    for x in sorted(a):
        for y in sorted(b):
            if x.isalpha() and y.isalpha():
                likeness = ratio(x, y) / 100
                if best is None or likeness > best[0]:
                    best = (likeness, x, y)
    if best is None:
        return 0.0, 0.0, 0.0, 0.0
    if best[0] < TYPO_LIKENESS:
        return best[0], 0.0, 0.0, 0.0
    whole_x, whole_y = pieces(best[1]) == 1, pieces(best[2]) == 1
    return best[0], float(whole_x != whole_y), float(not whole_x and not whole_y), float(whole_x and whole_y)

