"""LSH banding: which (bands, rows) to use, and each signature's band keys.

Two texts become candidates when all `rows` values of at least one of `bands` bands agree, which for
Jaccard similarity s happens with probability 1 - (1 - s**rows)**bands. datasketch's MinHashLSH picks
(bands, rows) minimising the weighted areas of false positives (below the threshold) and false
negatives (above it) under that curve; `optimal_params` is the same search, integral and weights
(datasketch/lsh.py `_optimal_param`, version 2.0.0), so an index built with the same threshold,
num_perm and weights has the same bands.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

_MASK64 = np.uint64(0xFFFF_FFFF_FFFF_FFFF)


@lru_cache(maxsize=64)
def optimal_params(threshold: float, num_perm: int, weights: tuple[float, float] = (0.5, 0.5)) -> tuple[int, int]:
    """(bands, rows) as datasketch's `_optimal_param(threshold, num_perm, *weights)` chooses them."""
    from scipy.integrate import quad

    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    false_positive_weight, false_negative_weight = weights
    best, best_error = (0, 0), float("inf")
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            false_positive, _ = quad(_candidate_probability, 0.0, threshold, args=(bands, rows))
            false_negative, _ = quad(_miss_probability, threshold, 1.0, args=(bands, rows))
            error = false_positive * false_positive_weight + false_negative * false_negative_weight
            if error < best_error:
                best, best_error = (bands, rows), error
    return best


def _candidate_probability(similarity: float, bands: int, rows: int) -> float:
    return 1 - (1 - similarity ** float(rows)) ** float(bands)


def _miss_probability(similarity: float, bands: int, rows: int) -> float:
    return 1 - _candidate_probability(similarity, bands, rows)


def band_keys(signatures: np.ndarray, *, bands: int, rows: int) -> np.ndarray:
    """(N, bands) uint64: a 64-bit hash of (band index, the band's `rows` values) per signature.

    Equal bands give equal keys; unequal bands collide with probability 2**-64 per pair, and the
    clustering step compares the bands themselves before trusting a shared key (`bucket_pairs`).
    datasketch keys the same band by its bytes, big-endian (`MinHashLSH._byteswap`)."""
    if bands * rows > signatures.shape[1]:
        raise ValueError(f"bands x rows = {bands} x {rows} exceeds num_perm {signatures.shape[1]}")
    values = signatures[:, : bands * rows].reshape(len(signatures), bands, rows).astype(np.uint64)
    keys = np.broadcast_to(np.arange(bands, dtype=np.uint64) * np.uint64(0x9E37_79B9_7F4A_7C15),
                           (len(signatures), bands)).copy()
    with np.errstate(over="ignore"):
        for column in range(rows):
            keys = _mix64(keys ^ values[:, :, column])
    return keys


def _mix64(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser (Steele et al. 2014): every input bit affects every output bit."""
    values = values + np.uint64(0x9E37_79B9_7F4A_7C15)
    values = (values ^ (values >> np.uint64(30))) * np.uint64(0xBF58_476D_1CE4_E5B9)
    values = (values ^ (values >> np.uint64(27))) * np.uint64(0x94D0_49BB_1331_11EB)
    return values ^ (values >> np.uint64(31))
