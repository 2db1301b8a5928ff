"""AI-template screens: the behaviour SoulChat set out to remove from counseling replies.

The paper's motivation is models that answer distress with "I'm sorry… here are some suggestions:
1. … 2. …" instead of listening (reference/SOULCHAT.md); a rewrite model also leaks its own identity
("作为一个AI…"). Both are looked for in counselor turns only: a user may well write a numbered list.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from soulray.filters.base import Filter, Verdict, drops_where, shorten
from soulray.filters.batch import ASSISTANT, Batch

# An item marker: 1. 1、 1） 一、 at the start or after a space or punctuation; (1) and ① anywhere
LIST_ITEM = r"(?:^|[\s：:。；;！!？?，,])(?:[1-9][\.、．)）]|[一二三四五六七八九][、．])|[（(][1-9][)）]|[①②③④⑤⑥⑦⑧⑨]"
LIST_INTRO = r"以下(?:是|为|有)?(?:一些|几点|几个|几种)?(?:建议|方法|办法|方式|做法|步骤)"


class AiDisclosure(Filter):
    """A counselor turn that says it is an AI or a language model."""

    name = "ai_disclosure"

    def __init__(self, *, patterns: list[str]) -> None:
        self.pattern = "|".join(f"(?:{pattern})" for pattern in patterns)

    def apply(self, batch: Batch) -> Verdict:
        if not self.pattern:
            return Verdict()
        hits = batch.matches(self.pattern, batch.role == ASSISTANT)

        def detail(row: int) -> str:
            index, _, text = next(s for s in batch.segments_of(row) if hits[batch.offsets[row] + s[0]])
            return f"{batch.segment_name(row, index)}: {shorten(text)}"

        return Verdict(drops=drops_where(batch, batch.per_row_any(hits), "ai_disclosure", detail))


class AdviceList(Filter):
    """The share of counselor turns that are numbered lists of suggestions; drop above `max_rate`."""

    name = "advice_list"
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
        listing = (items >= self.min_items) | batch.matches(LIST_INTRO, counselor)
        turns = batch.per_row_count(counselor)
        rate = np.divide(batch.per_row_count(listing), turns, out=np.zeros(batch.num_rows), where=turns > 0)
        return Verdict(scores={"advice_list_rate": rate}, drops=drops_where(
            batch, rate > self.max_rate, "advice_list",
            lambda row: f"{rate[row]:.0%} of counselor turns are lists of suggestions (> {self.max_rate:.0%})"))
