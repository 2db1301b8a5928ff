"""From candidates to decisions, on plain arrays: candidate pairs from shared buckets, optional
verification, connected components, one kept row per component.

`resolve` is the whole step for one group of rows that may be duplicates of one another (a candidate
component, or a whole small table); the Ray stage calls it once per shuffled partition.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa

from soulray.dedup.lsh import band_keys
from soulray.dedup.minhash import ShingleKind, ShingleSets, char_shingles, estimate_jaccard

Keep = Literal["lowest_record_id", "longest"]
Verify = Literal["none", "signature", "jaccard"]

REASON_EXACT = "exact_duplicate"
REASON_NEAR = "near_duplicate"
# A bucket this large (templated text) gets a chain of pairs instead of every pair: the chain keeps
# it one component without verification, and bounds the pairs verified to O(bucket size).
ALL_PAIRS_MAX_BUCKET = 64
# Before true Jaccard, a candidate must reach threshold - PREFILTER_SIGMAS standard deviations of the
# signatures' estimate (at most 0.5 / sqrt(num_perm): 0.16 below the threshold at 256 permutations). A pair at
# the threshold falls below that once in 3.5 million; most template-made candidates (Jaccard ~0.5) do, and
# their texts are never shingled.
PREFILTER_SIGMAS = 5.0


@dataclass(frozen=True)
class Members:
    """Rows that may duplicate each other. `signatures` is None for exact-only dedup; `texts` (the
    normalised texts) only when verifying by true Jaccard."""

    ordinal: np.ndarray  # int64, unique: where the row sits in the stage's input (or after it)
    record_id: list[str]
    text_length: np.ndarray  # int64, characters of the normalised text
    content_hash: np.ndarray  # (N, 2) uint64
    published: np.ndarray  # bool: from a published version (always kept, never marked)
    signatures: np.ndarray | None = None
    texts: list[str] | pa.Array | pa.ChunkedArray | None = None
    provenance: list[str] | None = None  # e.g. source file and row: orders rows with equal record_ids


@dataclass(frozen=True)
class Rules:
    threshold: float
    bands: int
    rows: int
    keep: Keep = "lowest_record_id"
    verify: Verify = "none"
    ngram: int = 5
    shingle: ShingleKind = "char"


@dataclass(frozen=True)
class Decisions:
    """One entry per row marked as a duplicate."""

    ordinal: np.ndarray
    reason: list[str]
    detail: list[str]
    keeper: np.ndarray  # ordinal of the kept row of the marked row's cluster


def resolve(members: Members, rules: Rules) -> Decisions:
    if not len(members.ordinal):
        return Decisions(ordinal=np.zeros(0, np.int64), reason=[], detail=[], keeper=np.zeros(0, np.int64))
    similarity = _Similarity(members, rules)
    labels = connected_components(len(members.ordinal), duplicate_pairs(members, rules, similarity))
    keepers = choose_keepers(labels, members, rules.keep)
    return _decisions(members, keepers, similarity)


def duplicate_pairs(members: Members, rules: Rules, similarity: _Similarity | None = None) -> np.ndarray:
    """(E, 2) index pairs the rules call duplicates: equal content, and (minhash) pairs sharing a band,
    kept only where verification finds them at or above the threshold. Their closure is the clusters."""
    pairs = exact_pairs(members.content_hash)
    if members.signatures is not None:
        candidates = bucket_pairs(members.signatures, bands=rules.bands, rows=rules.rows)
        if rules.verify == "jaccard":
            margin = PREFILTER_SIGMAS * 0.5 / np.sqrt(members.signatures.shape[1])
            estimate = estimate_jaccard(members.signatures[candidates[:, 0]], members.signatures[candidates[:, 1]])
            candidates = candidates[estimate >= rules.threshold - margin]
        if rules.verify != "none":
            similarity = similarity or _Similarity(members, rules)
            candidates = candidates[similarity(candidates) >= rules.threshold]
        pairs = np.concatenate([pairs, candidates])
    return pairs


def exact_pairs(content_hash: np.ndarray) -> np.ndarray:
    """Pairs (first row with the same content hash, each other row)."""
    if not len(content_hash):
        return np.zeros((0, 2), np.int64)
    _, first, inverse = np.unique(content_hash, axis=0, return_index=True, return_inverse=True)
    leader = first[inverse.reshape(-1)]
    rows = np.flatnonzero(leader != np.arange(len(content_hash)))
    return np.stack([leader[rows], rows], axis=1).astype(np.int64)


def bucket_pairs(signatures: np.ndarray, *, bands: int, rows: int) -> np.ndarray:
    """(E, 2) index pairs (low, high) of rows whose values agree on a whole band: every pair in a
    bucket of up to ALL_PAIRS_MAX_BUCKET rows, a chain through larger buckets. A pair whose band
    values differ (a 64-bit band key collision) is dropped."""
    if len(signatures) < 2:
        return np.zeros((0, 2), np.int64)
    keys = band_keys(signatures, bands=bands, rows=rows)
    pairs = [np.zeros((0, 2), np.int64)]
    for band in range(bands):
        order = np.argsort(keys[:, band], kind="stable")
        band_pairs = order[_pairs_of_runs(keys[order, band])]
        columns = slice(band * rows, (band + 1) * rows)
        same = (signatures[band_pairs[:, 0], columns] == signatures[band_pairs[:, 1], columns]).all(axis=1)
        pairs.append(band_pairs[same])
    pairs = np.sort(np.concatenate(pairs), axis=1)
    return np.unique(pairs, axis=0) if len(pairs) else pairs


def _pairs_of_runs(sorted_keys: np.ndarray) -> np.ndarray:
    """Position pairs within runs of equal keys of a sorted array, without a loop over runs."""
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    sizes = np.diff(np.r_[starts, len(sorted_keys)])
    out = [np.zeros((0, 2), np.int64)]
    for size in np.unique(sizes[(sizes > 1) & (sizes <= ALL_PAIRS_MAX_BUCKET)]):
        left, right = np.triu_indices(size, 1)
        run_starts = starts[sizes == size][:, None]
        out.append(np.stack([(run_starts + left).ravel(), (run_starts + right).ravel()], axis=1))
    big = starts[sizes > ALL_PAIRS_MAX_BUCKET]
    if len(big):
        big_sizes = sizes[sizes > ALL_PAIRS_MAX_BUCKET]
        first = np.repeat(big, big_sizes - 1) + np.arange(int((big_sizes - 1).sum())) - np.repeat(
            np.cumsum(big_sizes - 1) - (big_sizes - 1), big_sizes - 1)
        out.append(np.stack([first, first + 1], axis=1))
    return np.concatenate(out).astype(np.int64)


def connected_components(count: int, pairs: np.ndarray) -> np.ndarray:
    """Component label per row (union-find closure: A~B and B~C put A, B, C in one component)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components as components

    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(count, count))
    return components(graph, directed=False)[1]


