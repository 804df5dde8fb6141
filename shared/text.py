"""Text normalisation shared by the exact key and the verifier.

Two jobs, one tokeniser:

* :func:`normalize_for_key` turns a request's final turn into the string the exact tier keys on:
  Unicode-normalised, case-folded, whitespace collapsed, trailing punctuation dropped. Two texts
  that differ only in those ways are the same request.
* :func:`words` splits a text into :class:`Word` tokens with contractions expanded, numbers
  canonicalised and capitalisation remembered, which is what the verifier compares.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-",
                         "\u2014": "-", "\u00a0": " "})
_SPACE = re.compile(r"\s+")
_TRAILING = re.compile(r"[\s.?!,;:\u2026]+$")


def clean(text: str) -> str:
    """NFKC-normalise, straighten quotes and dashes, collapse whitespace, strip the ends."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).translate(_QUOTES)).strip()


_GREETING = re.compile(
    r"^\s*(?:(?:sorry\s+to\s+bother\s+you|hiya|hi|hello|hey|heya|yo|good\s+(?:morning|afternoon|"
    r"evening)|morning|afternoon|evening|greetings|dear\s+\w+|sorry|apologies|"
    r"quick\s+(?:question|one|q)|silly\s+question|um+|uh+|er+|erm|hmm+|so|ok(?:ay)?|well|yeah|"
    r"yes|right)\b"
    r"(?:\s+(?:there|team|all|everyone|folks|guys|again))?\s*(?:[,!.:;-]+\s*|\s+(?=\w))?)+",
    re.IGNORECASE,
)
_SIGN_OFF = re.compile(
    r"(?:[\s,.;!-]*(?:(?:many\s+)?thanks(?:\s+(?:in\s+advance|a\s+lot|so\s+much))?|thank\s+you"
    r"(?:\s+(?:so\s+much|in\s+advance))?|cheers|ta|thx|ty|please|pls|plz|much\s+appreciated|"
    r"appreciate\s+it|best(?:\s+regards)?|regards|kind\s+regards)\b[\s.!]*)+$",
    re.IGNORECASE,
)


_ANSWER_WORD = re.compile(r"^\s*(?:no|yes|yeah|yep|nope|sure)\s*[,.!;:]\s+(?=\w)", re.IGNORECASE)


def strip_pleasantries(text: str) -> str:
    """Drop greetings, hesitations and sign-offs around a request ("Hi team, ... Thanks!").

    Only the ends are trimmed, and never down to nothing: "Thanks!" on its own stays "Thanks!".
    """
    core = _SIGN_OFF.sub("", _ANSWER_WORD.sub("", _GREETING.sub("", text, count=1), count=1)).strip()
    return core if re.search(r"\w", core) else text.strip()


def normalize_for_key(text: str) -> str:
    """The exact tier's form of a text: :func:`clean`, case-folded, trailing punctuation dropped.

    "What's the  status of order 44921?" and "what's the status of order 44921" map to the same
    string; anything else (inner punctuation, digits, word order) is kept as it is.
    """
    return _TRAILING.sub("", clean(text).casefold())


_CONTRACTIONS = {
    "can't": "can not", "cannot": "can not", "won't": "will not", "shan't": "shall not",
    "ain't": "is not", "let's": "let us", "y'all": "you all",
    # the same, typed without the apostrophe
    "cant": "can not", "dont": "do not", "doesnt": "does not", "didnt": "did not",
    "isnt": "is not", "arent": "are not", "wasnt": "was not", "werent": "were not",
    "havent": "have not", "hasnt": "has not", "hadnt": "had not", "shouldnt": "should not",
    "wouldnt": "would not", "couldnt": "could not", "mustnt": "must not", "whats": "what is",
    "thats": "that is", "hows": "how is", "wheres": "where is", "whos": "who is", "im": "i am",
    "ive": "i have", "youre": "you are", "theyre": "they are", "doesn't": "does not",
}
_SUFFIXES = (("n't", " not"), ("'re", " are"), ("'ll", " will"), ("'ve", " have"), ("'m", " am"),
             ("'d", " would"))
# "'s" after these is "is"/"has"; after anything else it is a possessive and stays a token of its own.
_S_IS = {"what", "that", "it", "he", "she", "there", "here", "who", "where", "when", "how", "why",
         "which", "everything", "nothing", "something", "someone", "everyone", "this"}

_NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
    "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20,
    "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
    "ninety": 90, "hundred": 100, "thousand": 1000, "million": 1000000, "billion": 1000000000,
    "dozen": 12, "once": 1, "twice": 2, "single": 1, "double": 2, "triple": 3, "half": 0.5,
    "quarter": 0.25,
}
_ORDINAL_WORDS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7,
    "eighth": 8, "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "last": -1, "final": -1,
}
# "one" is also a pronoun ("which one", "the blue one") and "second" a unit of time: read as
# numbers only when a noun-like word follows, see _number_from_word.
_AMBIGUOUS_NUMBER_WORDS = {"one", "first", "second", "single", "double", "once", "last", "final",
                           "quarter", "half"}

