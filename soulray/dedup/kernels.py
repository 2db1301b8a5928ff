"""Compiled MinHash kernels: shingle, hash, permute and keep the minimum in one pass per shingle.

Why compiled: numpy has to make every step a pass over a whole array, so SHA-1 alone was ~1,400 array
operations per chunk of shingles (~600 ns a shingle); here each shingle's bytes are hashed where they
lie, mixed, and folded into its text's running minima, with no intermediate arrays. The
permute-and-min loop over uint32 lanes is what LLVM vectorises (~15 ns for 128 permutations with AVX2).

SHA-1's compression function comes from the libcrypto this Python's own `hashlib` loaded (OpenSSL's
`SHA1_Transform`, which uses the CPU's SHA instructions where there are any: ~70 ns a shingle on this
machine against ~220 ns for the same function compiled from Python). Where that library cannot be
found or fails a self-check (macOS, other builds), or with SOULRAY_DEDUP_SHA1=portable, a compiled
FIPS 180-4 implementation below does the same work. Both are checked against hashlib in the tests.

Everything here must match datasketch 2.0 bit for bit (minhash.py says what). The compression function
is passed to the kernels as an address (either library's, or the portable one's as a C callback), so
the compiled kernels do not depend on which: numba caches them beside this file (`cache=True`) and a
process loads them in well under a second instead of compiling them (~8 s).
"""

from __future__ import annotations

import ctypes
import hashlib
import os

import numpy as np
from llvmlite import ir
from numba import carray, cfunc, njit, types
from numba.extending import intrinsic

SHA1 = 0
MURMUR3 = 1

_M32 = 0xFFFF_FFFF  # the arithmetic runs in int64 (numba turns uint64 mixed with int64 into float64)
_SHA1_IV = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0)
_CTX_WORDS = 32  # OpenSSL's SHA_CTX is 96 bytes: h0..h4 first, as unsigned ints


# ---- SHA-1 compression: OpenSSL's, or the portable one --------------------------------------------

def _openssl_transform():
    """`SHA1_Transform(SHA_CTX *, const unsigned char *block)` from the libcrypto hashlib loaded, if it
    hashes correctly; else None. Found through /proc/self/maps: the library already in this process,
    never one picked by name (loading an unversioned libcrypto aborts some platforms)."""
    if os.environ.get("SOULRAY_DEDUP_SHA1") == "portable":
        return None
    try:
        import _hashlib  # noqa: F401  (loads libcrypto)

        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libcrypto" in line.rsplit("/", 1)[-1]}
        for path in sorted(paths):
            transform = ctypes.CDLL(path).SHA1_Transform
            transform.argtypes, transform.restype = [ctypes.c_void_p, ctypes.c_void_p], None
            if _transform_is_sha1(transform):
                return transform
    except (OSError, AttributeError, ImportError):
        pass
    return None


def _transform_is_sha1(transform) -> bool:
    for message in (b"", b"abc", "你好吗朋友".encode(), bytes(range(55))):
        context = np.zeros(_CTX_WORDS, np.uint32)
        context[:5] = _SHA1_IV
        transform(context.ctypes.data, _padded_block(message).ctypes.data)
        if int(context[0]).to_bytes(4, "big") != hashlib.sha1(message).digest()[:4]:
            return False
    return True


def _padded_block(message: bytes) -> np.ndarray:
    block = np.zeros(64, np.uint8)
    block[: len(message)] = np.frombuffer(message, np.uint8)
    block[len(message)] = 0x80
    block[56:] = np.frombuffer((len(message) * 8).to_bytes(8, "big"), np.uint8)
    return block


@njit(cache=True, inline="always")
def _rotl(value, bits):
    return ((value << bits) | (value >> (32 - bits))) & _M32


@cfunc(types.void(types.voidptr, types.voidptr), cache=True)
def _portable_transform(context_address, block_address):
    """FIPS 180-4 SHA-1 compression of one 64-byte block into context[0:5], with OpenSSL's
    SHA1_Transform's C signature."""
    context = carray(context_address, _CTX_WORDS, np.uint32)
    block = carray(block_address, 64, np.uint8)
    schedule = np.empty(80, np.int64)
    for t in range(16):
        schedule[t] = (np.int64(block[4 * t]) << 24) | (np.int64(block[4 * t + 1]) << 16) \
            | (np.int64(block[4 * t + 2]) << 8) | np.int64(block[4 * t + 3])
    for t in range(16, 80):
        schedule[t] = _rotl(schedule[t - 3] ^ schedule[t - 8] ^ schedule[t - 14] ^ schedule[t - 16], 1)
    a, b, c, d, e = (np.int64(context[0]), np.int64(context[1]), np.int64(context[2]), np.int64(context[3]),
                     np.int64(context[4]))
    for t in range(20):
        value = (_rotl(a, 5) + ((b & c) | (~b & d)) + e + 0x5A827999 + schedule[t]) & _M32
        a, b, c, d, e = value, a, _rotl(b, 30), c, d
    for t in range(20, 40):
        value = (_rotl(a, 5) + (b ^ c ^ d) + e + 0x6ED9EBA1 + schedule[t]) & _M32
        a, b, c, d, e = value, a, _rotl(b, 30), c, d
    for t in range(40, 60):
        value = (_rotl(a, 5) + ((b & c) | (b & d) | (c & d)) + e + 0x8F1BBCDC + schedule[t]) & _M32
        a, b, c, d, e = value, a, _rotl(b, 30), c, d
    for t in range(60, 80):
        value = (_rotl(a, 5) + (b ^ c ^ d) + e + 0xCA62C1D6 + schedule[t]) & _M32
        a, b, c, d, e = value, a, _rotl(b, 30), c, d
    context[0] = (context[0] + a) & _M32
    context[1] = (context[1] + b) & _M32
    context[2] = (context[2] + c) & _M32
    context[3] = (context[3] + d) & _M32
    context[4] = (context[4] + e) & _M32


