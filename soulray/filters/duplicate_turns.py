"""A turn that repeats an earlier turn of the same speaker word for word: the rewrite looped.

In the SMILECHAT sample a rewrite that stalls has the client re-send its previous message while the
counselor moves on (smile-14142, turns 3 and 5: "是的，我感觉自己变得焦虑了，不知道怎么才能控制这种胡思乱想，
每次都感觉很难受。"), or both speakers replay the same pair (smile-51936). Such a repeat is exact (spaces at
its ends aside), so exact is all this compares. A client's short acknowledgement said twice
("好的好的，谢谢您的建议。", smile-16033, 12 characters) is ordinary, so turns shorter than `min_chars` never
count. The first user turn (the source question) counts like any other: a later turn that re-sends it
is a repeat too.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from soulray.filters.base import Filter, FilterSettings, Verdict, drops_where, shorten
from soulray.filters.batch import Batch
from soulray.filters.ethics import Role


class DuplicateTurnsSpec(FilterSettings):
    name: Literal["duplicate_turns"]
    min_chars: int = Field(20, ge=1, description="shorter turns may be said twice (好的好的，谢谢您的建议。)")
    roles: list[Role] = Field(default_factory=lambda: ["user", "assistant"], description="whose repeats count")


class DuplicateTurns(Filter):
    name = "duplicate_turns"
    settings = DuplicateTurnsSpec
    kinds = ("dialogue",)

    def __init__(self, *, min_chars: int, roles: list[str]) -> None:
        self.min_chars, self.roles = min_chars, list(roles)

    def apply(self, batch: Batch) -> Verdict:
        text = pc.utf8_trim_whitespace(batch.text)
        long = pc.utf8_length(text).to_numpy(zero_copy_only=False) >= self.min_chars
        positions = np.flatnonzero(long & batch.role_mask(self.roles) & batch.active[batch.row])
        if not positions.size:
            return Verdict()
        keys = pa.table({"row": batch.row[positions], "role": batch.role[positions],
                         "text": text.take(pa.array(positions))})
        counts = keys.group_by(["row", "role", "text"]).aggregate([("row", "count")])
        repeated = np.zeros(batch.num_rows, dtype=bool)
        repeated[counts.filter(pc.greater(counts["row_count"], 1))["row"].to_numpy()] = True
        return Verdict(drops=drops_where(batch, repeated, "duplicate_turn", lambda row: self._detail(batch, row)))

    def _detail(self, batch: Batch, row: int) -> str:
        """'turn 5 (user) repeats turn 3: 是的，我感觉自己变得焦虑了…' for the first repeat of the row."""
        seen: dict[tuple[str, str], int] = {}
        for index, role, text in batch.segments_of(row):
            key = (role, text.strip())
            if key in seen and len(key[1]) >= self.min_chars and role in self.roles:
                return f"{batch.segment_name(row, index)} repeats turn {seen[key] + 1}: {shorten(text)}"
            seen.setdefault(key, index)
        return "a turn repeats an earlier one"
