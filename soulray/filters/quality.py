"""Quality screens: repetition, too little Chinese, over-long turns, counselor turns that lecture.

SoulChat's prompt asks that "in one round, the length of the user's and the counselor's utterances
should follow the dialogue history and not be too long" (rule 4); these measure how far a dialogue
strays from that, and each measure is kept in the row's scores so thresholds can be judged afterwards.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from soulray.filters.base import Filter, FilterSettings, Verdict, drops_where
from soulray.filters.batch import ASSISTANT, USER, Batch
from soulray.repair import TurnLimits


class RepetitionSpec(FilterSettings):
    name: Literal["repetition"]
    ngram: int = Field(10, ge=2, description="characters per n-gram")
    max_ratio: float = Field(0.2, ge=0, le=1, description="drop above this share of repeated n-grams (SMILECHAT "
                                                          "p99.5: 0.08; looping dialogues: 0.5+)")


class CjkRatioSpec(FilterSettings):
    name: Literal["cjk_ratio"]
    min_ratio: float = Field(0.5, ge=0, le=1, description="Chinese characters among letters and digits")


class TurnLengthSpec(FilterSettings):
    name: Literal["turn_length"]
    max_user_chars: int = Field(TurnLimits.max_user_chars, ge=1)
    max_first_user_chars: int = Field(TurnLimits.max_first_user_chars, ge=1,
                                      description="the first user turn carries the source question")
    max_assistant_chars: int = Field(TurnLimits.max_assistant_chars, ge=1,
                                     description="about SoulChat's 512 training output tokens")


class LengthRatioSpec(FilterSettings):
    name: Literal["length_ratio"]
    max_ratio: float = Field(8.0, gt=0, description="mean counselor turn over mean user turn (after the first)")
    min_counselor_chars: float = Field(200, ge=0, description="a counselor whose turns average fewer characters "
                                                              "is no lecturer, however short the client's replies")


# Polynomial rolling hash over code points, mod 2^64 (numpy's uint64 arithmetic wraps). An odd base is
# invertible mod 2^64, which turns prefix sums into window hashes: h(i) = (P[i+n] - P[i]) * B^-i.
_BASE = 0x9E3779B97F4A7C15
_BASE_INVERSE = pow(_BASE, -1, 2**64)
_ROW_BITS = 24  # a window's key is (row << 40) | top 40 bits of its hash: rows stay contiguous when sorted
_POWERS: dict[int, np.ndarray] = {}


def _powers(base: int, count: int) -> np.ndarray:
    """base^0 … base^(count-1) mod 2^64, computed once per process and grown as batches need."""
    cached = _POWERS.get(base)
    if cached is None or len(cached) < count:
        size = max(count, 2 * len(cached) if cached is not None else 1 << 20)
        with np.errstate(over="ignore"):
            cached = np.concatenate([[np.uint64(1)], np.cumprod(np.full(size - 1, base, dtype=np.uint64))])
        _POWERS[base] = cached
    return cached[:count]


def duplicate_ngram_ratio(batch: Batch, n: int, *, keep_one_in: int = 1) -> np.ndarray:
    """Per row: the share of its character n-grams (within one segment) that occur more than once in the
    row, counting all but the first occurrence (so "ab ab ab" scores 2/3 of its windows).

    `keep_one_in` > 1 looks only at the windows whose hash falls in the lowest 1/k of the range. Equal
    n-grams have equal hashes, so a repeat is kept or skipped with its first occurrence and the ratio
    stays an unbiased estimate, for k times less sorting."""
    codes, lengths = batch.codes, batch.lengths
    windows = len(codes) - n + 1
    if windows <= 0:
        return np.zeros(batch.num_rows)
    with np.errstate(over="ignore"):
        prefix = np.zeros(len(codes) + 1, dtype=np.uint64)
        np.cumsum(codes.astype(np.uint64) * _powers(_BASE, len(codes)), out=prefix[1:])
        hashes = (prefix[n:] - prefix[:-n]) * _powers(_BASE_INVERSE, windows)
    inside = np.arange(n, windows + n) <= np.repeat(np.cumsum(lengths), lengths)[:windows]  # within one segment
    if keep_one_in > 1:
        inside &= hashes < np.uint64(2**64 // keep_one_in)
    starts = np.flatnonzero(inside)
    window_row = batch.char_row[starts].astype(np.uint64)
    keys = np.sort((window_row << np.uint64(64 - _ROW_BITS)) | (hashes[starts] >> np.uint64(_ROW_BITS)))
    rows = (keys >> np.uint64(64 - _ROW_BITS)).astype(np.int64)
    first = np.ones(len(keys), dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    total = np.bincount(rows, minlength=batch.num_rows)
    distinct = np.bincount(rows[first], minlength=batch.num_rows)
    return np.divide(total - distinct, total, out=np.zeros(batch.num_rows), where=total > 0)


class Repetition(Filter):
    name = "repetition"
    settings = RepetitionSpec

    keep_one_in = 4  # sampled n-grams: on SMILECHAT 0.002 from exact on average (at most 0.04), same drops

    def __init__(self, *, ngram: int, max_ratio: float) -> None:
        self.ngram, self.max_ratio = ngram, max_ratio

    def apply(self, batch: Batch) -> Verdict:
        ratio = duplicate_ngram_ratio(batch, self.ngram, keep_one_in=self.keep_one_in)
        return Verdict(scores={"repetition": ratio}, drops=drops_where(
            batch, ratio > self.max_ratio, "repetition",
            lambda row: f"{ratio[row]:.0%} of {self.ngram}-character n-grams are repeats (> {self.max_ratio:.0%})"))


# Code point ranges (Unicode blocks): CJK Unified Ideographs with extension A, B-F and compatibility
# ideographs; the letters and digits of the scripts a Chinese corpus meets besides Han.
_HAN = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x2EBEF))
_OTHER_LETTERS_AND_DIGITS = ((0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A), (0xC0, 0x24F), (0x370, 0x4FF),
                             (0x3040, 0x30FF), (0xAC00, 0xD7AF), (0xFF10, 0xFF19), (0xFF21, 0xFF3A), (0xFF41, 0xFF5A))


def _classes() -> np.ndarray:
    """A lookup table over the Basic Multilingual Plane: 2 Han, 1 other letter or digit, 0 anything else."""
    table = np.zeros(0x10000, dtype=np.uint8)
    for low, high in _OTHER_LETTERS_AND_DIGITS:
        table[low:high + 1] = 1
    for low, high in _HAN:
        table[low:min(high, 0xFFFF) + 1] = 2
    return table


_CLASSES = _classes()


def _char_classes(codes: np.ndarray) -> np.ndarray:
    classes = _CLASSES[np.minimum(codes, 0xFFFF)]
    beyond = codes > 0xFFFF  # the supplementary planes: only Han extensions B-F count
    classes[beyond] = np.where((codes[beyond] >= _HAN[-1][0]) & (codes[beyond] <= _HAN[-1][1]), 2, 0)
    return classes


class CjkRatio(Filter):
    """Chinese characters among all letters and digits: a Chinese corpus, not English or number dumps."""

    name = "cjk_ratio"
    settings = CjkRatioSpec

    def __init__(self, *, min_ratio: float) -> None:
        self.min_ratio = min_ratio

    def apply(self, batch: Batch) -> Verdict:
        classes = _char_classes(batch.codes)
        char_row = batch.char_row
        han_total = np.bincount(char_row[classes == 2], minlength=batch.num_rows)
        word_total = np.bincount(char_row[classes > 0], minlength=batch.num_rows)
        ratio = np.divide(han_total, word_total, out=np.ones(batch.num_rows), where=word_total > 0)
        return Verdict(scores={"cjk_ratio": ratio}, drops=drops_where(
            batch, ratio < self.min_ratio, "low_cjk_ratio",
            lambda row: f"{ratio[row]:.0%} of letters and digits are Chinese (< {self.min_ratio:.0%})"))


class TurnLength(Filter):
    """A turn longer than its role's limit. The first user turn carries the whole source question, so
    it is held to `max_first_user_chars` instead."""

    name = "turn_length"
    settings = TurnLengthSpec
    kinds = ("dialogue",)

    def __init__(self, *, max_user_chars: int, max_first_user_chars: int, max_assistant_chars: int) -> None:
        self.max_user_chars, self.max_first_user_chars = max_user_chars, max_first_user_chars
        self.max_assistant_chars = max_assistant_chars

    def apply(self, batch: Batch) -> Verdict:
        limit = np.where(batch.role == ASSISTANT, self.max_assistant_chars,
                         np.where(batch.turn == 0, self.max_first_user_chars, self.max_user_chars))
        over = batch.lengths > limit

        def detail(row: int) -> str:
            position = int(batch.offsets[row] + np.argmax(over[batch.offsets[row]:batch.offsets[row + 1]]))
            role = "counselor" if batch.role[position] == ASSISTANT else "user"
            return (f"turn {batch.turn[position] + 1} ({role}): {batch.lengths[position]} characters "
                    f"> {limit[position]}")

        return Verdict(drops=drops_where(batch, batch.per_row_any(over), "turn_too_long", detail))


class LengthRatio(Filter):
    """Mean counselor turn length over mean user turn length (after the first user turn, which holds
    the source question): the prompt asks for short turns, a counselor who lectures breaks that. A
    ratio alone also caught short counselors answering "好的，谢谢。" (3 of the 8 SMILECHAT rejects
    averaged 131-176 characters a counselor turn), so a row drops only when the counselor's mean turn
    is also over `min_counselor_chars`."""

    name = "length_ratio"
    settings = LengthRatioSpec
    kinds = ("dialogue",)

    def __init__(self, *, max_ratio: float, min_counselor_chars: float = 0) -> None:
        self.max_ratio, self.min_counselor_chars = max_ratio, min_counselor_chars

    def apply(self, batch: Batch) -> Verdict:
        user = (batch.role == USER) & (batch.turn > 0)
        assistant = batch.role == ASSISTANT
        means = []
        for mask in (assistant, user):
            count = batch.per_row_sum(mask.astype(np.float64))
            total = batch.per_row_sum(np.where(mask, batch.lengths, 0))
            means.append(np.divide(total, count, out=np.zeros(batch.num_rows), where=count > 0))
        ratio = np.divide(means[0], means[1], out=np.zeros(batch.num_rows), where=means[1] > 0)
        return Verdict(scores={"length_ratio": ratio}, drops=drops_where(
            batch, (ratio > self.max_ratio) & (means[0] > self.min_counselor_chars), "counselor_too_long",
            lambda row: f"counselor turns average {means[0][row]:.0f} characters, {ratio[row]:.1f}x the "
                        f"user's {means[1][row]:.0f} (> {self.max_ratio:g}x)"))
