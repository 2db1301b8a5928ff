"""AI-template screens: the behaviour SoulChat set out to remove from counseling replies.

The paper's motivation is models that answer distress with "I'm sorry… here are some suggestions:
1. … 2. …" instead of listening (reference/SOULCHAT.md); a rewrite model also leaks its own identity
("作为一个AI…"). Both are looked for in counselor turns only: a user may well write a numbered list.
SMILECHAT's counselor turns also carry the forum answers they came from ("谢邀", "见字如面", hugs, the
client addressed as "求助者，"); TemplateMarkers normalises, scores or rejects each by its rule.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from soulray.filters.base import Filter, FilterSettings, Verdict, drops_where, shorten
from soulray.filters.batch import ASSISTANT, Batch
from soulray.settings import StrictModel

AI_DISCLOSURE_PATTERNS = [
    r"作为(?:一个|一名|一位)?(?:AI|ai|人工智能|语言模型|AI语言模型|AI助手|智能助手|聊天机器人|虚拟助手|机器人)",
    r"我(?:只)?是(?:一个|一名)?(?:AI|ai|人工智能|语言模型|AI语言模型|AI助手|聊天机器人|虚拟助手|机器人)",
    r"(?:人工智能|AI)语言模型",
    r"(?i)as an ai|language model",
]
# Forum and template leftovers in counselor turns (SMILECHAT's answers were forum posts: "谢邀", letters
# opening "见字如面", hugs, the client addressed as "求助者，"). Normalised: the marker and the punctuation
# after it are cut where it stands at the start of a sentence (\1 keeps what came before), and never where
# the cut would leave a turn without words. Scored: stock empathy openings, a style choice, as
# marker_stock_opening (counselor turns opening with one). The run report shows each marker's share
# before and after (soulray/filters/template.py, MARKERS).
_SENTENCE_START = r"(^|[。！？!?…～~\n])\s*"
_CLAUSE_END = r"[！!。，,～~…\s\x{FE0F}]*"
_NOT_CLAUSE = r"[^。！？!?…～~，,\n]"
_HUG = rf"(?:先|想|很想|好想)?抱抱(?:你|啊|呀|哦|{_NOT_CLAUSE[:-1]}自己它她他我]{{0,10}}的你?)?"
_HUG_OFFER = rf"(?:先|想|很想|好想|我想|我先)?(?:给你|送你|送上)(?:一个|一份)?{_NOT_CLAUSE}{{0,8}}抱抱"
# a counselor turn opening with a stock empathy formula (the sample's most shared first sentences)
STOCK_OPENING = r"^(?:你好|您好|亲爱的)?[，,！!。～~]?(?:非常|很|完全)?(?:能|可以)?(?:理解|明白|了解)(?:你|您)的(?:心情|感受)"
TEMPLATE_RULES = [  # in order: a hug before the 谢邀 or 见字如面 it precedes ("【抱抱】见字如面！")
    ("hug", r"()(?:【抱抱】|\[抱抱\]|\[拥抱\]|#hug#)", "normalise"),
    ("hug", rf"{_SENTENCE_START}(?:{_HUG}|{_HUG_OFFER})[。！？!?…～~，,]+", "normalise"),
    ("hug", rf"([，,])(?:{_HUG}|{_HUG_OFFER})[，,]", "normalise"),
    ("xie_yao", rf"(^|[。！？!?…～~\n，,])\s*(?:首先)?(?:谢邀|(?:非常)?(?:感谢|谢谢)(?:你的|您的)?邀请(?:回答)?(?:和信任)?)"
                rf"{_CLAUSE_END}", "normalise"),
    ("jian_zi_ru_mian", rf"{_SENTENCE_START}见字如面{_CLAUSE_END}", "normalise"),
    ("vocative_client", rf"{_SENTENCE_START}(?:亲爱的)?(?:求助者|来访者)[，,]\s*", "normalise"),
    ("analysis_template", r"()以下是我的(?:分析|回答|看法)[:：]\s*", "normalise"),
    ("stock_opening", STOCK_OPENING, "score"),
]


class MarkerRule(StrictModel):
    marker: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="the marker's name in flags, scores and reasons")
    pattern: str = Field(min_length=1, description="RE2, matched in counselor turns")
    action: Literal["normalise", "score", "reject"] = Field(
        description="normalise: replace the match with `replacement` (\\1 … refer to groups); score: count matching "
                    "turns as marker_<marker>; reject: drop the row as marker_<marker>")
    replacement: str = Field(r"\1", description="normalise only")


class TemplateMarkersSpec(FilterSettings):
    name: Literal["template_markers"]
    rules: list[MarkerRule] = Field(default_factory=lambda: [MarkerRule(marker=m, pattern=p, action=a)
                                                             for m, p, a in TEMPLATE_RULES])


class AiDisclosureSpec(FilterSettings):
    name: Literal["ai_disclosure"]
    patterns: list[str] = Field(default_factory=lambda: list(AI_DISCLOSURE_PATTERNS), description="RE2 regexes")


class AdviceListSpec(FilterSettings):
    name: Literal["advice_list"]
    min_items: int = Field(2, ge=1, description="item markers (1. 2、 （3）…) that make a counselor turn a list")
    max_rate: float = Field(0.25, ge=0, le=1, description="drop above this share of counselor turns as lists")


# An item marker: 1. 1、 1） 一、 at the start or after a space or punctuation; (1) and ① anywhere
LIST_ITEM = r"(?:^|[\s：:。；;！!？?，,])(?:[1-9][\.、．)）]|[一二三四五六七八九][、．])|[（(][1-9][)）]|[①②③④⑤⑥⑦⑧⑨]"
LIST_INTRO = r"以下(?:是|为|有)?(?:一些|几点|几个|几种)?(?:建议|方法|办法|方式|做法|步骤)"
# A numbered list is one of suggestions only beside an advice word: SMILECHAT counselors also number
# their recap of the client's problems ("我了解到你有以下问题：1.…2.…") and their questions ("回答以下几个
# 问题：1、…"), which were 3 of the 7 advice_list rejects of the sample (issue 16's review).
ADVICE_CUE = r"建议|方法|办法|技巧|尝试|试试|试着|不妨"


class AiDisclosure(Filter):
    """A counselor turn that says it is an AI or a language model."""

    name = "ai_disclosure"
    settings = AiDisclosureSpec

    def __init__(self, *, patterns: list[str]) -> None:
        self.pattern = "|".join(f"(?:{pattern})" for pattern in patterns)

    def apply(self, batch: Batch) -> Verdict:
        if not self.pattern:
            return Verdict()
        hits = batch.matches(self.pattern, batch.role == ASSISTANT)
        return Verdict(drops=drops_where(batch, batch.per_row_any(hits), "ai_disclosure",
                                         lambda row: quote_hit(batch, row, hits)))


class AdviceList(Filter):
    """The share of counselor turns that are numbered lists of suggestions; drop above `max_rate`."""

    name = "advice_list"
    settings = AdviceListSpec
    kinds = ("dialogue",)

    def __init__(self, *, min_items: int, max_rate: float) -> None:
        self.min_items, self.max_rate = min_items, max_rate

    def apply(self, batch: Batch) -> Verdict:
        counselor = batch.role == ASSISTANT
        # counting markers is the costly part: only in counselor turns that have one marker at all
        marked = np.flatnonzero(batch.matches(LIST_ITEM, counselor))
        items = np.zeros(len(batch.text), dtype=np.int64)
        if marked.size:
            counted = pc.count_substring_regex(batch.text.take(pa.array(marked)), LIST_ITEM)
            items[marked] = counted.to_numpy(zero_copy_only=False)
        numbered = items >= self.min_items
        listing = (numbered & batch.matches(ADVICE_CUE, numbered)) | batch.matches(LIST_INTRO, counselor)
        turns = batch.per_row_count(counselor)
        rate = np.divide(batch.per_row_count(listing), turns, out=np.zeros(batch.num_rows), where=turns > 0)
        return Verdict(scores={"advice_list_rate": rate}, drops=drops_where(
            batch, rate > self.max_rate, "advice_list",
            lambda row: f"{rate[row]:.0%} of counselor turns are lists of suggestions (> {self.max_rate:.0%})"))


# What the run report counts as each marker's presence in a counselor turn, before and after the chain:
# broader than the rules that normalise it (a hug in "抱抱自己" is advice, left alone, but still counted),
# so the published share is an upper bound. Forum words (楼主, 题主…) are counted by their replacements.
MARKERS = {
    "xie_yao": r"谢邀|(?:感谢|谢谢)(?:你的|您的)?邀请",
    "jian_zi_ru_mian": r"见字如面",
    "hug": r"抱抱|#hug#|\[拥抱\]",
    "vocative_client": r"(?:^|[。！？!?…～~\n])\s*(?:亲爱的)?(?:求助者|来访者)[，,]",
    "analysis_template": r"以下是我的(?:分析|回答|看法)[:：]",
    "stock_opening": STOCK_OPENING,
}
NORMALISED_PREFIX = "normalised:"  # how a row says in its `flags` that a marker was cut from it
# A turn that a cut would leave without a letter or digit keeps its text: better a marker than an empty turn.
_WORDLESS = r"^[\s\p{P}\p{S}]*$"


def marker_rows(messages: pa.Array) -> dict[str, np.ndarray]:
    """Bool per dialogue of `messages` (list<struct<role, content>>): a counselor turn holds the marker."""
    flat = pc.list_flatten(messages)
    parents = pc.list_parent_indices(messages).to_numpy(zero_copy_only=False)
    counselor = pc.equal(flat.field("role"), "assistant").fill_null(False).to_numpy(zero_copy_only=False)
    text = pc.fill_null(flat.field("content"), "")
    found = {}
    for name, pattern in MARKERS.items():
        hits = pc.match_substring_regex(text, pattern).to_numpy(zero_copy_only=False) & counselor
        found[name] = np.bincount(parents[hits], minlength=len(messages)) > 0
    return found


class TemplateMarkers(Filter):
    """Forum and template leftovers in counselor turns, each normalised, scored or rejected by its rule."""

    name = "template_markers"
    settings = TemplateMarkersSpec

    def __init__(self, *, rules: list[MarkerRule]) -> None:
        self.rules = list(rules)

    def apply(self, batch: Batch) -> Verdict:
        counselor = (batch.role == ASSISTANT) & batch.active[batch.row]
        # one pass over the counselor turns finds the few that any rule matches; each rule runs on those
        counselor &= batch.matches("|".join(f"(?:{rule.pattern})" for rule in self.rules), counselor) \
            if self.rules else False
        text, flags, scores, drops = batch.text, {}, {}, {}
        for rule in self.rules:
            hits = batch.with_text(text).matches(rule.pattern, counselor)
            if rule.action == "normalise":
                text, cut = _normalise(text, rule, hits)
                rows = batch.per_row_any(cut)
                flags[NORMALISED_PREFIX + rule.marker] = flags.get(NORMALISED_PREFIX + rule.marker, False) | rows
            elif rule.action == "score":
                name = "marker_" + rule.marker
                scores[name] = scores.get(name, np.zeros(batch.num_rows)) + batch.per_row_count(hits)
            else:
                rows = batch.per_row_any(hits) & ~np.isin(np.arange(batch.num_rows), list(drops))
                drops.update(drops_where(batch, rows, "marker_" + rule.marker,
                                         lambda row, hits=hits: quote_hit(batch, row, hits)))
        flags = {name: rows for name, rows in flags.items() if np.any(rows)}
        return Verdict(text=text if flags else None, flags=flags, scores=scores, drops=drops)


def _normalise(text: pa.Array, rule: MarkerRule, hits: np.ndarray) -> tuple[pa.Array, np.ndarray]:
    """`text` with the rule's matches replaced in the `hits` segments, except where that leaves no word."""
    positions = np.flatnonzero(hits)
    if not positions.size:
        return text, hits
    before = text.take(pa.array(positions))
    after = pc.replace_substring_regex(before, pattern=rule.pattern, replacement=rule.replacement)
    wordless = pc.match_substring_regex(after, _WORDLESS).to_numpy(zero_copy_only=False)
    cut = np.zeros(len(text), dtype=bool)
    cut[positions[~wordless]] = True
    if not cut.any():
        return text, cut
    replacements = after.filter(pa.array(~wordless))
    return pc.replace_with_mask(text, pa.array(cut), replacements), cut


def quote_hit(batch: Batch, row: int, hits: np.ndarray) -> str:
    """A reject detail: the first segment of `row` that `hits` (bool per segment) marks, quoted short."""
    index, _, text = next(s for s in batch.segments_of(row) if hits[batch.offsets[row] + s[0]])
    return f"{batch.segment_name(row, index)}: {shorten(text)}"
