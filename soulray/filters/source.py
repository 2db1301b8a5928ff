"""Source cleaning before the rewrite, after SMILE (Qiu et al.): forum words, a length cap, too-short text.

SMILE replaced forum vocabulary in order (楼主你/题主你 → 你, 楼主/题主 → 你, 阿凉 → 我, 答主 → 人), dropped
fragments containing 抱抱, and kept Q&As under 1,800 characters (reference/SOULCHAT.md, "SMILE").
"""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc

from soulray.config import ReplaceRule
from soulray.filters.base import Filter, Verdict, drops_where
from soulray.filters.batch import ASSISTANT, USER, Batch


class ForumWords(Filter):
    """Ordered replacement rules over every segment; rewrites text, never drops."""

    name = "forum_words"

    def __init__(self, *, rules: list[ReplaceRule]) -> None:
        self.rules = list(rules)

    def apply(self, batch: Batch) -> Verdict:
        text = batch.text
        for rule in self.rules:
            if rule.regex:
                text = pc.replace_substring_regex(text, pattern=rule.pattern, replacement=rule.replacement)
            else:
                text = pc.replace_substring(text, pattern=rule.pattern, replacement=rule.replacement)
        return Verdict(text=text)


class LengthCap(Filter):
    """All of a row's text together over `max_chars` characters: the rewrite would be too long."""

    name = "length_cap"

    def __init__(self, *, max_chars: int) -> None:
        self.max_chars = max_chars

    def apply(self, batch: Batch) -> Verdict:
        total = batch.per_row_sum(batch.lengths)
        return Verdict(drops=drops_where(batch, total > self.max_chars, "too_long",
                                         lambda row: f"{total[row]:.0f} characters > {self.max_chars}"))


class TooShort(Filter):
    """The user's or the counselor's text together under a minimum: nothing to rewrite or learn from."""

    name = "too_short"

    def __init__(self, *, min_user_chars: int, min_assistant_chars: int) -> None:
        self.minimum = {USER: min_user_chars, ASSISTANT: min_assistant_chars}

    def apply(self, batch: Batch) -> Verdict:
        stripped = pc.utf8_length(pc.utf8_trim_whitespace(batch.text)).to_numpy(zero_copy_only=False)
        totals = {code: batch.per_row_sum(np.where(batch.role == code, stripped, 0)) for code in self.minimum}
        short = {code: totals[code] < minimum for code, minimum in self.minimum.items()}

        def detail(row: int) -> str:
            who, code = ("user", USER) if short[USER][row] else ("counselor", ASSISTANT)
            return f"{who} text: {totals[code][row]:.0f} characters < {self.minimum[code]}"

        return Verdict(drops=drops_where(batch, short[USER] | short[ASSISTANT], "too_short", detail))