@intrinsic
def _call_transform(typingctx, address, context_address, block_address):
    """transform(context, block) where transform is a C function `void (*)(void *, void *)` at
    `address` (an integer argument, not a constant: what keeps the kernels cacheable)."""
    def codegen(context, builder, signature, args):
        pointer = ir.IntType(8).as_pointer()
        function = builder.inttoptr(args[0], ir.FunctionType(ir.VoidType(), [pointer, pointer]).as_pointer())
        builder.call(function, [builder.inttoptr(args[1], pointer), builder.inttoptr(args[2], pointer)])
        return context.get_dummy_value()

    return types.void(types.intp, types.intp, types.intp), codegen


# ---- the other input hash, and datasketch's pre-mix ------------------------------------------------

@njit(cache=True, inline="always")
def _fmix32(h):
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    h ^= h >> 16
    return h


@njit(cache=True, inline="always")
def _murmur3_32(data, start, length):
    """MurmurHash3_x86_32, seed 0 (mmh3.hash(data, 0, signed=False))."""
    h = 0
    blocks = length // 4
    for index in range(blocks):
        at = start + 4 * index
        k = (np.int64(data[at]) | (np.int64(data[at + 1]) << 8) | (np.int64(data[at + 2]) << 16)
             | (np.int64(data[at + 3]) << 24))
        k = _rotl((k * 0xCC9E2D51) & _M32, 15)
        h ^= (k * 0x1B873593) & _M32
        h = _rotl(h, 13)
        h = (h * 5 + 0xE6546B64) & _M32
    k = 0
    for index in range(length - 4 * blocks - 1, -1, -1):  # the tail, little-endian
        k = (k << 8) | np.int64(data[start + 4 * blocks + index])
    k = _rotl((k * 0xCC9E2D51) & _M32, 15)
    h ^= (k * 0x1B873593) & _M32
    h ^= length
    return _fmix32(h)


# ---- the kernels (`transform`: the address of a SHA-1 compression function) -------------------------

@njit(cache=True, inline="always")
def _sha1_first_word(data, start, length, transform, context, block):
    """The first 4 bytes of SHA-1(data[start:start + length]) read little-endian (datasketch's
    sha1_hash32). Inlined into the shingle loop: as a call (five array arguments, each a struct
    passed by value) it cost ~25 ns of the ~100 ns a shingle took (now ~77)."""
    for word in range(5):
        context[word] = _SHA1_IV[word]
    blocks = (length + 9 + 63) // 64  # message, 0x80, 8-byte bit length, in whole blocks
    for index in range(blocks):
        offset = index * 64
        take = min(max(length - offset, 0), 64)
        for j in range(take):
            block[j] = data[start + offset + j]
        for j in range(take, 64):
            block[j] = 0
        if 0 <= length - offset < 64:
            block[length - offset] = 0x80
        if index == blocks - 1:
            bits = length * 8
            for j in range(8):
                block[63 - j] = (bits >> (8 * j)) & 0xFF
        _call_transform(transform, context.ctypes.data, block.ctypes.data)
    h0 = np.int64(context[0])
    return ((h0 & 0xFF) << 24) | (((h0 >> 8) & 0xFF) << 16) | (((h0 >> 16) & 0xFF) << 8) | (h0 >> 24)


@njit(cache=True, inline="always")
def _fold(data, start, length, hash_kind, transform, a, b, minima, context, block):
    """Hash one shingle, pre-mix as datasketch does, fold a*h + b (mod 2**32) into the minima."""
    if hash_kind == SHA1:
        h = _sha1_first_word(data, start, length, transform, context, block)
    else:
        h = _murmur3_32(data, start, length)
    h32 = np.uint32(_fmix32(h))
    for k in range(a.shape[0]):  # min(), not a conditional store: this is the loop LLVM vectorises
        minima[k] = min(minima[k], np.uint32(a[k] * h32 + b[k]))


