"""What a filter sees: a batch's text as one flat column of segments, and how new text goes back.

A rewrite unit has three segments (question and description, the user's; answer, the counselor's); a
dialogue has one segment per turn. Laying every segment of a batch out in one Arrow string column,
row-major, with its row and role beside it, lets a filter run one pyarrow.compute call over the whole
batch and reduce to rows with `np.bincount`, instead of looping over rows in Python.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from soulray.schema import MESSAGE, ROLE_ASSISTANT, ROLE_USER

USER, ASSISTANT, OTHER = 0, 1, 2  # role codes
ROLE_CODES = {ROLE_USER: USER, ROLE_ASSISTANT: ASSISTANT}
ROLE_NAMES = {USER: ROLE_USER, ASSISTANT: ROLE_ASSISTANT, OTHER: "other"}
UNIT_FIELDS = (("question", USER), ("description", USER), ("answer", ASSISTANT))
KINDS = ("unit", "dialogue")


@dataclass(frozen=True)
class Batch:
    kind: str  # "unit" (WORKING_UNIT rows) or "dialogue" (WORKING_DIALOGUE rows)
    text: pa.StringArray  # every segment of the batch, row-major, nulls read as ""
    offsets: np.ndarray  # int64, num_rows + 1: the segments of row i are text[offsets[i]:offsets[i + 1]]
    role: np.ndarray  # int8 role code per segment
    active: np.ndarray  # bool per row: not rejected yet, so filters still decide on it
    raw_roles: pa.Array | None = None  # dialogues: the role strings as stored, written back unchanged

    @property
    def num_rows(self) -> int:
        return len(self.offsets) - 1

    @cached_property
    def row(self) -> np.ndarray:
        """The row of every segment."""
        return np.repeat(np.arange(self.num_rows), np.diff(self.offsets))

    @cached_property
    def turn(self) -> np.ndarray:
        """The position of every segment within its row (0-based)."""
        return np.arange(len(self.text)) - self.offsets[self.row]

    @cached_property
    def lengths(self) -> np.ndarray:
        """Characters (code points) per segment."""
        return pc.utf8_length(self.text).to_numpy(zero_copy_only=False).astype(np.int64)

    @cached_property
    def codes(self) -> np.ndarray:
        """Every character of every segment, in order, as uint32 code points (one decode of the buffer)."""
        return code_points(self.text)

    @cached_property
    def char_row(self) -> np.ndarray:
        """The row of every character of `codes`."""
        return np.repeat(self.row, self.lengths)

    @property
    def turns(self) -> np.ndarray:
        return np.diff(self.offsets)

    def per_row_sum(self, values: np.ndarray) -> np.ndarray:
        return np.bincount(self.row, weights=values, minlength=self.num_rows)

    def per_row_count(self, mask: np.ndarray) -> np.ndarray:
        """Segments per row where `mask` (bool per segment) holds."""
        return np.bincount(self.row[mask], minlength=self.num_rows)

    def per_row_any(self, mask: np.ndarray) -> np.ndarray:
        return self.per_row_count(mask) > 0

    def matches(self, pattern: str, where: np.ndarray | None = None) -> np.ndarray:
        """Bool per segment: the RE2 `pattern` matches, looked for only in the segments `where` is True."""
        if where is None:
            return pc.match_substring_regex(self.text, pattern).to_numpy(zero_copy_only=False)
        found = np.zeros(len(self.text), dtype=bool)
        positions = np.flatnonzero(where)
        if positions.size:
            subset = self.text.take(pa.array(positions))
            found[positions] = pc.match_substring_regex(subset, pattern).to_numpy(zero_copy_only=False)
        return found

    def role_mask(self, roles: tuple[str, ...] | list[str]) -> np.ndarray:
        codes = [ROLE_CODES[role] for role in roles]
        return np.isin(self.role, codes)

    def segments_of(self, row: int) -> list[tuple[int, str, str]]:
        """(turn, role name, text) of one row's segments, for the details of the (few) dropped rows."""
        start, end = int(self.offsets[row]), int(self.offsets[row + 1])
        texts = self.text.slice(start, end - start).to_pylist()
        return [(index, ROLE_NAMES[int(self.role[start + index])], text) for index, text in enumerate(texts)]

    def segment_name(self, row: int, index: int) -> str:
        """How a detail names a segment: 'answer' of a unit, 'turn 3 (user)' of a dialogue."""
        if self.kind == "unit":
            return UNIT_FIELDS[index][0]
        return f"turn {index + 1} ({ROLE_NAMES[int(self.role[self.offsets[row] + index])]})"

    def with_text(self, text: pa.Array) -> Batch:
        return replace(self, text=text)


