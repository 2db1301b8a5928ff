"""The filter contract: a filter looks at a Batch and returns a Verdict; the chain does the rest.

A Verdict names, for each row it drops, a reason and a human-readable detail (only for rows still
active: a row already rejected keeps its first reason). A filter that rewrites text (redaction,
forum-word replacement) returns the new segment column; one that repairs a dialogue's structure
(soulray/filters/repair.py) returns a whole new Batch; one that measures returns per-row scores, which
kept rows carry into the published data, and named per-row flags (a review screen's hits, the repairs
and normalisations made), which they carry in `flags`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pyarrow as pa

from soulray.filters.batch import Batch
from soulray.settings import StrictModel


@dataclass(frozen=True)
class Verdict:
    drops: dict[int, tuple[str, str]] = field(default_factory=dict)  # row → (reason, detail)
    text: pa.Array | None = None  # new text of every segment, or None when unchanged
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # name → float64 per row
    flags: dict[str, np.ndarray] = field(default_factory=dict)  # name → bool per row, into the row's `flags`
    batch: Batch | None = None  # a restructured batch (segments dropped or merged), or None when unchanged


class FilterSettings(StrictModel):
    """A filter's entry in a chain config: `name` picks the filter (each subclass narrows it to the
    filter's name as a Literal); the other fields are the filter's keyword-only constructor arguments."""

    name: str


class Filter(ABC):
    """One rule. Subclasses set `name` (the config's discriminator) and `settings` (their FilterSettings,
    defined beside them), implement `apply`, and are registered in soulray/filters/registry.py."""

    name: ClassVar[str]
    settings: ClassVar[type[FilterSettings]]
    kinds: ClassVar[tuple[str, ...]] = ("unit", "dialogue")  # which tables the rule makes sense on

    @abstractmethod
    def apply(self, batch: Batch) -> Verdict:
        """Decide on every active row of `batch`; never modify the batch."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


def drops_where(batch: Batch, mask: np.ndarray, reason: str | np.ndarray,
                detail: Callable[[int], str]) -> dict[int, tuple[str, str]]:
    """Drops for the active rows in `mask`. `reason` is one name or a per-row array of names; the
    detail is built in Python only for the rows dropped, which are few."""
    rows = np.flatnonzero(mask & batch.active)
    if isinstance(reason, str):
        return {int(row): (reason, detail(int(row))) for row in rows}
    return {int(row): (str(reason[row]), detail(int(row))) for row in rows}


def shorten(text: str, limit: int = 40) -> str:
    """A short quote of a text for a reject detail: enough to find it, not a copy of it."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
