"""Signatures must equal datasketch 2.0's MinHash bit for bit, for the same shingles."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from datasketch import LeanMinHash, MinHash, MinHashLSH
from datasketch.hashfunc import sha1_hash32

from soulray.dedup.minhash import (
    EMPTY_VALUE,
    MinHasher,
    char_shingles,
    hash_spans,
    murmur3_32,
    permutations,
    to_lean_minhashes,
    word_shingles,
)


def datasketch_signature(shingles: list[str], *, num_perm: int = 128, seed: int = 1, hashfunc=None) -> np.ndarray:
    kwargs = {"hashfunc": hashfunc} if hashfunc else {}
    minhash = MinHash(num_perm=num_perm, seed=seed, **kwargs)
    minhash.update_batch([shingle.encode("utf-8") for shingle in shingles])
    assert minhash.scheme == "affine32"  # the 2.0 default we claim to match
    return minhash.hashvalues


def random_texts(rng: np.random.Generator, count: int) -> list[str]:
    """Chinese, ASCII, 4-byte characters (emoji, CJK extension B), mixed, of every short length."""
    alphabets = ["你我他的了是不在有人这中大为上个国", "abcdefghij ,.!?", "😀🙂👍𠀀𠀁", "éüßñ"]
    texts = []
    for index in range(count):
        alphabet = "".join(alphabets[: 1 + index % len(alphabets)])
        length = int(rng.integers(0, 40)) if index % 3 else int(rng.integers(0, 6))
        texts.append("".join(alphabet[int(i)] for i in rng.integers(0, len(alphabet), length)))
    return texts


def test_permutations_are_datasketchs():
    for num_perm, seed in ((128, 1), (64, 42), (256, 7)):
        a, b = permutations(num_perm, seed)
        reference = MinHash(num_perm=num_perm, seed=seed).permutations
        assert np.array_equal(a, reference[0]) and np.array_equal(b, reference[1])


@pytest.mark.parametrize("ngram", [1, 3, 5, 9])
def test_char_signatures_equal_datasketch_on_random_texts(ngram):
    texts = random_texts(np.random.default_rng(ngram), 120)
    signatures = MinHasher(ngram=ngram).signatures(texts)
    for text, signature in zip(texts, signatures, strict=True):
        assert np.array_equal(signature, datasketch_signature(char_shingles(text, ngram))), text


def test_char_signatures_equal_datasketch_on_real_chinese(smile_qa):
    texts = [row["answer"] for row in smile_qa[:150]]
    hasher = MinHasher(num_perm=64, seed=3, ngram=5)
    for text, signature in zip(texts, hasher.signatures(texts), strict=True):
        assert np.array_equal(signature, datasketch_signature(char_shingles(text, 5), num_perm=64, seed=3))


def test_short_and_empty_texts():
    """Shorter than n: the text is its one shingle. Empty or null: no shingles, datasketch's empty
    MinHash (every value 2**32 - 1)."""
    signatures = MinHasher(ngram=5).signatures(["", None, "抱", "你好", "你好吗朋友"])
    assert (signatures[0] == EMPTY_VALUE).all() and (signatures[1] == EMPTY_VALUE).all()
    assert MinHash().is_empty() and np.array_equal(MinHash().hashvalues, signatures[0])
    assert np.array_equal(signatures[2], datasketch_signature(["抱"]))
    assert np.array_equal(signatures[3], datasketch_signature(["你好"]))
    assert np.array_equal(signatures[4], datasketch_signature(["你好吗朋友"]))
    assert char_shingles("你好", 5) == ["你好"] and char_shingles("", 5) == []


def test_murmur3_signatures_equal_datasketch_with_that_hashfunc():
    texts = random_texts(np.random.default_rng(11), 80)
    signatures = MinHasher(ngram=4, hash_function="murmur3_32").signatures(texts)
    for text, signature in zip(texts, signatures, strict=True):
        assert np.array_equal(signature, datasketch_signature(char_shingles(text, 4), hashfunc=murmur3_32))


def test_word_shingle_signatures_equal_datasketch(smile_qa):
    texts = [row["question"] for row in smile_qa[:30]] + ["", "好"]
    signatures = MinHasher(ngram=2, shingle="word").signatures(texts)
    for text, signature in zip(texts, signatures, strict=True):
        assert np.array_equal(signature, datasketch_signature(word_shingles(text, 2))), text


def test_hash_spans_equal_reference_at_every_length():
    """Every message length 0..120 bytes: one SHA-1 block up to 55 bytes, hashlib beyond."""
    rng = np.random.default_rng(5)
    messages = [bytes(rng.integers(0, 256, length, dtype=np.uint8)) for length in range(121) for _ in range(3)]
    lengths = np.array([len(m) for m in messages])
    data, starts = np.frombuffer(b"".join(messages), np.uint8), np.cumsum(lengths) - lengths
    assert list(hash_spans(data, starts, lengths, "sha1_32")) == [sha1_hash32(m) for m in messages]
    assert list(hash_spans(data, starts, lengths, "murmur3_32")) == [murmur3_32(m) for m in messages]
    assert sha1_hash32(b"abc") == int.from_bytes(hashlib.sha1(b"abc").digest()[:4], "little")


def test_portable_sha1_gives_the_same_signatures_as_openssls(smile_qa):
    """The kernels take SHA-1's compression from OpenSSL where hashlib's libcrypto is found, else from
    the portable compiled one: both must give datasketch's signatures (the portable one runs in a child
    process, as the choice is made at import)."""
    texts = [row["answer"] for row in smile_qa[:40]] + ["", "抱", "x" * 200]  # 200 bytes: four SHA-1 blocks
    script = ("import json, sys; from soulray.dedup import kernels; from soulray.dedup.minhash import MinHasher;"
              "texts = json.load(sys.stdin); print(kernels.SHA1_IMPLEMENTATION);"
              "print(json.dumps(MinHasher(ngram=3).signatures(texts).tolist()))")
    child = subprocess.run([sys.executable, "-c", script], input=json.dumps(texts), capture_output=True, text=True,
                           check=True, env={**os.environ, "SOULRAY_DEDUP_SHA1": "portable"})
    implementation, signatures = child.stdout.splitlines()
    assert implementation == "portable"
    assert np.array_equal(np.array(json.loads(signatures), np.uint32), MinHasher(ngram=3).signatures(texts))
    assert np.array_equal(MinHasher(ngram=200).signatures(texts[-1:])[0], datasketch_signature([texts[-1]]))


def test_murmur3_matches_published_vectors():
    # MurmurHash3_x86_32, seed 0 (SMHasher; the values mmh3.hash(..., signed=False) returns)
    assert murmur3_32(b"") == 0
    assert murmur3_32(b"test") == 0xBA6BD213
    assert murmur3_32(b"The quick brown fox jumps over the lazy dog") == 0x2E4FF723


def test_signatures_load_into_lean_minhash_and_minhash_lsh(smile_qa):
    base = smile_qa[0]["answer"]
    texts = [base, base[:-3] + "。好的", smile_qa[50]["answer"]]
    signatures = MinHasher().signatures(texts)
    lean = to_lean_minhashes(signatures)
    reference = MinHash()
    reference.update_batch([s.encode() for s in char_shingles(base, 5)])
    assert lean[0] == LeanMinHash(reference)
    assert pickle.loads(pickle.dumps(lean[1])) == lean[1]
    buffer = bytearray(lean[0].bytesize())
    lean[0].serialize(buffer)
    assert LeanMinHash.deserialize(buffer) == lean[0]
    index = MinHashLSH(threshold=0.8, num_perm=128)
    for key, minhash in enumerate(lean):
        index.insert(key, minhash)
    assert set(index.query(lean[0])) == {0, 1}
    assert lean[0].jaccard(lean[1]) > 0.8 > lean[0].jaccard(lean[2])
