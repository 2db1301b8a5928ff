"""Source cleaning before the rewrite, after SMILE (Qiu et al.): forum words, a length cap, too-short text.

SMILE replaced forum vocabulary in order (楼主你/题主你 → 你, 楼主/题主 → 你, 阿凉 → 我, 答主 → 人), dropped
fragments containing 抱抱, and kept Q&As under 1,800 characters (reference/SOULCHAT.md, "SMILE"). A plain
substring replacement corrupts words that contain a forum word ("问题主要" → "问你要", "回答主观" →
"回人观"), so the default rules are whole-word rules: jieba segments the (few) segments that hold a
pattern, and an occurrence counts only where its first word is a word of the segment. The 抱抱 rule is
narrowed to hug greetings among the template markers (soulray/filters/template.py).
"""

from __future__ import annotations

import re
from functools import cache
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from soulray.filters.base import Filter, FilterSettings, Verdict, drops_where
from soulray.filters.batch import ASSISTANT, USER, Batch
from soulray.settings import StrictModel

# SMILE's forum-word replacements, in its order. Each is a whole-word rule (jieba segmentation): "题主"
# inside "问题主要" is no forum word, and replacing it corrupted text ("问你要"). SMILE also dropped every
# fragment containing 抱抱; that cut advice such as "请你静下心来，抱抱自己", so hug greetings are now one
# of the template markers below instead.
SMILE_FORUM_RULES = [("楼主你", "你"), ("题主你", "你"), ("楼主", "你"), ("题主", "你"), ("阿凉", "我"), ("答主", "人")]


class ReplaceRule(StrictModel):
    pattern: str = Field(min_length=1)
    replacement: str = ""
    regex: bool = Field(False, description="pattern is an RE2 regular expression, not literal text")
    whole_word: bool = Field(False, description="literal only: the pattern's first word must be a whole word of "
                                                "the text (jieba): 题主 in 题主你好, not in 问题主要")


class ForumWordsSpec(FilterSettings):
    name: Literal["forum_words"]
    rules: list[ReplaceRule] = Field(default_factory=lambda: [ReplaceRule(pattern=p, replacement=r, whole_word=True)
                                                              for p, r in SMILE_FORUM_RULES])

    @model_validator(mode="after")
    def _whole_words_are_literal(self) -> ForumWordsSpec:
        for index, rule in enumerate(self.rules):
            if rule.whole_word and rule.regex:
                raise ValueError(f"rules.{index}: whole_word applies to literal patterns, not regex ones")
        return self


class LengthCapSpec(FilterSettings):
    name: Literal["length_cap"]
    max_chars: int = Field(1800, ge=1, description="all of a row's text together (SMILE: 1,800)")


class TooShortSpec(FilterSettings):
    name: Literal["too_short"]
    min_user_chars: int = Field(5, ge=0, description="question + description, or all user turns")
    min_assistant_chars: int = Field(10, ge=0, description="answer, or all counselor turns")


FLAG = "normalised:forum_word"  # rows whose text a rule changed, in their `flags`


class ForumWords(Filter):
    """Ordered replacement rules over every segment; rewrites text, never drops."""

    name = "forum_words"
    settings = ForumWordsSpec

    def __init__(self, *, rules: list[ReplaceRule]) -> None:
        self.rules = list(rules)

    def apply(self, batch: Batch) -> Verdict:
        # one pass over every segment finds the few that hold any pattern; the rules run on those only
        candidates = np.flatnonzero(batch.matches(self._any_pattern()))
        if not candidates.size:
            return Verdict()
        before = batch.text.take(pa.array(candidates))
        text = before
        for rule in self.rules:
            if rule.regex:
                text = pc.replace_substring_regex(text, pattern=rule.pattern, replacement=rule.replacement)
            elif rule.whole_word:
                text = _replace_whole_words(text, rule.pattern, rule.replacement)
            else:
                text = pc.replace_substring(text, pattern=rule.pattern, replacement=rule.replacement)
        changed = pc.not_equal(text, before).to_numpy(zero_copy_only=False)
        if not changed.any():
            return Verdict()
        mask = np.zeros(len(batch.text), dtype=bool)
        mask[candidates[changed]] = True
        new_text = pc.replace_with_mask(batch.text, pa.array(mask), text.filter(pa.array(changed)))
        return Verdict(text=new_text, flags={FLAG: batch.per_row_any(mask)})

    def _any_pattern(self) -> str:
        return "|".join(rule.pattern if rule.regex else re.escape(rule.pattern) for rule in self.rules)