def code_points(text: pa.StringArray) -> np.ndarray:
    """All characters of a string array, in order, as uint32 code points."""
    if len(text) == 0:
        return np.zeros(0, dtype=np.uint32)
    offsets = np.frombuffer(text.buffers()[1], dtype=np.int32, count=len(text) + 1, offset=4 * text.offset)
    data = text.buffers()[2]
    if data is None or offsets[-1] == offsets[0]:
        return np.zeros(0, dtype=np.uint32)
    raw = data.slice(int(offsets[0]), int(offsets[-1] - offsets[0])).to_pybytes()
    return np.frombuffer(raw.decode("utf-8").encode("utf-32-le"), dtype=np.uint32)


def batch_from_table(table: pa.Table, kind: str) -> Batch:
    """The segment view of a WORKING_UNIT or WORKING_DIALOGUE table."""
    if kind not in KINDS:
        raise ValueError(f"unknown batch kind {kind!r}; expected one of {KINDS}")
    active = table["reject_reason"].is_null().to_numpy(zero_copy_only=False)
    if kind == "unit":
        return _unit_batch(table, active)
    return _dialogue_batch(table, active)


def write_back(table: pa.Table, batch: Batch) -> pa.Table:
    """`table` with its text columns replaced by the batch's (possibly rewritten) segments."""
    if batch.kind == "unit":
        count = len(UNIT_FIELDS)
        for index, (field, _) in enumerate(UNIT_FIELDS):
            column = batch.text.take(pa.array(np.arange(index, len(batch.text), count)))
            table = table.set_column(table.schema.get_field_index(field), field, column)
        return table
    messages = table["messages"].combine_chunks()
    values = pa.StructArray.from_arrays([batch.raw_roles, batch.text], fields=list(MESSAGE))
    rebuilt = pa.ListArray.from_arrays(pa.array(batch.offsets.astype(np.int32)), values,
                                       type=pa.list_(MESSAGE), mask=messages.is_null())
    return table.set_column(table.schema.get_field_index("messages"), "messages", rebuilt)


def _unit_batch(table: pa.Table, active: np.ndarray) -> Batch:
    rows = table.num_rows
    columns = [pc.fill_null(table[field].combine_chunks(), "") for field, _ in UNIT_FIELDS]
    count = len(columns)
    # row-major: question, description, answer of row 0, then of row 1, …
    order = np.arange(rows * count).reshape(count, rows).T.ravel()
    text = pa.concat_arrays([column.cast(pa.string()) for column in columns]).take(pa.array(order))
    roles = np.tile(np.array([code for _, code in UNIT_FIELDS], dtype=np.int8), rows)
    return Batch("unit", text, np.arange(0, rows * count + 1, count, dtype=np.int64), roles, active)


def _dialogue_batch(table: pa.Table, active: np.ndarray) -> Batch:
    messages = table["messages"].combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(messages), 0).to_numpy(zero_copy_only=False)
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    flat = pc.list_flatten(messages)
    raw_roles = flat.field("role")
    text = pc.fill_null(flat.field("content"), "")
    roles = np.full(len(flat), OTHER, dtype=np.int8)
    for name, code in ROLE_CODES.items():
        roles[pc.equal(raw_roles, name).fill_null(False).to_numpy(zero_copy_only=False)] = code
    return Batch("dialogue", text, offsets, roles, active, raw_roles=raw_roles)