_TOKEN = re.compile(
    r"""
    (?P<time>\d{1,2}:\d{2}(?::\d{2})?)                      # 9:15, 09:15:30
  | (?P<num>\d+(?:[.,]\d+)*(?:st|nd|rd|th)?(?![\w]))        # 1,000  2.10.0  3rd
  | (?P<alnum>\d+(?:[.,]\d+)*[^\W\d_][\w.+#@/-]*)          # 3pm 10GB 2FA 4o 1099-K
  | (?P<word>[^\W\d_](?:[\w.+#@/-]*\w|[+#]+)?)              # words, c++, c#, node.js, gpt-4o
  | (?P<sym>[$£€¥%&°→>+=*/^<])                              # symbols that carry meaning
    """,
    re.VERBOSE,
)
# Unit suffixes split off a number ("3pm" is 3 p.m., "10GB" is 10 GB); any other letters make the
# whole token an identifier ("2FA", "4o").
_UNITS = frozenset("""
am pm a.m p.m k km m cm mm kg g mg lb lbs oz gb mb tb kb gbps mbps kwh mph kph h hr hrs min mins
s sec secs ms x yo y yr yrs d w wk wks mo mos ml l
""".split())
_ALNUM_SPLIT = re.compile(r"^(\d+(?:[.,]\d+)*)([a-z.]+)$")
_MERIDIEM = {"am": "a.m", "a.m": "a.m", "pm": "p.m", "p.m": "p.m"}


@dataclass(frozen=True, slots=True)
class Word:
    """One token of a text, as the verifier sees it.

    ``norm`` is the lower-case form (contractions expanded, so "don't" gives "do" and "not");
    ``number`` is the canonical value for numerals and number words ("1,000", "one thousand"
    and "1000" give "1000"; "3rd" and "third" give "#3"); ``capitalised`` is True for a token
    written with a capital that is not forced by the start of a sentence; ``start`` is the
    token's index among the text's tokens.
    """

    text: str
    norm: str
    number: str | None
    capitalised: bool
    start: int


def _canonical_number(raw: str) -> str:
    raw = raw.lower()
    ordinal = ""
    for suffix in ("st", "nd", "rd", "th"):
        if raw.endswith(suffix):
            raw, ordinal = raw[: -len(suffix)], "#"
            break
    if re.fullmatch(r"\d{1,3}(,\d{3})+(\.\d+)?", raw):
        raw = raw.replace(",", "")
    if re.fullmatch(r"\d+\.\d+", raw):
        whole, frac = raw.split(".")
        frac = frac.rstrip("0")
        raw = whole.lstrip("0") or "0"
        raw = f"{raw}.{frac}" if frac else raw
    elif raw.isdigit() and len(raw) <= 4:
        # Leading zeros are kept for longer digit strings: "007421" is an identifier, not 7421.
        raw = raw.lstrip("0") or "0"
    return ordinal + raw


