"""The words the certain rules read (:class:`thrifty.verifier.RuleVerifier`).

These are not substitution lists: whether a changed word changes the answer ("buy" /
"purchase": no; "enable" / "disable": yes) is the learned verifier's judgment. The rules only
need to know which words carry no meaning (to find what fills "from X to Y"), which phrases are
one token, which ask a kind of question ("how long" / "how much"), and which negate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Words that carry no meaning a cached answer depends on: articles, auxiliaries, pronouns,
# politeness and filler. Wh-words are *not* here: "where is my order" and "when is my order"
# are different questions.
FUNCTION_WORDS = frozenset("""
a an the this that these those some any either what which how whether
is are was were be been being am do does did doing done have has had having get gets got getting
can could may might must shall should will would
i me my mine myself we us our ours you your yours yourself he him his she her it its they them their
to of in on at by for with about as into like through per via within
and or but so if then also just only really actually usually basically currently still even
please kindly thanks thank hi hello hey ok okay wondering wonder
tell know let want wanted need needed like would love help trying try able possible possibly
show give provide explain describe obtain receive u ur r pls plz thx
check see view look fetch retrieve find
way ways go going about there here thing things exactly one someone anyone
um uh er erm hmm yeah yep oh well
""".split())

# Multi-word expressions read as one token: one word written apart ("sign up" is "signup"),
# negations ("no longer"), and the kind of question asked ("how long" is "?duration").
PHRASES: dict[tuple[str, ...], str] = {
    tuple(k.split()): v for k, v in {
        "sign up": "signup", "set up": "setup", "log in": "login", "log on": "login",
        "log out": "logout", "sign in": "signin", "sign out": "signout", "turn on": "turn-on",
        "turn off": "turn-off", "switch on": "switch-on", "switch off": "switch-off",
        "part time": "part-time", "full time": "full-time", "in store": "in-store",
        "self employed": "self-employed", "gluten free": "gluten-free", "dairy free": "dairy-free",
        "first class": "first-class", "carry on": "carry-on", "e mail": "email",
        "in person": "in-person", "check in": "checkin", "check out": "checkout", "opt in": "opt-in",
        "opt out": "opt-out", "two factor authentication": "2fa", "multi factor authentication": "mfa",
        "no longer": "not", "not any": "no",
        "what time": "?time", "how long": "?duration", "how much": "?amount", "how many": "?count",
        "how often": "?frequency", "how far": "?distance", "how old": "?age",
        "what year": "?time", "which year": "?time", "what date": "?time", "when": "?time",
        "where": "?place", "who": "?person", "whom": "?person", "whose": "?person",
        "why": "?reason", "how come": "?reason",
    }.items()
}

# Question types read from the phrases above. Two requests asking different types ("how long
# does shipping take" / "how much does shipping cost") are different requests, except for the
# compatible pairs listed here.
COMPATIBLE_QUESTION_TYPES = frozenset({frozenset({"?duration", "?count"}), frozenset({"?time", "?duration"})})

# Negation words: the count of these must match on both sides.
NEGATIONS = frozenset("not no never without none nobody nothing nowhere neither nor non".split())

# Words written in place of others in chat ("u" for "you").
SPELLING_VARIANTS: dict[str, str] = {
    "u": "you", "ur": "your", "r": "are", "pls": "please", "plz": "please", "thx": "thanks",
    "b4": "before", "msg": "message", "acct": "account", "info": "information", "pic": "picture",
    "pics": "pictures", "tmrw": "tomorrow", "tmr": "tomorrow", "2moro": "tomorrow", "bc": "because",
    "w/": "with", "w/o": "without", "ppl": "people", "yr": "year", "yrs": "years",
}

# Markers after which the next content word fills a directional slot: "from X to Y",
# "convert X into Y", "is X older than Y", "X minus Y".
DIRECTION_MARKERS = frozenset(
    "to into onto from than towards toward minus > → via over out by with then instead".split())

# Words that a request can drop or add without changing what it asks ("How long does it usually
# take" / "How long does it take"). Only consulted when the rest of the request is the same.
SOFT_WORDS = frozenset("""
usually typically normally generally currently ever exactly approximately roughly about around
best right good easiest simplest proper correct actually
""".split())


@dataclass(frozen=True)
class Lexicon:
    """What the certain rules know about words: which carry no meaning, which phrases are one
    token (and which of them name a kind of question), negations and direction markers."""

    function_words: frozenset[str] = FUNCTION_WORDS
    phrases: dict[tuple[str, ...], str] = field(default_factory=lambda: dict(PHRASES))
    negations: frozenset[str] = NEGATIONS
    direction_markers: frozenset[str] = DIRECTION_MARKERS
    soft_words: frozenset[str] = SOFT_WORDS
    compatible_question_types: frozenset[frozenset[str]] = COMPATIBLE_QUESTION_TYPES
    spelling_variants: dict[str, str] = field(default_factory=lambda: dict(SPELLING_VARIANTS))


DEFAULT_LEXICON = Lexicon()
