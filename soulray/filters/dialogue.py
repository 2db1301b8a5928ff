"""Dialogue format: the structure SoulChat's prompt asks for and SMILE checked by rule.

Starts with the user, ends with the counselor (SoulChat prompt rule 1), roles alternate, at least 4
utterances by default, no empty turn, no role label left
inside a turn and no English sentence in the last turn (SMILE's rejection rules). The released SMILECHAT
still holds client-only, one-turn and repeated-role dialogues (reference/SOULCHAT.md); each gets its own
reason here. The rows this rejects for structure are what the repair step before it
(soulray/filters/repair.py) could not repair.

SoulChat's "8-20 轮" (rule 3) is its instruction to the rewriting model, not a property of good existing
dialogues: the parser holds rewrites to it (rewrite.min_turns/max_turns), while this filter's default
accepts 4 utterances and up, with no upper count (real SMILECHAT dialogues of 22-30 utterances are
good; length_cap bounds long dialogues by characters instead).
"""

from __future__ import annotations

import re
from typing import Literal

import numpy as np
import pyarrow.compute as pc
from pydantic import Field

from soulray.filters.base import Filter, FilterSettings, Verdict, drops_where, shorten
from soulray.filters.batch import ASSISTANT, OTHER, USER, Batch
from soulray.rewrite.parse import ASSISTANT_LABELS, USER_LABELS


class DialogueFormatSpec(FilterSettings):
    name: Literal["dialogue_format"]
    min_turns: int = Field(4, ge=2, description="utterances, user and counselor together; 8-20 is SoulChat's "
                                               "instruction to the rewriting model (rewrite.min_turns/max_turns)")
    max_turns: int | None = Field(None, ge=2, description="none: long dialogues are bounded by length_cap")


_LABELS = "|".join(re.escape(label) for label in sorted(USER_LABELS + ASSISTANT_LABELS, key=len, reverse=True))
# A label where a new utterance would start (text start, a line break, after a sentence's end), not a
# label word inside a sentence: "告诉来访者：你是…" ("telling the client: …") is prose.
ROLE_LABEL = rf"(?:^|[\s。！？!?…”\"])(?:{_LABELS})\s*[：:]"
ENGLISH_SENTENCE = r"[A-Za-z]{2,}(?:[\s,']+[A-Za-z]{2,}){2,}"  # three or more English words in a row


class DialogueFormat(Filter):
    name = "dialogue_format"
    settings = DialogueFormatSpec
    kinds = ("dialogue",)

    def __init__(self, *, min_turns: int, max_turns: int | None) -> None:
        self.min_turns, self.max_turns = min_turns, max_turns

    def apply(self, batch: Batch) -> Verdict:
        turns, row = batch.turns, batch.row
        starts, ends = batch.offsets[:-1], batch.offsets[1:] - 1
        has = turns > 0
        roles = np.append(batch.role, -1)  # index len(role) or -1 (a row without turns) reads -1
        first_role, last_role = np.where(has, roles[starts], -1), np.where(has, roles[ends], -1)
        same_as_previous = np.zeros(len(batch.role), dtype=bool)
        same_as_previous[1:] = (batch.role[1:] == batch.role[:-1]) & (row[1:] == row[:-1])
        empty = pc.equal(pc.utf8_trim_whitespace(batch.text), "").to_numpy(zero_copy_only=False)
        labelled = batch.matches(ROLE_LABEL)
        is_last = np.zeros(len(batch.role), dtype=bool)
        is_last[ends[has]] = True
        english = batch.matches(ENGLISH_SENTENCE, is_last)
        # (reason, rows) from the most to the least fundamental; a row gets the first that applies
        checks = [
            ("no_messages", ~has),
            ("unknown_role", batch.per_row_any(batch.role == OTHER)),
            ("client_only", has & ~batch.per_row_any(batch.role == ASSISTANT)),
            ("empty_turn", batch.per_row_any(empty)),
            ("repeated_role", batch.per_row_any(same_as_previous)),
            ("not_starting_with_user", first_role != USER),
            ("not_ending_with_counselor", last_role != ASSISTANT),
            ("turn_count", (turns < self.min_turns) | (turns > (self.max_turns or turns.max(initial=0)))),
            ("role_label_in_turn", batch.per_row_any(labelled)),
            ("english_in_last_turn", batch.per_row_any(english)),
        ]
        reason = np.full(batch.num_rows, None, dtype=object)
        for name, rows in reversed(checks):
            reason[rows] = name
        segment_flags = {"empty_turn": empty, "repeated_role": same_as_previous, "role_label_in_turn": labelled,
                         "english_in_last_turn": english, "unknown_role": batch.role == OTHER}
        return Verdict(drops=drops_where(batch, reason != None, reason,  # noqa: E711 - elementwise
                                         lambda row: self._detail(batch, row, reason[row], segment_flags)))

    def _detail(self, batch: Batch, row: int, reason: str, segment_flags: dict[str, np.ndarray]) -> str:
        segments = batch.segments_of(row)
        if reason == "turn_count":
            if self.max_turns is None:
                return f"{len(segments)} turns, fewer than {self.min_turns}"
            return f"{len(segments)} turns, outside {self.min_turns}-{self.max_turns}"
        if reason in ("no_messages", "client_only"):
            return f"{len(segments)} turns, none by the counselor"
        if reason == "not_starting_with_user":
            return f"{len(segments)} turns, the first by the {segments[0][1]}"
        if reason == "not_ending_with_counselor":
            return f"{len(segments)} turns, the last by the {segments[-1][1]}"
        flagged = segment_flags[reason]
        turn, role, text = next(segment for segment in segments if flagged[batch.offsets[row] + segment[0]])
        if reason == "repeated_role":
            return f"turns {turn} and {turn + 1} are both {role}"
        if reason == "unknown_role":
            raw = batch.raw_roles[int(batch.offsets[row]) + turn].as_py()
            return f"turn {turn + 1} has role {raw!r} (expected user or assistant)"
        if reason == "role_label_in_turn":
            found = re.search(ROLE_LABEL, text)
            text = text[max(0, found.start() - 15):] if found else text
        return f"turn {turn + 1} ({role}): {shorten(text)}"
