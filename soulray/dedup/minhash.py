"""MinHash signatures for a whole batch of texts at once, bit-identical to datasketch 2.0.0.

What is matched (datasketch/minhash.py and hashfunc.py, version 2.0.0): `MinHash(num_perm, seed,
scheme="affine32", hashfunc=...)` updated with the UTF-8 bytes of every shingle. For each shingle the
32-bit input hash h is pre-mixed with the MurmurHash3 finalizer (`_fmix`), then permutation k gives
`a_k * h + b_k mod 2**32`, with `a_k = 2 * randint(0, 2**31) + 1` and `b_k = randint(0, 2**32)` drawn in
that order from `numpy.random.RandomState(seed)`; the signature is the minimum over shingles. An empty
shingle set leaves every value at 2**32 - 1 (datasketch's empty MinHash).

Input hash functions, named so anyone can recompute a signature with datasketch:
- "sha1_32" (default, datasketch's own default `sha1_hash32`): the first 4 bytes of SHA-1, read
  little-endian. SHA-1 is computed here with numpy over all shingles at once (one 64-byte block per
  shingle of up to 55 bytes; longer shingles go through hashlib).
- "murmur3_32": MurmurHash3_x86_32 with seed 0 (what `mmh3.hash(data, 0, signed=False)` returns);
  about 20x cheaper than SHA-1 here. Give datasketch `hashfunc=murmur3_32` from this module.

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

HashName = Literal["sha1_32", "murmur3_32"]
ShingleKind = Literal["char", "word"]

U32 = np.uint32
EMPTY_VALUE = np.uint32(0xFFFF_FFFF)
_SHA1_MAX_BYTES = 55  # one 64-byte block: message, 0x80, and the 8-byte bit length
_CHUNK_SHINGLES = 32_768  # hashing works on this many shingles at a time (fits L2 on small machines)
_GATHER_PAD = 64
_CHUNK_PERMUTE = 8_192  # shingles per (num_perm x shingles) block: 4 MB at 128 permutations


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
        data, starts, lengths, counts = self.shingle_spans(texts)
        hashes = fmix32(hash_spans(data, starts, lengths, self.hash_function))
        return self._permute_min(hashes, counts)

    def shingle_spans(self, texts: Sequence[str | None] | pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(bytes, shingle start, shingle length, shingles per text): shingles in text order."""
        if self.shingle == "word":
            return _spans_of_strings([word_shingles(text or "", self.ngram) for text in _as_pylist(texts)])
        return char_shingle_spans(texts, self.ngram)

    def _permute_min(self, hashes: np.ndarray, counts: np.ndarray) -> np.ndarray:
        out = np.full((len(counts), self.num_perm), EMPTY_VALUE, U32)
        ends = np.cumsum(counts)
        rows = np.flatnonzero(counts)
        if not len(rows):
            return out
        # (num_perm, shingles) so the min runs along contiguous memory: 3-7x faster than the transpose
        buffer = np.empty((self.num_perm, _CHUNK_PERMUTE), U32)
        a, b = self._a[:, None], self._b[:, None]
        doc_starts, doc_ends = ends[rows] - counts[rows], ends[rows]
        for start in range(0, len(hashes), _CHUNK_PERMUTE):
            stop = min(start + _CHUNK_PERMUTE, len(hashes))
            # the texts overlapping [start, stop), each cut to the chunk: one segment per text
            first, last = np.searchsorted(doc_ends, start, "right"), np.searchsorted(doc_starts, stop, "left")
            segment_starts = np.maximum(doc_starts[first:last], start) - start
            block = buffer[:, : stop - start]
            np.multiply(a, hashes[start:stop], out=block)
            np.add(block, b, out=block)
            minima = np.minimum.reduceat(block, segment_starts, axis=1)
            target = rows[first:last]
            out[target] = np.minimum(out[target], minima.T)
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


