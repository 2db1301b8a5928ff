"""Ethics screens: SoulChat's blocklist, and a crisis/self-harm screen whose hits a person reviews.

SoulChat filtered samples containing special strings such as 我是, 自杀, 跳楼 (reference/SOULCHAT.md).
As a substring, 我是 rejected ordinary speech (32 of the 34 SMILECHAT dialogues it hit: "我是谁",
"告诉自己：“我是重要的”", "如果我是你的话"); the default blocklist keeps 自杀 and 跳楼 as terms and
screens 我是 as patterns for what it was for: the counselor saying it is an AI, a model, an assistant or
a bot, or introducing itself by a role name (config.SELF_INTRODUCTION_PATTERNS).
Crisis talk is treated apart: it is exactly where a bad generated answer hurts, so its rows are never
dropped silently. Its terms are read as words (CrisisRule), not substrings: 自伤 inside 独自伤心 and the
counselor's "伤害自己的自尊" sent ordinary dialogues to review (bench/RESULTS.md). With action `reject`
(the default, matching the paper's removal) a row goes to the reject table with reason `crisis_review`
and the terms it matched, where a person can find every one; with action `flag` it is kept, marked in
`flags` and scored, for training sets that want them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from soulray.filters.base import Filter, Verdict, drops_where
from soulray.filters.batch import Batch
from soulray.filters.source import word_boundaries_around


class TermMatcher:
    """Literal terms and RE2 patterns, matched over every segment at once by one regex alternation."""

    def __init__(self, terms: list[str], patterns: list[str] = ()) -> None:
        self.terms, self.patterns = list(terms), list(patterns)
        self.pattern = "|".join([re.escape(term) for term in self.terms] + [f"(?:{p})" for p in self.patterns])

    def segments(self, batch: Batch, roles: list[str] | None = None) -> np.ndarray:
        """Bool per segment: contains a term (and has one of `roles`, if given)."""
        if not self.pattern:
            return np.zeros(len(batch.text), dtype=bool)
        return batch.matches(self.pattern, batch.role_mask(roles) if roles is not None else None)

    def describe(self, batch: Batch, row: int, hits: np.ndarray) -> str:
        """Which terms matched where, for one row: 'terms 自杀, 想死 in turn 3 (user), turn 7 (user)'."""
        found, where = [], []
        for index, _, text in batch.segments_of(row):
            if not hits[batch.offsets[row] + index]:
                continue
            found += [term for term in self.terms if term in text and term not in found]
            found += [match.group() for pattern in self.patterns for match in [re.search(pattern, text)]
                      if match and match.group() not in found]
            where.append(batch.segment_name(row, index))
        return f"terms {', '.join(found)} in {', '.join(where)}"


class EthicsBlocklist(Filter):
    name = "ethics_blocklist"

    def __init__(self, *, terms: list[str], patterns: list[str], roles: list[str]) -> None:
        self.matcher, self.roles = TermMatcher(terms, patterns), list(roles)

    def apply(self, batch: Batch) -> Verdict:
        hits = self.matcher.segments(batch, self.roles)
        return Verdict(drops=drops_where(batch, batch.per_row_any(hits), "ethics_blocklist",
                                         lambda row: self.matcher.describe(batch, row, hits)))


class CrisisRule:
    """Crisis talk in one text: terms on word boundaries (jieba), patterns as they are, minus exceptions.

    A term counts where jieba puts a word boundary at its start or at its end: 想死 in 只想/死, 不想活 in
    不想/活下去 and 自杀 in 跳楼自杀 count, 自伤 in 独自/伤心 (the end of one word and the start of another)
    does not. Requiring both ends would lose real talk (只想死, 会想死, 自杀未遂 in the SMILECHAT sample).
    jieba runs only on the clause around a term (soulray.filters.source.word_boundaries_around) of the
    few texts that hold one, and is loaded once per process.
    """

    def __init__(self, *, terms: Sequence[str], patterns: Sequence[str], exceptions: Sequence[str]) -> None:
        self.terms, self.patterns = list(terms), [re.compile(pattern) for pattern in patterns]
        self.exceptions = re.compile("|".join(f"(?:{pattern})" for pattern in exceptions)) if exceptions else None
        self.candidate = "|".join([re.escape(term) for term in self.terms] + [f"(?:{p})" for p in patterns])
        self._candidate = re.compile(self.candidate) if self.candidate else None

    def found(self, text: str) -> list[str]:
        """The terms (config order) and pattern matches that count in `text`; empty when none does."""
        if self._candidate is None or not self._candidate.search(text):
            return []
        excepted = [match.span() for match in self.exceptions.finditer(text)] if self.exceptions else []
        found, words = [], {}  # words: jieba's boundaries by clause, each clause cut once
        for term in self.terms:
            for start in _starts(text, term):
                end = start + len(term)
                if any(low <= start and end <= high for low, high in excepted):
                    continue
                boundaries = word_boundaries_around(text, start, end, cache=words)
                if start in boundaries or end in boundaries:
                    found.append(term)
                    break
        found += [match.group() for pattern in self.patterns for match in [pattern.search(text)] if match]
        return list(dict.fromkeys(found))


def _starts(text: str, term: str) -> list[int]:
    return [match.start() for match in re.finditer(re.escape(term), text)]


class CrisisScreen(Filter):
    name = "crisis_screen"

    def __init__(self, *, terms: Sequence[str], patterns: Sequence[str] = (), exceptions: Sequence[str] = (),
                 action: str) -> None:
        self.rule, self.action = CrisisRule(terms=terms, patterns=patterns, exceptions=exceptions), action

    def apply(self, batch: Batch) -> Verdict:
        found = self._found(batch)
        hits = np.zeros(len(batch.text), dtype=bool)
        hits[list(found)] = True
        count = batch.per_row_count(hits).astype(np.float64)
        scores = {"crisis_turns": count}
        if self.action == "flag":
            return Verdict(scores=scores, flags={self.name: count > 0})
        return Verdict(scores=scores, drops=drops_where(
            batch, count > 0, "crisis_review",
            lambda row: self._describe(batch, row, found) + "; kept out of the data for a person to review"))

    def _found(self, batch: Batch) -> dict[int, list[str]]:
        """What counts, by segment, for the segments holding any. One RE2 pass finds the candidates
        (a few percent of turns); the rule reads those."""
        if not self.rule.candidate:
            return {}
        candidates = np.flatnonzero(batch.matches(self.rule.candidate))
        texts = batch.text.take(pa.array(candidates)).to_pylist() if candidates.size else []
        found = {int(segment): self.rule.found(text) for segment, text in zip(candidates, texts, strict=True)}
        return {segment: terms for segment, terms in found.items() if terms}

    def _describe(self, batch: Batch, row: int, found: dict[int, list[str]]) -> str:
        """'terms 自杀, 想死 in turn 3 (user), turn 7 (user)'."""
        terms, where = [], []
        first = int(batch.offsets[row])
        for index in range(int(batch.offsets[row + 1]) - first):
            segment = first + index
            if segment in found:
                terms += [term for term in found[segment] if term not in terms]
                where.append(batch.segment_name(row, index))
        return f"terms {', '.join(terms)} in {', '.join(where)}"
