"""Ethics screens: SoulChat's blocklist, and a crisis/self-harm screen whose hits a person reviews.

SoulChat filtered samples containing special strings such as 我是, 自杀, 跳楼 (reference/SOULCHAT.md).
Crisis talk is treated apart: it is exactly where a bad generated answer hurts, so its rows are never
dropped silently. With action `reject` (the default, matching the paper's removal) a row goes to the
reject table with reason `crisis_review` and the terms it matched, where a person can find every one;
with action `flag` it is kept, marked in `flags` and scored, for training sets that want them.
"""

from __future__ import annotations

import re

import numpy as np

from soulray.filters.base import Filter, Verdict, drops_where
from soulray.filters.batch import Batch


class TermMatcher:
    """Literal terms, matched over every segment at once by one regex alternation."""

    def __init__(self, terms: list[str]) -> None:
        self.terms = list(terms)
        self.pattern = "|".join(re.escape(term) for term in self.terms)

    def segments(self, batch: Batch, roles: list[str] | None = None) -> np.ndarray:
        """Bool per segment: contains a term (and has one of `roles`, if given)."""
        if not self.terms:
            return np.zeros(len(batch.text), dtype=bool)
        return batch.matches(self.pattern, batch.role_mask(roles) if roles is not None else None)

    def describe(self, batch: Batch, row: int, hits: np.ndarray) -> str:
        """Which terms matched where, for one row: 'terms 自杀, 想死 in turn 3 (user), turn 7 (user)'."""
        found, where = [], []
        for index, _, text in batch.segments_of(row):
            if not hits[batch.offsets[row] + index]:
                continue
            found += [term for term in self.terms if term in text and term not in found]
            where.append(batch.segment_name(row, index))
        return f"terms {', '.join(found)} in {', '.join(where)}"


class EthicsBlocklist(Filter):
    name = "ethics_blocklist"

    def __init__(self, *, terms: list[str], roles: list[str]) -> None:
        self.matcher, self.roles = TermMatcher(terms), list(roles)

    def apply(self, batch: Batch) -> Verdict:
        hits = self.matcher.segments(batch, self.roles)
        return Verdict(drops=drops_where(batch, batch.per_row_any(hits), "ethics_blocklist",
                                         lambda row: self.matcher.describe(batch, row, hits)))


class CrisisScreen(Filter):
    name = "crisis_screen"

    def __init__(self, *, terms: list[str], action: str) -> None:
        self.matcher, self.action = TermMatcher(terms), action

    def apply(self, batch: Batch) -> Verdict:
        hits = self.matcher.segments(batch)
        count = batch.per_row_count(hits).astype(np.float64)
        scores = {"crisis_turns": count}
        if self.action == "flag":
            return Verdict(scores=scores, flagged=count > 0)
        return Verdict(scores=scores, drops=drops_where(
            batch, count > 0, "crisis_review",
            lambda row: self.matcher.describe(batch, row, hits) + "; kept out of the data for a person to review"))
