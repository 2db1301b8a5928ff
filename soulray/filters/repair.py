"""The dialogue chain's repair step: soulray/repair.py's plan applied to a whole batch.

Rows that need nothing (most of them) are found with numpy; only the others are planned in Python.
The repaired batch takes every kept utterance from the original text column by index, so it stays
byte-identical; only merged turns are new strings. Each repaired row carries `repair:<kind>` in its
flags, which the run report counts.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from soulray.filters.base import Filter, FilterSettings, Verdict
from soulray.filters.batch import ASSISTANT, ROLE_CODES, ROLE_NAMES, USER, Batch
from soulray.repair import FLAG_PREFIX, MERGE_SEPARATOR, REPAIRS, Repair, TurnLimits, plan_repair


class DialogueRepairSpec(FilterSettings):
    name: Literal["dialogue_repair"]
    max_user_chars: int = Field(TurnLimits.max_user_chars, ge=1, description="merge same-role turns only within "
                                                                               "turn_length's limits")
    max_first_user_chars: int = Field(TurnLimits.max_first_user_chars, ge=1)
    max_assistant_chars: int = Field(TurnLimits.max_assistant_chars, ge=1)



class DialogueRepair(Filter):
    name = "dialogue_repair"
    settings = DialogueRepairSpec
    kinds = ("dialogue",)

    def __init__(self, *, max_user_chars: int, max_first_user_chars: int, max_assistant_chars: int) -> None:
        self.limits = TurnLimits(max_user_chars=max_user_chars, max_first_user_chars=max_first_user_chars,
                                 max_assistant_chars=max_assistant_chars)

    def apply(self, batch: Batch) -> Verdict:
        candidates = np.flatnonzero(needs_repair(batch) & batch.active)
        plans: dict[int, Repair] = {}
        for row in candidates:
            start, end = int(batch.offsets[row]), int(batch.offsets[row + 1])
            roles = [ROLE_NAMES[int(code)] for code in batch.role[start:end]]
            plan = plan_repair(roles, batch.lengths[start:end].tolist(), limits=self.limits)
            if plan.changed:
                plans[int(row)] = plan
        if not plans:
            return Verdict()
        flags = {FLAG_PREFIX + kind: np.zeros(batch.num_rows, dtype=bool) for kind in REPAIRS}
        for row, plan in plans.items():
            for kind in plan.kinds:
                flags[FLAG_PREFIX + kind][row] = True
        return Verdict(batch=_restructure(batch, plans), flags={k: v for k, v in flags.items() if v.any()})


def needs_repair(batch: Batch) -> np.ndarray:
    """Bool per row: starts with the counselor, ends with the client, or repeats a role."""
    has = batch.turns > 0
    starts, ends = batch.offsets[:-1], batch.offsets[1:] - 1
    roles = np.append(batch.role, -1)
    first, last = np.where(has, roles[np.minimum(starts, len(batch.role))], -1), np.where(has, roles[ends], -1)
    same = np.zeros(len(batch.role), dtype=bool)
    same[1:] = (batch.role[1:] == batch.role[:-1]) & (batch.row[1:] == batch.row[:-1])
    return has & ((first == ASSISTANT) | (last == USER) | batch.per_row_any(same))


def _restructure(batch: Batch, plans: dict[int, Repair]) -> Batch:
    """The batch with the planned rows' segments replaced: kept segments by index, merged ones new."""
    merged_texts: list[str] = []
    merged_roles: list[int] = []
    take: list[np.ndarray] = []
    lengths = np.diff(batch.offsets)
    base = len(batch.text)
    position = 0
    for row, plan in sorted(plans.items()):
        start = int(batch.offsets[row])
        take.append(np.arange(position, start))
        picked = []
        for group in plan.groups:
            if len(group) == 1:
                picked.append(start + group[0])
                continue
            texts = batch.text.slice(start + group[0], len(group)).to_pylist()
            picked.append(base + len(merged_texts))
            merged_texts.append(MERGE_SEPARATOR.join(texts))
            merged_roles.append(int(batch.role[start + group[0]]))
        take.append(np.array(picked, dtype=np.int64))
        lengths[row] = len(plan.groups)
        position = int(batch.offsets[row + 1])
    take.append(np.arange(position, len(batch.text)))
    indices = pa.array(np.concatenate(take).astype(np.int64))
    text = pa.concat_arrays([batch.text, pa.array(merged_texts, pa.string())]).take(indices)
    role = np.concatenate([batch.role, np.array(merged_roles, dtype=np.int8)])[indices.to_numpy()]
    names = {code: name for name, code in ROLE_CODES.items()}
    raw_roles = pa.concat_arrays([batch.raw_roles.cast(pa.string()),
                                  pa.array([names[code] for code in merged_roles], pa.string())]).take(indices)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return replace(batch, text=text, offsets=offsets, role=role.astype(np.int8), raw_roles=raw_roles)
