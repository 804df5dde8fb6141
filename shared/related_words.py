"""Whether two words can name the same thing, by WordNet 3.0: a lexical database, not a word list.

"buy" / "purchase" share a synset; "director" / "directed" are derivationally related; "Saturday" /
"Sunday" and "aspirin" / "warfarin" share neither (siblings under one parent). The shipped file
``thrifty/models/related_words.json.gz`` (about 0.7 MB; ``training/build_related_words.py``
derives it from WordNet's own data files, nothing chosen by hand) maps every single-word lemma to
its synsets and their derivational relatives. The alignment features ask it two things about the
words only one side of a pair has: can they be related, and is a word one WordNet does not know
(a product, a drug's brand, a name, a misspelling).
"""

from __future__ import annotations

import gzip
import json
import logging
import threading
from functools import lru_cache
from pathlib import Path

from .log_once import LogOnce

_warn = LogOnce(logging.getLogger("thrifty.verifier"))
RELATED_WORDS_FILE = Path(__file__).resolve().parent / "models" / "related_words.json.gz"
# WordNet's detachment rules for inflected forms (its "morphy"), besides its exception lists.
_SUFFIXES = (("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"), ("men", "man"),
             ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", ""),
             ("er", ""), ("est", ""), ("er", "e"), ("est", "e"))


class RelatedWords:
    """WordNet's synsets by word. Loaded on first use; thread-safe; a missing or corrupt file reads
    as empty (every word unknown, none related) after one warning."""

    def __init__(self, path: Path = RELATED_WORDS_FILE) -> None:
        self.path = path
        self._words: dict[str, frozenset[int]] | None = None
        self._exceptions: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        self.meanings = lru_cache(maxsize=65536)(self._meanings)

    def known(self, word: str) -> bool:
        """Whether WordNet has ``word`` or a base form of it."""
        return bool(self.meanings(word.lower()))

    def same_word(self, a: str, b: str) -> bool:
        """Whether ``a`` and ``b`` are forms of one word WordNet knows ("feet" / "foot")."""
        return bool(self.bases(a.lower()) & self.bases(b.lower()))

    def bases(self, word: str) -> frozenset[str]:
        """The forms of ``word`` WordNet has as lemmas: itself, or what its inflection comes from."""
        words = self._loaded()
        candidates = [word, *self._exceptions.get(word, ())]
        candidates += [word[: -len(end)] + add for end, add in _SUFFIXES
                       if word.endswith(end) and len(word) > len(end) + 1]
        return frozenset(c for c in candidates if c in words)

    def related(self, a: str, b: str) -> bool:
        """Whether some sense of ``a`` shares a synset with, or derives from, some sense of ``b``."""
        return bool(self.meanings(a.lower()) & self.meanings(b.lower()))

    def _meanings(self, word: str) -> frozenset[int]:
        words = self._loaded()
        return frozenset(m for base in self.bases(word) for m in words[base])

    def _loaded(self) -> dict[str, frozenset[int]]:
        if self._words is None:
            with self._lock:
                if self._words is None:
                    try:
                        with gzip.open(self.path, "rt", encoding="utf-8") as handle:
                            record = json.load(handle)
                        self._exceptions = {k: list(v) for k, v in record["exceptions"].items()}
                        self._words = {k: frozenset(v) for k, v in record["words"].items()}
                    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                        _warn("related_words", "thrifty: WordNet's related words could not be read from %s "
                                  "(%r); every word reads as unknown", self.path, exc)
                        self._words = {}
        return self._words


DEFAULT_RELATED_WORDS = RelatedWords()