def choose_keepers(labels: np.ndarray, members: Members, keep: Keep) -> np.ndarray:
    """Row index of the kept row of each row's component. Published rows win (they are already out);
    then `lowest_record_id`, or `longest` text then lowest record_id; then provenance, then ordinal."""
    record_rank = _rank(members.record_id)
    provenance_rank = _rank(members.provenance) if members.provenance is not None else np.zeros(len(labels))
    length_key = -members.text_length if keep == "longest" else np.zeros(len(labels), np.int64)
    order = np.lexsort((members.ordinal, provenance_rank, record_rank, length_key, ~members.published, labels))
    sorted_labels = labels[order]
    first_of_label = np.r_[True, sorted_labels[1:] != sorted_labels[:-1]]
    keeper_of_label = np.empty(labels.max() + 1 if len(labels) else 0, np.int64)
    keeper_of_label[sorted_labels[first_of_label]] = order[first_of_label]
    return keeper_of_label[labels]


def _rank(values: list[str]) -> np.ndarray:
    return np.unique(np.asarray(values, dtype=object), return_inverse=True)[1].reshape(-1)


def jaccard(left: str, right: str, ngram: int) -> float:
    a, b = set(char_shingles(left, ngram)), set(char_shingles(right, ngram))
    return len(a & b) / len(a | b) if a or b else 1.0


class _Similarity:
    """Similarity of member pairs as the rules measure it: true Jaccard of the shingle sets (built per
    call for the rows of its pairs, in a compiled kernel) or the signatures' estimate."""

    def __init__(self, members: Members, rules: Rules) -> None:
        self.measure = "jaccard" if rules.verify == "jaccard" else "minhash_estimate"
        self._members, self._ngram, self._shingle = members, rules.ngram, rules.shingle

    def __call__(self, pairs: np.ndarray) -> np.ndarray:
        """Only the rows in `pairs` are shingled (after the prefilter, few of a templated group's)."""
        pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
        if self.measure == "minhash_estimate":
            return estimate_jaccard(self._members.signatures[pairs[:, 0]], self._members.signatures[pairs[:, 1]])
        texts = self._members.texts
        if texts is None:
            raise ValueError("verify='jaccard' needs the members' texts")
        rows, local = np.unique(pairs, return_inverse=True)
        texts = (texts.take(pa.array(rows)) if isinstance(texts, (pa.Array, pa.ChunkedArray))
                 else [texts[row] for row in rows.tolist()])
        return ShingleSets.of(texts, self._ngram, self._shingle).jaccard(local.reshape(-1, 2))


def _decisions(members: Members, keepers: np.ndarray, similarity: _Similarity) -> Decisions:
    marked = np.flatnonzero((keepers != np.arange(len(keepers))) & ~members.published)
    exact = (members.content_hash[marked] == members.content_hash[keepers[marked]]).all(axis=1)
    near = marked[~exact]
    near_similarity = dict(zip(near.tolist(), similarity(np.stack([near, keepers[near]], axis=1)).tolist(),
                               strict=True)) if len(near) and members.signatures is not None else {}
    reasons, details = [], []
    for row, is_exact in zip(marked.tolist(), exact.tolist(), strict=True):
        keeper = keepers[row]
        if is_exact:
            value, measure = 1.0, "exact"
        else:
            value, measure = near_similarity[row], similarity.measure
        reasons.append(REASON_EXACT if is_exact else REASON_NEAR)
        details.append(json.dumps({"kept": members.record_id[keeper], "similarity": round(value, 4),
                                   "measure": measure, "kept_from": "published" if members.published[keeper]
                                   else "input"}, ensure_ascii=False))
    return Decisions(ordinal=members.ordinal[marked], reason=reasons, detail=details,
                     keeper=members.ordinal[keepers[marked]])
