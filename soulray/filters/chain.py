"""A chain: the ordered filters of one config list, run over a pipeline table; and its Ray adapter.

The chain only decides on rows whose reject mark is still empty, fills the mark (stage, reason, detail)
of the rows a filter drops, and never removes a row: the shard writer splits marked rows into the
reject table, so inputs = published + rejected holds by construction. A row dropped by one filter is
not seen by the later ones, so its reason is the first rule it broke, in chain order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from soulray.errors import ConfigError
from soulray.filters.base import Filter
from soulray.filters.batch import Batch, batch_from_table, write_back
from soulray.filters.registry import FILTERS, FilterSpec
from soulray.schema import FILTER_DIALOGUE, FILTER_SOURCE, SCORES

if TYPE_CHECKING:
    import ray.data

SOURCE_STAGE, DIALOGUE_STAGE = FILTER_SOURCE, FILTER_DIALOGUE
FLAGS_TYPE = pa.list_(pa.string())


class Chain:
    def __init__(self, filters: list[Filter], *, stage: str, kind: str) -> None:
        for item in filters:
            if kind not in item.kinds:
                raise ConfigError(f"filter {item.name!r} works on {' and '.join(item.kinds)} rows, not {kind} rows")
        self.filters, self.stage, self.kind = list(filters), stage, kind

    def __call__(self, table: pa.Table) -> pa.Table:
        """`table` (WORKING_UNIT or WORKING_DIALOGUE) with text rewritten, drops marked and, for
        dialogues, every row's scores and flags filled in. The input table is not modified."""
        if not self.filters or table.num_rows == 0:
            return table
        batch = batch_from_table(table, self.kind)
        drops: dict[int, tuple[str, str]] = {}
        scores: dict[str, np.ndarray] = {}
        flags: dict[str, np.ndarray] = {}
        text_changed = False
        for item in self.filters:
            verdict = item.apply(batch)
            if verdict.drops:
                drops.update(verdict.drops)
                active = batch.active.copy()
                active[list(verdict.drops)] = False
                batch = _replace(batch, active=active)
            if verdict.batch is not None:
                batch, text_changed = _replace(verdict.batch, active=batch.active), True
            if verdict.text is not None:
                batch, text_changed = _replace(batch, text=verdict.text), True
            scores.update(verdict.scores)
            for name, rows in verdict.flags.items():
                flags[name] = flags[name] | rows if name in flags else rows
        out = write_back(table, batch) if text_changed else table
        out = _mark(out, drops, self.stage)
        return _with_scores(out, scores, flags) if self.kind == "dialogue" else out


def build_chain(specs: list[FilterSpec], *, stage: str, kind: str) -> Chain:
    """The chain of filters named by config `specs`, in their order."""
    filters = []
    for spec in specs:
        params = {field: getattr(spec, field) for field in type(spec).model_fields if field != "name"}
        filters.append(FILTERS[spec.name](**params))
    return Chain(filters, stage=stage, kind=kind)


# -- Ray adapter ------------------------------------------------------------------------------------
def filter_batch(batch: pa.Table, *, chain: Chain) -> pa.Table:
    return chain(batch)


def apply_chain(dataset: ray.data.Dataset, chain: Chain) -> ray.data.Dataset:
    """The chain as a map over whole blocks (no re-batching, so Ray fuses it with the stage before)."""
    if not chain.filters:
        return dataset
    return dataset.map_batches(filter_batch, fn_kwargs={"chain": chain}, batch_size=None, batch_format="pyarrow")


# -- helpers ------------------------------------------------------------------------------------------
def _replace(batch: Batch, **changes: object) -> Batch:
    """A new Batch that keeps the cached per-segment facts the change does not affect."""
    from dataclasses import replace

    new = replace(batch, **changes)
    keep = ("row", "turn") if "text" in changes else ("row", "turn", "lengths", "codes", "char_row")
    for name in keep:
        if name in batch.__dict__:
            new.__dict__[name] = batch.__dict__[name]
    return new


def _mark(table: pa.Table, drops: dict[int, tuple[str, str]], stage: str) -> pa.Table:
    if not drops:
        return table
    columns = {name: table[name].to_numpy(zero_copy_only=False).astype(object)
               for name in ("reject_stage", "reject_reason", "reject_detail")}
    for row, (reason, detail) in drops.items():
        columns["reject_stage"][row], columns["reject_reason"][row], columns["reject_detail"][row] = stage, reason, detail
    for name, values in columns.items():
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(values, pa.string()))
    return table


def _with_scores(table: pa.Table, scores: dict[str, np.ndarray], flags: dict[str, np.ndarray]) -> pa.Table:
    rows = table.num_rows
    if scores:
        unknown = sorted(set(scores) - {field.name for field in SCORES})
        if unknown:
            raise ValueError(f"scores {unknown} are not fields of soulray.schema.SCORES; add them there")
        fields = [pa.array(np.asarray(scores[field.name], dtype=np.float64)) if field.name in scores
                  else pa.nulls(rows, field.type) for field in SCORES]
        column = pa.StructArray.from_arrays(fields, fields=list(SCORES))
        table = table.set_column(table.schema.get_field_index("scores"), "scores", column)
    if flags:
        # flags set before the chain (the parser's repairs) stay, then this chain's, by name
        names = sorted(flags)
        before = table["flags"].to_pylist()
        values = [(before[row] or []) + [name for name in names if flags[name][row] and name not in (before[row] or [])]
                  for row in range(rows)]
        table = table.set_column(table.schema.get_field_index("flags"), "flags",
                                 pa.array([value or None for value in values], FLAGS_TYPE))
    return table
