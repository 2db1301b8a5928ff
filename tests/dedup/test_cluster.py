"""Clusters, transitive chains and the kept row, on the pure core (no Ray)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from soulray.dedup.cluster import (
    ALL_PAIRS_MAX_BUCKET,
    PREFILTER_SIGMAS,
    Members,
    Rules,
    bucket_pairs,
    connected_components,
    duplicate_pairs,
    exact_pairs,
    jaccard,
    resolve,
)
from soulray.dedup.minhash import MinHasher, ShingleSets, estimate_jaccard
from soulray.dedup.text import content_hashes, normalise

BASE = ("我最近工作压力很大，晚上总是失眠，白天也提不起精神，不知道该怎么调整自己的状态才好。"
        "希望有经验的朋友能给一些建议，谢谢大家。")
# A~B and B~C above 0.6 by true Jaccard of 5-grams, A~C below: a transitive chain.
A = BASE
B = BASE.replace("工作压力很大", "工作压力特别大").replace("谢谢大家", "谢谢你们")
C = B.replace("晚上总是失眠", "晚上总睡不着").replace("提不起精神", "没有精神")
OTHER = "今天和朋友去公园散步，天气很好，心情也变得轻松了许多，回家后做了一顿丰盛的晚饭。"


def members(texts: list[str], *, record_ids: list[str] | None = None, published: list[bool] | None = None,
            ordinals: list[int] | None = None) -> Members:
    normalised = normalise(pa.array(texts))
    return Members(ordinal=np.array(ordinals if ordinals is not None else range(len(texts)), np.int64),
                   record_id=record_ids or [f"r{i}" for i in range(len(texts))],
                   text_length=np.array([len(t) for t in normalised.to_pylist()], np.int64),
                   content_hash=content_hashes(normalised),
                   published=np.array(published or [False] * len(texts)),
                   signatures=MinHasher().signatures(normalised), texts=normalised.to_pylist())


def kept_of(decisions) -> dict[int, str]:
    return {int(o): json.loads(d)["kept"] for o, d in zip(decisions.ordinal, decisions.detail, strict=True)}


def test_shingle_set_jaccard_equals_the_reference_on_every_kind_of_pair(smile_qa):
    """The compiled verification (64-bit hashed shingle sets) gives the reference's value exactly: real
    answers and their edits, short, empty, repeated and 4-byte characters."""
    answers = [row["answer"] for row in smile_qa[:30]]
    texts = answers + [a[: len(a) // 2] + "嗯" + a[len(a) // 2:] for a in answers] + [
        "", "", "抱", "抱抱", "哈哈哈哈哈哈哈哈", "😀🙂👍𠀀𠀁😀🙂👍", A, B, C, OTHER]
    rng = np.random.default_rng(0)
    pairs = np.concatenate([np.stack([np.arange(30), np.arange(30) + 30], axis=1),
                            rng.integers(0, len(texts), (300, 2)), [[60, 61], [60, 62], [62, 63], [64, 64]]])
    for ngram in (1, 3, 5):
        got = ShingleSets.of(texts, ngram).jaccard(pairs)
        expected = [jaccard(texts[a], texts[b], ngram) for a, b in pairs]
        assert got.tolist() == expected, ngram
    assert 0.5 < ShingleSets.of(texts, 5).jaccard([[0, 30]])[0] < 1.0  # an edit: similar, not equal


def test_transitive_chain_is_one_cluster():
    texts = [A, B, C, OTHER]
    norm = normalise(pa.array(texts)).to_pylist()
    assert jaccard(norm[0], norm[1], 5) >= 0.6 and jaccard(norm[1], norm[2], 5) >= 0.6
    assert jaccard(norm[0], norm[2], 5) < 0.6
    decisions = resolve(members(texts), Rules(threshold=0.6, bands=32, rows=4, verify="jaccard"))
    assert kept_of(decisions) == {1: "r0", 2: "r0"}  # C joins A's cluster through B
    assert decisions.reason == ["near_duplicate", "near_duplicate"]
    detail = json.loads(decisions.detail[1])
    assert detail["measure"] == "jaccard" and detail["similarity"] == round(jaccard(norm[0], norm[2], 5), 4)


def test_exact_duplicates_and_verification_dropping_false_candidates():
    texts = [A, "  " + A.replace("，", ","), OTHER, B]
    loose = resolve(members(texts), Rules(threshold=0.99, bands=25, rows=5, verify="none"))
    strict = resolve(members(texts), Rules(threshold=0.99, bands=25, rows=5, verify="signature"))
    assert kept_of(loose) == {1: "r0", 3: "r0"}  # B shares bands with A: a candidate
    assert kept_of(strict) == {1: "r0"}  # but its estimated similarity is far below 0.99
    assert strict.reason == ["exact_duplicate"] and json.loads(strict.detail[0])["similarity"] == 1.0


def test_keeper_is_deterministic_whatever_the_order():
    texts = [A, B, A + "又及：谢谢", OTHER]
    ids = ["c", "a", "b", "d"]
    rules = Rules(threshold=0.5, bands=25, rows=5, keep="lowest_record_id")
    forward = kept_of(resolve(members(texts, record_ids=ids), rules))
    order = [3, 2, 1, 0]
    backward = resolve(members([texts[i] for i in order], record_ids=[ids[i] for i in order], ordinals=order), rules)
    assert forward == kept_of(backward) == {0: "a", 2: "a"}
    longest = kept_of(resolve(members(texts, record_ids=ids), Rules(threshold=0.5, bands=25, rows=5, keep="longest")))
    assert longest == {0: "b", 1: "b"}


def test_published_rows_are_kept_and_never_marked():
    decisions = resolve(members([A, A, B], record_ids=["z", "a", "b"], published=[True, True, False]),
                        Rules(threshold=0.5, bands=25, rows=5))
    assert kept_of(decisions) == {2: "a"}  # published first, then the lowest record_id
    assert json.loads(decisions.detail[0])["kept_from"] == "published"


def test_empty_and_one_member():
    empty = Members(ordinal=np.zeros(0, np.int64), record_id=[], text_length=np.zeros(0, np.int64),
                    content_hash=np.zeros((0, 2), np.uint64), published=np.zeros(0, bool),
                    signatures=np.zeros((0, 128), np.uint32))
    assert len(resolve(empty, Rules(threshold=0.8, bands=9, rows=13)).ordinal) == 0
    assert len(resolve(members([A]), Rules(threshold=0.8, bands=9, rows=13)).ordinal) == 0


def test_large_bucket_is_chained_not_squared():
    size = ALL_PAIRS_MAX_BUCKET * 3
    signatures = np.tile(np.arange(16, dtype=np.uint32), (size, 1))
    pairs = bucket_pairs(signatures, bands=4, rows=4)
    assert len(pairs) == size - 1
    assert len(np.unique(connected_components(size, pairs))) == 1
    small = bucket_pairs(signatures[:10], bands=4, rows=4)
    assert len(small) == 45  # every pair in a small bucket


def test_the_signature_prefilter_drops_no_pair_that_true_jaccard_keeps(smile_qa):
    """Issue 22: candidates below threshold - 5 sigma of the signatures' estimate are dropped before their
    texts are shingled. On templated texts (a stock opening on every answer: most candidates are the
    template's) the verified pairs must be those of checking every candidate by true Jaccard."""
    opening = "我能感受到你现在的不容易，谢谢你愿意把这些说出来，你的感受是可以理解的。"
    answers = [row["answer"][:80] for row in smile_qa[:150]]
    texts = [opening + a for a in answers] + [opening + a + "加油。" for a in answers[:20]] + [opening + answers[3]] * 3
    group = members(texts)
    for threshold, bands, rows in ((0.5, 32, 4), (0.7, 32, 4), (0.9, 16, 8)):
        rules = Rules(threshold=threshold, bands=bands, rows=rows, verify="jaccard")
        candidates = bucket_pairs(group.signatures, bands=bands, rows=rows)
        verified = candidates[ShingleSets.of(group.texts, rules.ngram).jaccard(candidates) >= threshold]
        every = np.concatenate([exact_pairs(group.content_hash), verified])
        found = duplicate_pairs(group, rules)
        assert np.array_equal(np.unique(np.sort(found, axis=1), axis=0), np.unique(np.sort(every, axis=1), axis=0))
        assert len(verified) >= 20, threshold  # the edited copies (and the exact ones) at least
        if threshold == 0.7:  # the template makes candidates, and the prefilter is what drops most of them
            estimate = estimate_jaccard(group.signatures[candidates[:, 0]], group.signatures[candidates[:, 1]])
            kept = np.count_nonzero(estimate >= threshold - PREFILTER_SIGMAS * 0.5 / np.sqrt(256))
            assert len(candidates) > 300 and kept < len(candidates) // 3, (len(candidates), kept)