def char_shingle_spans(texts: Sequence[str | None] | pa.Array, ngram: int) -> tuple[np.ndarray, ...]:
    """Byte spans of every character n-gram of every text, without a Python loop over characters."""
    offsets, data = _utf8_buffers(texts)
    is_char_start = (data & 0xC0) != 0x80
    char_bytes = np.flatnonzero(is_char_start)  # byte position where each character starts
    char_ends = np.append(char_bytes[1:], len(data))  # texts are contiguous: a character ends where the next starts
    chars_before = np.concatenate([[0], np.cumsum(is_char_start, dtype=np.int64)])
    first_char = chars_before[offsets[:-1]]
    chars = chars_before[offsets[1:]] - first_char
    counts = np.where(chars >= ngram, chars - ngram + 1, (chars > 0).astype(np.int64))
    text_of = np.repeat(np.arange(len(counts)), counts)
    position = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    start_char = first_char[text_of] + position
    last_char = np.minimum(start_char + ngram - 1, (first_char + chars - 1)[text_of])
    starts = char_bytes[start_char]
    return data, starts, char_ends[last_char] - starts, counts


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
    # gathers read whole 8-byte words, up to one word past a span's end
    data = np.concatenate([data, np.zeros(_GATHER_PAD + (-len(data)) % 8, np.uint8)])
    for start in range(0, len(starts), _CHUNK_SHINGLES):
        piece = slice(start, start + _CHUNK_SHINGLES)
        if name == "sha1_32":
            out[piece] = _sha1_32_spans(data, starts[piece], lengths[piece])
        else:
            out[piece] = _murmur3_32_spans(data, starts[piece], lengths[piece])
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


