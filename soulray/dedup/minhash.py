"""MinHash signatures for a whole batch of texts at once, bit-identical to datasketch 2.0.0.

What is matched (datasketch/minhash.py and hashfunc.py, version 2.0.0): `MinHash(num_perm, seed,
scheme="affine32", hashfunc=...)` updated with the UTF-8 bytes of every shingle. For each shingle the
32-bit input hash h is pre-mixed with the MurmurHash3 finalizer (`_fmix`), then permutation k gives
`a_k * h + b_k mod 2**32`, with `a_k = 2 * randint(0, 2**31) + 1` and `b_k = randint(0, 2**32)` drawn in
that order from `numpy.random.RandomState(seed)`; the signature is the minimum over shingles. An empty
shingle set leaves every value at 2**32 - 1 (datasketch's empty MinHash).

Input hash functions, named so anyone can recompute a signature with datasketch:
- "sha1_32" (default, datasketch's own default `sha1_hash32`): the first 4 bytes of SHA-1, read
  little-endian.
- "murmur3_32": MurmurHash3_x86_32 with seed 0 (what `mmh3.hash(data, 0, signed=False)` returns);
  about 3x cheaper than SHA-1 here. Give datasketch `hashfunc=murmur3_32` from this module.

The work runs in compiled kernels (kernels.py): each shingle is hashed where its bytes lie and folded into
its text's minima at once, so no (shingles x num_perm) array is ever built.

Shingles: character n-grams of the text (code points) by default, or n-grams of jieba words joined by
one space. A text shorter than n gives one shingle, itself; an empty text gives none.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa

from soulray.dedup import kernels

HashName = Literal["sha1_32", "murmur3_32"]
ShingleKind = Literal["char", "word"]

U32 = np.uint32
EMPTY_VALUE = np.uint32(0xFFFF_FFFF)
_HASH_KIND = {"sha1_32": kernels.SHA1, "murmur3_32": kernels.MURMUR3}


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch 2.0's affine32 parameters (a odd, so each permutation is a bijection on 32 bits)."""
    generator = np.random.RandomState(seed)
    a = generator.randint(0, 1 << 31, num_perm, dtype=U32) * U32(2) + U32(1)
    b = generator.randint(0, 1 << 32, num_perm, dtype=U32)
    return a, b


def fmix32(values: np.ndarray) -> np.ndarray:
    """The MurmurHash3 finalizer, as datasketch applies it to every input hash."""
    values = values ^ (values >> U32(16))
    values = values * U32(0x85EBCA6B)
    values ^= values >> U32(13)
    values *= U32(0xC2B2AE35)
    values ^= values >> U32(16)
    return values


@dataclass(frozen=True)
class MinHasher:
    """Turns texts into (N, num_perm) uint32 signatures. Build once per worker (jieba loads its
    dictionary on first use, about a second)."""

    num_perm: int = 128
    seed: int = 1
    ngram: int = 5
    shingle: ShingleKind = "char"
    hash_function: HashName = "sha1_32"
    _a: np.ndarray = field(init=False, repr=False, compare=False)
    _b: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.num_perm < 1 or self.ngram < 1:
            raise ValueError(f"num_perm and ngram must be positive (got {self.num_perm}, {self.ngram})")
        if self.hash_function not in ("sha1_32", "murmur3_32"):
            raise ValueError(f"unknown hash_function {self.hash_function!r} (sha1_32 or murmur3_32)")
        a, b = permutations(self.num_perm, self.seed)
        object.__setattr__(self, "_a", a)
        object.__setattr__(self, "_b", b)

    def signatures(self, texts: Sequence[str | None] | pa.Array) -> np.ndarray:
        """(N, num_perm) uint32: datasketch's `MinHash(...).hashvalues` of each text's shingles."""
        texts = texts if isinstance(texts, (pa.Array, pa.ChunkedArray)) else pa.array(list(texts), pa.large_string())
        out = np.full((len(texts), self.num_perm), EMPTY_VALUE, U32)
        kind = _HASH_KIND[self.hash_function]
        if self.shingle == "word":
            data, starts, lengths, counts = _spans_of_strings([word_shingles(text or "", self.ngram)
                                                               for text in _as_pylist(texts)])
            kernels.span_signatures(data, starts, lengths, counts, kind, kernels.TRANSFORM, self._a, self._b, out)
        else:
            offsets, data = _utf8_buffers(texts)
            kernels.char_signatures(data, offsets, self.ngram, kind, kernels.TRANSFORM, self._a, self._b, out)
        return out