@cache
def _tokenizer():
    """jieba's default tokenizer, loaded once per process (about a second: DESIGN.md)."""
    import jieba

    jieba.setLogLevel(60)
    jieba.initialize()
    return jieba.dt


def word_boundaries(text: str) -> set[int]:
    """The character offsets where jieba's words of `text` start or end (0 and len(text) included)."""
    boundaries, position = {0}, 0
    for token in _tokenizer().cut(text):
        position += len(token)
        boundaries.add(position)
    return boundaries


def word_boundaries_around(text: str, start: int, end: int, *, cache: dict | None = None) -> set[int]:
    """`word_boundaries(text)` within the run of text jieba cuts as one block around text[start:end].
    jieba splits a text at every character outside `re_han_default` (punctuation, spaces) and cuts each
    run on its own, so the words of that run are the words of the whole text there, at the cost of a
    clause instead of a turn. `cache` (one dict per text) cuts each clause once."""
    import jieba

    cache = {} if cache is None else cache
    for block in jieba.re_han_default.finditer(text):
        if block.start() <= start and end <= block.end():
            if block.span() not in cache:
                cache[block.span()] = {block.start() + offset for offset in word_boundaries(block.group())}
            return cache[block.span()]
        if block.start() > start:
            break
    return word_boundaries(text)


def whole_word_spans(text: str, pattern: str, word: str) -> list[int]:
    """Starts of the occurrences of `pattern` in `text` whose leading `word` is a whole word of `text`
    by jieba's segmentation: 题主 in '题主你好' (题主/你好) yes, in '问题主要' (问题/主要) no."""
    starts = [match.start() for match in re.finditer(re.escape(pattern), text)]
    if not starts:
        return []
    head = len(word)
    boundaries = word_boundaries(text)
    kept, end = [], -1
    for start in starts:
        if start >= end and start in boundaries and start + head in boundaries:
            kept.append(start)
            end = start + len(pattern)
    return kept


def replace_whole_words(text: str, pattern: str, replacement: str) -> str:
    """SMILE's "楼主你 → 你" keeps the 你: a pattern that ends with its replacement has the rest as its word."""
    word = pattern[: -len(replacement)] if replacement and pattern.endswith(replacement) else pattern
    pieces, position = [], 0
    for start in whole_word_spans(text, pattern, word):
        pieces += [text[position:start], replacement]
        position = start + len(pattern)
    return "".join(pieces) + text[position:] if pieces else text


def _replace_whole_words(text: pa.Array, pattern: str, replacement: str) -> pa.Array:
    """Whole-word replacement over a segment column: jieba runs only on segments holding the pattern."""
    candidates = np.flatnonzero(pc.match_substring(text, pattern).to_numpy(zero_copy_only=False))
    if not candidates.size:
        return text
    before = text.take(pa.array(candidates)).to_pylist()
    after = [replace_whole_words(value, pattern, replacement) for value in before]
    changed = np.zeros(len(text), dtype=bool)
    changed[candidates] = [new != old for new, old in zip(after, before, strict=True)]
    if not changed.any():
        return text
    return pc.replace_with_mask(text, pa.array(changed),
                                pa.array([new for new, old in zip(after, before, strict=True) if new != old], pa.string()))


class LengthCap(Filter):
    """All of a row's text together over `max_chars` characters: the rewrite would be too long."""

    name = "length_cap"
    settings = LengthCapSpec

    def __init__(self, *, max_chars: int) -> None:
        self.max_chars = max_chars

    def apply(self, batch: Batch) -> Verdict:
        total = batch.per_row_sum(batch.lengths)
        return Verdict(drops=drops_where(batch, total > self.max_chars, "too_long",
                                         lambda row: f"{total[row]:.0f} characters > {self.max_chars}"))


class TooShort(Filter):
    """The user's or the counselor's text together under a minimum: nothing to rewrite or learn from."""

    name = "too_short"
    settings = TooShortSpec

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