def _gather(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray, width: int) -> np.ndarray:
    """(N, width) bytes of each span, zero past its end; `width` a multiple of 8. `data` is padded to
    whole 8-byte words plus _GATHER_PAD bytes. Each 8-byte piece is two aligned word loads and shifts
    (a row copy per span through numpy's strided indexing costs several times more)."""
    aligned = data.view(np.uint64)
    out = np.empty((len(starts), width // 8), np.uint64)
    for column in range(width // 8):
        position = starts + 8 * column
        index, shift = position >> 3, ((position & 7) * 8).astype(np.uint64)
        word = aligned[index] >> shift
        word |= aligned[index + 1] << (np.uint64(64) - shift)  # numpy gives 0 for a shift by 64
        keep = np.clip(lengths - 8 * column, 0, 8).astype(np.uint64) * np.uint64(8)  # bits of this span in it
        with np.errstate(over="ignore"):
            word &= (np.uint64(1) << keep) - np.uint64(1)  # keep = 64: 0 - 1 wraps to all ones
        out[:, column] = word
    return out.view(np.uint8)  # little-endian words: bytes in order


def _sha1_32_spans(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    out = np.empty(len(starts), U32)
    long = lengths > _SHA1_MAX_BYTES
    for index in np.flatnonzero(long):  # rare: word shingles or a large n
        out[index] = sha1_32(data[starts[index]:starts[index] + lengths[index]].tobytes())
    short = ~long
    if short.any():
        starts, lengths = starts[short], lengths[short]
        width = (int(lengths.max()) + 1 + 7) // 8 * 8  # message and the 0x80 pad byte, in whole 8-byte words
        block = _gather(data, starts, lengths, width)
        block[np.arange(len(starts)), lengths] = 0x80
        words = block.view(">u4").astype(U32)
        schedule: list[np.ndarray | int] = [np.ascontiguousarray(words[:, j]) for j in range(width // 4)]
        schedule += [0] * (15 - len(schedule)) + [(lengths * 8).astype(U32)]
        out[short] = _sha1_first_word(schedule).byteswap()
    return out


_SHA1_IV = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0)
_SHA1_K = (0x5A827999, 0x6ED9EBA1, 0x8F1BBCDC, 0xCA62C1D6)


# Constants as 0-d arrays: numpy takes them in about half the time of numpy scalars (SHA-1 makes ~1,400
# calls per chunk, so call overhead matters).
_SHIFTS = {bits: np.array(bits, U32) for bits in range(33)}
_ROUND_K = [np.array(_SHA1_K[t // 20], U32) for t in range(80)]


def _rotl(value: np.ndarray, bits: int, out: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    np.left_shift(value, _SHIFTS[bits], out=scratch)
    np.right_shift(value, _SHIFTS[32 - bits], out=out)
    return np.bitwise_or(out, scratch, out=out)


def _sha1_first_word(schedule: list) -> np.ndarray:
    """SHA-1 (FIPS 180-4) of one padded block per lane, returning only the digest's first word.
    `schedule` holds the 16 message words, a plain int where every lane has the same word (zero
    padding, mostly), so the message expansion skips work on them."""
    lanes = next(len(word) for word in schedule if isinstance(word, np.ndarray))
    ring = list(schedule)
    a, b, c, d, e = (np.full(lanes, value, U32) for value in _SHA1_IV)
    f, scratch, rotated = np.empty(lanes, U32), np.empty(lanes, U32), np.empty(lanes, U32)
    for t in range(80):
        if t >= 16:  # expand the message in place: W[t] = rotl1(W[t-3] ^ W[t-8] ^ W[t-14] ^ W[t-16])
            ring[t % 16] = _expand(ring[(t - 3) % 16], ring[(t - 8) % 16], ring[(t - 14) % 16], ring[t % 16], scratch)
        if t < 20:
            np.bitwise_xor(c, d, out=f)
            np.bitwise_and(f, b, out=f)
            np.bitwise_xor(f, d, out=f)
        elif 40 <= t < 60:
            np.bitwise_or(b, c, out=f)
            np.bitwise_and(f, d, out=f)
            np.bitwise_and(b, c, out=scratch)
            np.bitwise_or(f, scratch, out=f)
        else:
            np.bitwise_xor(b, c, out=f)
            np.bitwise_xor(f, d, out=f)
        np.add(f, e, out=f)
        np.add(f, _rotl(a, 5, rotated, scratch), out=f)
        word = ring[t % 16]
        if isinstance(word, np.ndarray):
            np.add(f, word, out=f)
            np.add(f, _ROUND_K[t], out=f)
        else:
            np.add(f, np.array((_SHA1_K[t // 20] + word) & 0xFFFF_FFFF, U32), out=f)
        _rotl(b, 30, e, scratch)  # e's buffer is free: it becomes the new c
        a, b, c, d, e, f = f, a, e, c, d, b
    return a + U32(_SHA1_IV[0])


def _expand(w3, w8, w14, w16, scratch: np.ndarray):
    arrays = [word for word in (w3, w8, w14, w16) if isinstance(word, np.ndarray)]
    constant = 0
    for word in (w3, w8, w14, w16):
        if not isinstance(word, np.ndarray):
            constant ^= word
    if not arrays:
        return ((constant << 1) | (constant >> 31)) & 0xFFFF_FFFF
    value = arrays[0] ^ arrays[1] if len(arrays) > 1 else arrays[0].copy()
    for word in arrays[2:]:
        np.bitwise_xor(value, word, out=value)
    if constant:
        np.bitwise_xor(value, np.array(constant, U32), out=value)
    return _rotl(value, 1, value, scratch)


def _murmur3_32_spans(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    blocks = lengths // 4
    most = int(blocks.max(initial=0))
    words = _gather(data, starts, lengths, (most + 1) * 4 + 7 & ~7).view("<u4")  # blocks, then the tail word
    h = np.zeros(len(starts), U32)
    for column in range(most):
        mixed = h ^ _murmur3_scramble(words[:, column])
        mixed = (mixed << _SHIFTS[13]) | (mixed >> _SHIFTS[19])
        mixed *= _MURMUR_5
        mixed += _MURMUR_N
        # a lane whose text ran out of whole blocks keeps its hash (all lanes, for same-length shingles)
        h = mixed if column < int(blocks.min()) else np.where(column < blocks, mixed, h)
    h ^= _murmur3_scramble(words[np.arange(len(starts)), blocks])  # the tail, zero-padded (0 if empty)
    h ^= lengths.astype(U32)
    return fmix32(h)


_MURMUR_C1, _MURMUR_C2 = np.array(0xCC9E2D51, U32), np.array(0x1B873593, U32)
_MURMUR_5, _MURMUR_N = np.array(5, U32), np.array(0xE6546B64, U32)


def _murmur3_scramble(k: np.ndarray) -> np.ndarray:
    k = k * _MURMUR_C1
    k = (k << _SHIFTS[15]) | (k >> _SHIFTS[17])
    k *= _MURMUR_C2
    return k
