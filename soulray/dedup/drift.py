"""Seeded near-duplicates of real dialogues, the way copies drift: character typos, small insertions
and deletions, punctuation changes, a sentence dropped. Benchmarks and tests measure dedup's recall
on them (bench/dedup.py `drift` section, tests/dedup/test_defaults.py).

Each variant edits the message contents only (roles and turn count stay) and comes with the number of
characters edited: one per substituted, inserted or deleted character, plus the length of a dropped
sentence. Punctuation changes are not counted: dedup's normalisation removes punctuation.
"""

from __future__ import annotations

import re
from typing import Literal

import numpy as np

DriftKind = Literal["edits", "punctuation", "drop_sentence", "drift"]
DRIFT_KINDS: tuple[DriftKind, ...] = ("edits", "punctuation", "drop_sentence", "drift")

_PUNCTUATION = "，。！？、；：…,.!?;:"
_SENTENCE = re.compile(r"[^。！？!?]+[。！？!?]*")


def drift(messages: list[dict], *, kind: DriftKind, rate: float, rng: np.random.Generator,
          alphabet: str) -> tuple[list[dict], int]:
    """A drifted copy of `messages` and the characters edited.

    edits: round(rate x characters) random single-character substitutions, insertions and deletions
    (equally likely; new characters drawn from `alphabet`, e.g. the corpus' own text, so typos look
    like Chinese text). punctuation: about a third of the marks swapped, dropped or doubled.
    drop_sentence: one sentence of at most rate x characters removed from one turn. drift: all
    three, the sentence at most half the rate and the edits taking what it left, so edited
    characters stay within rate x characters for every kind."""
    contents = [message["content"] for message in messages]
    total = sum(len(text) for text in contents)
    budget = max(1, round(rate * total))
    edited = 0
    if kind in ("punctuation", "drift"):
        contents = _punctuation(contents, rng)
    if kind in ("drop_sentence", "drift"):
        contents, count = _drop_sentence(contents, rng, budget if kind == "drop_sentence" else budget // 2)
        edited += count
        budget -= count
    if kind in ("edits", "drift") and budget > 0:
        contents = _edits(contents, rng, budget, alphabet)
        edited += budget
    return [{**message, "content": text} for message, text in zip(messages, contents, strict=True)], edited


def _edits(contents: list[str], rng: np.random.Generator, count: int, alphabet: str) -> list[str]:
    chars = [list(text) for text in contents]
    lengths = np.array([len(text) for text in chars], np.float64)
    for _ in range(count):
        turn = int(rng.choice(len(chars), p=lengths / lengths.sum()))
        text = chars[turn]
        position = int(rng.integers(max(1, len(text))))
        operation = int(rng.integers(3))
        if operation == 0 and text:
            text[position] = alphabet[int(rng.integers(len(alphabet)))]
        elif operation == 1 or not text:
            text.insert(position, alphabet[int(rng.integers(len(alphabet)))])
        else:
            del text[position]
        lengths[turn] = max(1, len(text))
    return ["".join(text) for text in chars]


def _punctuation(contents: list[str], rng: np.random.Generator) -> list[str]:
    out = []
    for text in contents:
        pieces = []
        for char in text:
            if char in _PUNCTUATION and rng.random() < 1 / 3:
                choice = int(rng.integers(3))
                pieces.append(_PUNCTUATION[int(rng.integers(len(_PUNCTUATION)))] if choice == 0
                              else "" if choice == 1 else char * 2)
            else:
                pieces.append(char)
        out.append("".join(pieces))
    return out


def _drop_sentence(contents: list[str], rng: np.random.Generator, budget: int) -> tuple[list[str], int]:
    """Remove one sentence no longer than `budget` from a turn that keeps at least one sentence."""
    choices = [(turn, match.start(), match.end()) for turn, text in enumerate(contents)
               for match in _SENTENCE.finditer(text)
               if match.end() - match.start() <= budget and len(_SENTENCE.findall(text)) > 1]
    if not choices:
        return contents, 0
    turn, start, end = choices[int(rng.integers(len(choices)))]
    contents = list(contents)
    contents[turn] = contents[turn][:start] + contents[turn][end:]
    return contents, end - start