def _format_value(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def _expand(token: str) -> list[str]:
    low = token.lower()
    if low in _CONTRACTIONS:
        return _CONTRACTIONS[low].split()
    if "'" not in low:
        return [token]
    for suffix, replacement in _SUFFIXES:
        if low.endswith(suffix) and len(low) > len(suffix):
            stem = token[: -len(suffix)]
            if suffix == "n't":
                return [stem, "not"]
            return [stem, replacement.strip()]
    if low.endswith("'s") and len(low) > 2:
        stem = token[:-2]
        return [stem, "is" if stem.lower() in _S_IS else "'s"]
    return [token]


@lru_cache(maxsize=65536)
def words(text: str) -> tuple[Word, ...]:
    """Tokenise ``text`` for comparison. Memoised: the same stored texts are verified often."""
    text = clean(text)
    # Apostrophes inside words must survive tokenisation for the contraction step.
    pieces: list[tuple[str, str]] = []
    for raw in re.finditer(r"[A-Za-z]+'[A-Za-z]+|\S+", text):
        chunk = raw.group(0)
        if re.fullmatch(r"\(?\d{1,2}\)[,:]?", chunk) or (raw.start() == 0 and re.fullmatch(r"\d{1,2}\.", chunk)):
            continue  # a list enumerator, "1)" or a leading "1.", not a quantity
        if "'" in chunk and re.fullmatch(r"[A-Za-z]+'[A-Za-z]+", chunk):
            pieces.extend(("word", part) for part in _expand(chunk))
            continue
        for match in _TOKEN.finditer(chunk):
            kind = match.lastgroup or "sym"
            if kind == "word":
                pieces.extend(("word", part) for part in _expand(match.group(0)))
            else:
                pieces.append((kind, match.group(0)))
        if chunk and chunk[-1] in ".?!:;":
            pieces.append(("end", chunk[-1]))
    out: list[Word] = []
    sentence_start = True
    index = 0
    for kind, tok in pieces:
        if kind == "end":
            sentence_start = tok in ".?!:;"
            continue
        for part in _split_alnum(kind, tok):
            part_kind, value = part
            low = value.lower()
            number = None
            if part_kind in ("num", "time"):
                number = low if part_kind == "time" else _canonical_number(low)
            capitalised = part_kind == "word" and low != "i" and (
                (value[:1].isupper() and not sentence_start) or _has_inner_capital(value)
            )
            out.append(Word(value, low, number, capitalised, index))
            index += 1
            sentence_start = False
    return tuple(_attach_number_words(out))


def _has_inner_capital(token: str) -> bool:
    """iPhone, HubSpot, USD: capitalisation that no sentence start explains."""
    return any(ch.isupper() for ch in token[1:])


def _split_alnum(kind: str, tok: str) -> list[tuple[str, str]]:
    """Split "3pm" into a number and its unit and "dog-friendly" into its words.

    Tokens that mix letters and digits in any other way ("2FA", "gpt-4o", "INV-2291") stay whole:
    they are identifiers, compared exactly.
    """
    if kind in ("num", "time", "sym"):
        return [(kind, tok)]
    low = tok.lower()
    if kind == "alnum":
        head, _, rest = tok.partition("-")
        if rest and head.isdigit() and not any(ch.isdigit() for ch in rest):  # "2-bedroom"
            return [("num", head), *_split_alnum("word", rest)]
        match = _ALNUM_SPLIT.match(low)
        if match and match.group(2) in _UNITS:
            unit = _MERIDIEM.get(match.group(2), match.group(2))
            return [("num", match.group(1)), ("word", unit)]
        return [("word", tok)]
    if "-" in tok and not any(ch.isdigit() for ch in tok):
        parts = [p for p in tok.split("-") if p]
        if len(parts) == 2 and parts[0].lower() in _NUMBER_WORDS and parts[1].lower() in _NUMBER_WORDS:
            value = _NUMBER_WORDS[parts[0].lower()] + _NUMBER_WORDS[parts[1].lower()]
            return [("num", _format_value(value))]  # "twenty-five"
        return [("word", p) for p in parts]
    return [(kind, tok)]


def _attach_number_words(tokens: list[Word]) -> list[Word]:
    """Give number words ("three", "third", "dozen") the same canonical value as digits, and
    read "am"/"pm" after a number as a.m./p.m. (not the verb "am")."""
    out: list[Word] = []
    for i, w in enumerate(tokens):
        if w.norm in _MERIDIEM and i > 0 and tokens[i - 1].number is not None:
            w = Word(w.text, _MERIDIEM[w.norm], None, False, w.start)
        if w.number is None:
            following = tokens[i + 1].norm if i + 1 < len(tokens) else ""
            preceding = tokens[i - 1].norm if i > 0 else ""
            if w.norm in _ORDINAL_WORDS and preceding not in _DETERMINERS:
                out.append(w)  # "it first downloads", "warn me first": adverbs, not positions
                continue
            if w.norm == "one" and preceding in _ONE_AS_PRONOUN_AFTER:
                out.append(w)  # "can one get", "which one", "the blue one"
                continue
            value = _number_from_word(w.norm, following)
            if value is not None:
                w = Word(w.text, w.norm, value, w.capitalised, w.start)
        out.append(w)
    return out


_DETERMINERS = {"the", "a", "an", "my", "your", "our", "their", "his", "her", "its", "this",
                "that", "every", "each", "'s", "whose", "which", "what"}
_ONE_AS_PRONOUN_AFTER = {"can", "could", "should", "would", "will", "may", "might", "must", "does",
                         "do", "did", "if", "when", "no", "any", "every", "some", "each", "which",
                         "this", "that", "the", "another", "other", "such", "someone", "anyone",
                         "quick", "good", "best", "new", "old", "right", "wrong", "last", "next"}
_PRONOUN_FOLLOWERS = {"", "how", "what", "where", "when", "why", "who", "which", "of", "is",
                      "was", "that", "more", "another", "and",
                      "or", "to", "in", "on", "at", "for", "with", "by", "from", "the", "a",
                      "an", "it", "you", "i", "we", "they", "can", "should", "would", "will",
                      "do", "does", "did", "has", "have", "than", "'s", "thing", "way", "time",
                      "step", "place", "hand", "opinion", "option", "look", "go", "thought",
                      "me", "him", "her", "them", "us", "my", "your", "our", "their", "his",
                      "its", "please", "then", "now", "already", "yet", "again", "too"}


def _number_from_word(norm: str, following: str) -> str | None:
    if norm in _ORDINAL_WORDS:
        if norm in _AMBIGUOUS_NUMBER_WORDS and following in _PRONOUN_FOLLOWERS:
            return None
        if norm == "second" and following in {"", "s"}:
            return None
        value = _ORDINAL_WORDS[norm]
        return "#last" if value < 0 else f"#{value}"
    if norm in _NUMBER_WORDS:
        if norm in _AMBIGUOUS_NUMBER_WORDS and following in _PRONOUN_FOLLOWERS:
            return None
        return _format_value(_NUMBER_WORDS[norm])
    return None