@dataclass(frozen=True)
class ShingleSets:
    """The character n-gram sets of many texts, built once, for exact Jaccard of any pairs of them
    (verifying LSH candidates). Sets of 64-bit hashes of the shingles (kernels.char_shingle_sets)."""

    hashes: np.ndarray
    starts: np.ndarray
    sizes: np.ndarray

    @classmethod
    def of(cls, texts: Sequence[str | None] | pa.Array, ngram: int, shingle: ShingleKind = "char") -> ShingleSets:
        """The shingle sets MinHasher(ngram=ngram, shingle=shingle) hashes: verification must compare
        the same sets the signatures estimate."""
        if shingle == "word":
            return cls._of_words(texts, ngram)
        offsets, data = _utf8_buffers(texts)
        return cls(*kernels.char_shingle_sets(data, offsets, ngram))

    @classmethod
    def _of_words(cls, texts: Sequence[str | None] | pa.Array, ngram: int) -> ShingleSets:
        sets = [np.unique(np.array([int.from_bytes(hashlib.blake2b(item.encode("utf-8"), digest_size=8).digest(),
                                                   "little") for item in word_shingles(text or "", ngram)],
                                   np.uint64)) for text in _as_pylist(texts)]
        sizes = np.array([len(item) for item in sets], np.int64)
        hashes = np.concatenate(sets) if sets else np.zeros(0, np.uint64)
        return cls(hashes, np.cumsum(sizes) - sizes, sizes)

    def jaccard(self, pairs: np.ndarray) -> np.ndarray:
        """Jaccard of the texts in each (left, right) row of `pairs` (same as `jaccard` below: 1.0 for
        two empty texts)."""
        pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
        out = np.empty(len(pairs), np.float64)
        kernels.pair_jaccard(self.hashes, self.starts, self.sizes, np.ascontiguousarray(pairs[:, 0]),
                             np.ascontiguousarray(pairs[:, 1]), out)
        return out


def to_lean_minhashes(signatures: np.ndarray, *, seed: int = 1) -> list:
    """datasketch LeanMinHash objects for signatures (for MinHashLSH, jaccard, serialisation)."""
    from datasketch import LeanMinHash

    return [LeanMinHash(seed=seed, hashvalues=row, scheme="affine32") for row in signatures]


def estimate_jaccard(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Share of equal signature values, row by row (datasketch's MinHash.jaccard)."""
    return np.count_nonzero(left == right, axis=-1) / left.shape[-1]


# ---- shingles ----------------------------------------------------------------------------------

def char_shingles(text: str, ngram: int) -> list[str]:
    """The reference definition the vectorised spans follow (tests and benchmarks use it)."""
    if not text:
        return []
    if len(text) < ngram:
        return [text]
    return [text[index:index + ngram] for index in range(len(text) - ngram + 1)]


def word_shingles(text: str, ngram: int) -> list[str]:
    """n-grams of jieba words (whitespace tokens dropped), joined by one space."""
    import jieba

    words = [word for word in jieba.lcut(text) if word.strip()]
    if not words:
        return []
    if len(words) < ngram:
        return [" ".join(words)]
    return [" ".join(words[index:index + ngram]) for index in range(len(words) - ngram + 1)]


def _spans_of_strings(shingle_lists: list[list[str]]) -> tuple[np.ndarray, ...]:
    counts = np.array([len(shingles) for shingles in shingle_lists], np.int64)
    encoded = [shingle.encode("utf-8") for shingles in shingle_lists for shingle in shingles]
    lengths = np.array([len(item) for item in encoded], np.int64)
    starts = np.cumsum(lengths) - lengths
    return np.frombuffer(b"".join(encoded), np.uint8), starts, lengths, counts


def _as_pylist(texts: Sequence[str | None] | pa.Array) -> list:
    if isinstance(texts, (pa.Array, pa.ChunkedArray)):
        return texts.to_pylist()
    return list(texts)


def _utf8_buffers(texts: Sequence[str | None] | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (int64, len N+1, starting at 0) and UTF-8 bytes of the texts; null counts as ''."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if not isinstance(texts, pa.Array):
        texts = pa.array(list(texts), pa.large_string())
    import pyarrow.compute as pc

    texts = pc.fill_null(texts.cast(pa.large_string()), "")
    _, offset_buffer, data_buffer = texts.buffers()
    offsets = np.frombuffer(offset_buffer, np.int64, len(texts) + 1, texts.offset * 8)
    data = np.frombuffer(data_buffer, np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
    data = data[offsets[0]:offsets[-1]]
    return offsets - offsets[0], data


# ---- input hash functions ------------------------------------------------------------------------

def hash_spans(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray, name: HashName) -> np.ndarray:
    """The 32-bit input hash of every byte span, as datasketch's hashfunc would return it."""
    out = np.empty(len(starts), U32)
    kernels.span_hashes(data, np.asarray(starts, np.int64), np.asarray(lengths, np.int64), _HASH_KIND[name],
                        kernels.TRANSFORM, out)
    return out


def sha1_32(data: bytes) -> int:
    """datasketch.hashfunc.sha1_hash32, restated: the first 4 SHA-1 bytes, little-endian."""
    return struct.unpack("<I", hashlib.sha1(data).digest()[:4])[0]


def murmur3_32(data: bytes, seed: int = 0) -> int:
    """MurmurHash3_x86_32 in plain Python: the reference for the vectorised version and the
    `hashfunc` to give datasketch (slow; `mmh3.hash(data, 0, signed=False)` is the same function)."""
    mask = 0xFFFF_FFFF
    h = seed & mask
    blocks = len(data) // 4
    for (k,) in struct.iter_unpack("<I", data[: blocks * 4]):
        k = (k * 0xCC9E2D51) & mask
        k = ((k << 15) | (k >> 17)) & mask
        h ^= (k * 0x1B873593) & mask
        h = ((h << 13) | (h >> 19)) & mask
        h = (h * 5 + 0xE6546B64) & mask
    k = int.from_bytes(data[blocks * 4:], "little")
    k = (k * 0xCC9E2D51) & mask
    k = ((k << 15) | (k >> 17)) & mask
    h ^= (k * 0x1B873593) & mask
    h ^= len(data)
    return int(fmix32(np.array([h], U32))[0])
