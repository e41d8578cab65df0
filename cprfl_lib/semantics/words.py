"""Word vectors (GloVe, word2vec) for class names, read from the user's own text files.

Formats (the standard text ones):

* GloVe: ``word v1 ... vm`` per line (e.g. ``glove.6B.300d.txt``, ``glove.840B.300d.txt``);
* word2vec text: an optional header line ``N M``, then ``word v1 ... vm``
  (convert the usual binary ``GoogleNews-vectors-negative300.bin`` once with gensim:
  ``KeyedVectors.load_word2vec_format(p, binary=True).save_word2vec_format(q, binary=False)``).

A class name is lower-cased, ``_`` becomes a space, and the vectors of its words are
averaged ("traffic light" -> mean(traffic, light)). VOC's joined names are looked up as
they are first and split through :data:`WORD_ALIASES` only when the joined token is absent.
The file is streamed and only the needed words are parsed (GloVe 840B is 5.6 GB).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from cprfl_lib.errors import CprflError

# VOC's joined class tokens -> words, used only when the joined token is not in the vocabulary.
WORD_ALIASES = {
    "diningtable": ["dining", "table"],
    "pottedplant": ["potted", "plant"],
    "tvmonitor": ["tv", "monitor"],
    "aeroplane": ["airplane"],
    "motorbike": ["motorcycle"],
}
ENV_VARS = {"glove": "CPRFL_GLOVE", "word2vec": "CPRFL_WORD2VEC"}
_WHERE = {
    "glove": "a GloVe text file such as glove.6B.300d.txt from https://nlp.stanford.edu/projects/glove/",
    "word2vec": "a word2vec TEXT file, e.g. GoogleNews-vectors-negative300 from "
    "https://code.google.com/archive/p/word2vec/ converted with gensim save_word2vec_format(binary=False)",
}


def vectors_path(encoder: str, path: str | os.PathLike | None = None) -> Path:
    """The word-vector file: ``path`` if given, else ``$CPRFL_GLOVE`` / ``$CPRFL_WORD2VEC``."""
    env = ENV_VARS[encoder]
    given = path if path is not None else os.environ.get(env)
    if not given:
        raise CprflError(f"no {encoder} vectors given: pass path= or set {env} to {_WHERE[encoder]}")
    resolved = Path(given).expanduser()
    if not resolved.is_file():
        raise CprflError(f"{encoder} vectors file not found: {resolved} (from {'path=' if path else env}); "
                         f"expected {_WHERE[encoder]}")
    if resolved.suffix == ".bin":
        raise CprflError(f"{resolved}: binary word2vec files are not read; convert it to text first ({_WHERE[encoder]})")
    return resolved


def _header_and_dim(first_line: bytes, path: Path) -> tuple[bool, int]:
    """Whether the first line is a word2vec ``N M`` header, and the vector dimension m."""
    parts = first_line.split()
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        return True, int(parts[1])
    if len(parts) < 2:
        raise CprflError(f"{path}:1: not a word-vector line (expected 'word v1 ... vm' or a 'N M' header)")
    return False, len(parts) - 1


def vectors_dim(path: Path) -> int:
    """m of a word-vector file, from its first line."""
    with open(path, "rb") as fh:
        return _header_and_dim(fh.readline(), path)[1]


def class_words(name: str) -> list[str]:
    """The words of a class name: lower-cased, ``_`` as a space."""
    return name.lower().replace("_", " ").split()


def read_vectors(path: Path, words: set[str]) -> dict[str, torch.Tensor]:
    """The vectors of ``words`` found in ``path``, streaming the file and stopping once all are found."""
    wanted = {w.encode("utf-8"): w for w in words}
    found: dict[str, torch.Tensor] = {}
    with open(path, "rb") as fh:
        has_header, dim = _header_and_dim(fh.readline(), path)
        fh.seek(0)
        if has_header:
            fh.readline()
        for lineno, line in enumerate(fh, start=2 if has_header else 1):
            token, _, rest = line.partition(b" ")
            word = wanted.get(token)
            if word is None or word in found:  # keep the first (most frequent) occurrence
                continue
            values = rest.split()
            if len(values) != dim:
                raise CprflError(f"{path}:{lineno}: {len(values)} values for {word!r}, expected {dim}")
            try:
                found[word] = torch.tensor([float(v) for v in values], dtype=torch.float32)
            except ValueError as err:
                raise CprflError(f"{path}:{lineno}: non-numeric value in the vector of {word!r}") from err
            if len(found) == len(wanted):
                break
    return found


def encode_words(encoder: str, class_names: list[str], path: str | os.PathLike | None = None) -> torch.Tensor:
    """(C, m) averaged word vectors of the class names; CprflError lists every missing word."""
    file = vectors_path(encoder, path)
    per_class = [class_words(name) for name in class_names]
    needed = {w for words in per_class for w in words}
    needed |= {a for w in needed if w in WORD_ALIASES for a in WORD_ALIASES[w]}
    vectors = read_vectors(file, needed)
    rows, missing = [], []
    for name, words in zip(class_names, per_class):
        expanded: list[str] = []
        for word in words:
            if word not in vectors and word in WORD_ALIASES:
                expanded.extend(WORD_ALIASES[word])
            else:
                expanded.append(word)
        absent = [w for w in expanded if w not in vectors]
        if absent or not expanded:
            missing.append(f"{name!r}: {', '.join(absent) or '(no words)'}")
            continue
        rows.append(torch.stack([vectors[w] for w in expanded]).mean(dim=0))
    if missing:
        raise CprflError(f"{file}: no {encoder} vector for {'; '.join(missing)}")
    return torch.stack(rows)