@njit(cache=True)
def char_signatures(data, offsets, ngram, hash_kind, transform, a, b, out):
    """out[t] = min over the character n-grams of text t (bytes data[offsets[t]:offsets[t+1]],
    UTF-8) of the permuted hashes. Shorter than n: one shingle; empty: out[t] left as it is."""
    context, block = np.zeros(_CTX_WORDS, np.uint32), np.zeros(64, np.uint8)
    longest = 0
    for t in range(offsets.shape[0] - 1):
        longest = max(longest, offsets[t + 1] - offsets[t])
    char_starts = np.empty(longest + 1, np.int64)
    minima = np.empty(a.shape[0], np.uint32)
    for t in range(offsets.shape[0] - 1):
        low, high = offsets[t], offsets[t + 1]
        chars = 0
        for position in range(low, high):
            if data[position] & 0xC0 != 0x80:  # not a UTF-8 continuation byte: a character starts
                char_starts[chars] = position
                chars += 1
        if chars == 0:
            continue
        char_starts[chars] = high
        minima[:] = out[t]
        for first in range(chars - ngram + 1 if chars >= ngram else 1):
            start = char_starts[first]
            _fold(data, start, char_starts[min(first + ngram, chars)] - start, hash_kind, transform, a, b,
                  minima, context, block)
        out[t] = minima


@njit(cache=True)
def span_signatures(data, starts, lengths, counts, hash_kind, transform, a, b, out):
    """out[t] = min over text t's shingles, given as byte spans in text order (counts[t] of them)."""
    context, block = np.zeros(_CTX_WORDS, np.uint32), np.zeros(64, np.uint8)
    minima = np.empty(a.shape[0], np.uint32)
    shingle = 0
    for t in range(counts.shape[0]):
        if counts[t] == 0:
            continue
        minima[:] = out[t]
        for _ in range(counts[t]):
            _fold(data, starts[shingle], lengths[shingle], hash_kind, transform, a, b, minima, context, block)
            shingle += 1
        out[t] = minima


@njit(cache=True)
def span_hashes(data, starts, lengths, hash_kind, transform, out):
    """The 32-bit input hash of each byte span (before datasketch's pre-mix)."""
    context, block = np.zeros(_CTX_WORDS, np.uint32), np.zeros(64, np.uint8)
    for index in range(starts.shape[0]):
        if hash_kind == SHA1:
            out[index] = _sha1_first_word(data, starts[index], lengths[index], transform, context, block)
        else:
            out[index] = _murmur3_32(data, starts[index], lengths[index])


_OPENSSL = _openssl_transform()
SHA1_IMPLEMENTATION = "openssl" if _OPENSSL is not None else "portable"
# the address the kernels call for SHA-1's compression (the `transform` argument)
TRANSFORM = ctypes.cast(_OPENSSL, ctypes.c_void_p).value if _OPENSSL is not None else _portable_transform.address


# ---- exact Jaccard of shingle sets (verification of candidate pairs) --------------------------------

@njit(cache=True)
def char_shingle_sets(data, offsets, ngram):
    """Each text's character n-grams as a sorted set of 64-bit FNV-1a hashes of their UTF-8 bytes:
    (hashes, starts, sizes), text t's set being hashes[starts[t]:starts[t] + sizes[t]]. At 64 bits a
    collision inside a pair of 1,000-shingle texts has a chance of ~1e-13, so Jaccard over these sets
    is the Jaccard of the shingle sets themselves."""
    texts = offsets.shape[0] - 1
    longest = 0
    total = 0
    for t in range(texts):
        longest = max(longest, offsets[t + 1] - offsets[t])
        total += offsets[t + 1] - offsets[t]  # bytes: at least as many as characters, so shingles
    char_starts = np.empty(longest + 1, np.int64)
    hashes = np.empty(total, np.uint64)
    starts = np.zeros(texts, np.int64)
    sizes = np.zeros(texts, np.int64)
    base = 0
    for t in range(texts):
        chars = 0
        for position in range(offsets[t], offsets[t + 1]):
            if data[position] & 0xC0 != 0x80:  # a character starts here
                char_starts[chars] = position
                chars += 1
        char_starts[chars] = offsets[t + 1]
        count = chars - ngram + 1 if chars >= ngram else min(chars, 1)
        for first in range(count):
            h = np.uint64(0xCBF29CE484222325)
            for position in range(char_starts[first], char_starts[min(first + ngram, chars)]):
                h = (h ^ np.uint64(data[position])) * np.uint64(0x100000001B3)
            hashes[base + first] = h
        segment = np.sort(hashes[base:base + count])
        unique = 0
        for index in range(count):
            if index == 0 or segment[index] != segment[index - 1]:
                hashes[base + unique] = segment[index]
                unique += 1
        starts[t], sizes[t] = base, unique
        base += unique
    return hashes[:base], starts, sizes


@njit(cache=True)
def pair_jaccard(hashes, starts, sizes, left, right, out):
    """out[p] = |A & B| / |A | B| for the sets of texts left[p] and right[p] (1.0 for two empty sets)."""
    for p in range(left.shape[0]):
        i, j = left[p], right[p]
        a, a_end = starts[i], starts[i] + sizes[i]
        b, b_end = starts[j], starts[j] + sizes[j]
        common = 0
        while a < a_end and b < b_end:
            if hashes[a] == hashes[b]:
                common += 1
                a += 1
                b += 1
            elif hashes[a] < hashes[b]:
                a += 1
            else:
                b += 1
        union = sizes[i] + sizes[j] - common
        out[p] = common / union if union else 1.0
