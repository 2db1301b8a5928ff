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
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from soulray.filters.base import Filter, FilterSettings, Verdict, drops_where
from soulray.filters.batch import Batch
from soulray.filters.source import word_boundaries_around

Role = Literal["user", "assistant"]
# Self-harm and suicide vocabulary (incl. SoulChat's 自杀 and 跳楼). A term counts where it stands on a
# jieba word boundary at its start or its end: 想死 in 只想/死 and 自杀 in 自杀未遂 count, 自伤 in 独自/伤心
# (inside two other words) does not. 想去死, 求死, 死了算了, 活着没意思 are how clients of the SMILECHAT
# sample wrote it where none of the older terms matched (smile-36270, 27639, 55889).
CRISIS_TERMS = ["自杀", "轻生", "自尽", "寻死", "想死", "想去死", "求死", "不想活", "活不下去", "活着没意思", "死了算了",
                "结束生命", "结束自己的生命", "了结自己", "割腕", "跳楼", "跳河", "上吊", "吞药", "自残", "自伤",
                "伤害自己", "遗书"]
# Crisis talk no single term holds (RE2), each from a sample dialogue the terms missed: cutting oneself
# (smile-10215), "不如早点死了" (41967), "有时想想死亡" (50652: jieba reads 想想/死亡, so 想死 does not
# count there), "死了就会解脱吗" (36328), "害怕自己会走极端" (15076), the counselor's "不要做傻事" (36328).
CRISIS_PATTERNS = [r"[割划]伤?自己的?(?:手|胳膊|手臂|手腕|大腿|身体)", r"不如(?:早点)?死了", r"想(?:想|到|过)死亡",
                   r"死了?[就才]?(?:会|能|可以)?解脱", r"[怕想]自己会?(?:走极端|做傻事)", r"不要做傻事"]
# Where a term is not about self-harm (RE2; a term inside one of these matches does not count): the
# counselor's 不伤害自己 as a rule of conduct, someone else hurting one, hurting one's own pride or
# child. Figurative uses these miss stay hits: crisis_review is for a person to read, so a doubtful
# hit is kept (bench/RESULTS.md lists them).
CRISIS_EXCEPTIONS = [r"(?:^|[^再])不伤害自己", r"伤害自己的(?:自尊|孩子|利益|感情|自信|尊严)",
                     r"(?:别人|他人|对方|父母)会?伤害自己"]
# SoulChat screened the string 我是; in SMILECHAT's counselor turns 32 of 34 such rows were ordinary speech
# ("告诉自己：“我是重要的”", "如果我是你的话", "我是谁"). What the screen is for: the counselor saying it
# is an AI, a model, an assistant or a bot, or introducing itself by a role name ("你好，我是你的支持者。").
SELF_INTRODUCTION_PATTERNS = [
    r"我(?:只|就)?是(?:一个|一名|一位|一款|个)?(?:AI|ai|人工智能|语言模型|智能助手|AI助手|助手|聊天机器人|机器人|"
    r"虚拟助手|bot|Bot|程序)",
    r"我是(?:你的|您的|一名|一位|一个|这里的|本次的|今天的)?(?:专业的?)?(?:心理)?(?:咨询师|咨询顾问|治疗师|心理医生|"
    r"心理学家|支持者|倾听者|陪伴者)",
]


class CrisisSpec(FilterSettings):
    name: Literal["crisis_screen"]
    terms: list[str] = Field(default_factory=lambda: list(CRISIS_TERMS),
                             description="literal; each counts on a jieba word boundary at its start or end")
    patterns: list[str] = Field(default_factory=lambda: list(CRISIS_PATTERNS), description="RE2, matched as is")
    exceptions: list[str] = Field(default_factory=lambda: list(CRISIS_EXCEPTIONS),
                                  description="RE2: a term inside a match of one of these does not count")
    action: Literal["reject", "flag"] = Field(
        "reject", description="reject: into the reject table as crisis_review, with the terms, for review; "
                              "flag: keep, with 'crisis_screen' in flags")


class BlocklistSpec(FilterSettings):
    name: Literal["ethics_blocklist"]
    terms: list[str] = Field(default_factory=lambda: ["自杀", "跳楼"], description="SoulChat's strings, literal")
    patterns: list[str] = Field(default_factory=lambda: list(SELF_INTRODUCTION_PATTERNS),
                                description="RE2: SoulChat's 我是, narrowed to self-identification")
    roles: list[Role] = Field(default_factory=lambda: ["assistant"],
                              description="whose text is screened; a user saying 我是… is no ethics problem")



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
    settings = BlocklistSpec

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
    settings = CrisisSpec

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
