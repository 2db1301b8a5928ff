"""BLEU / ROUGE / distinct on hand-checked cases, and against nltk and rouge_chinese on real text."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from nltk.translate.bleu_score import SmoothingFunction
from nltk.translate.bleu_score import corpus_bleu as nltk_corpus_bleu
from nltk.translate.bleu_score import sentence_bleu as nltk_sentence_bleu
from rouge_chinese import Rouge

from soulray.evaluate import metrics

DEMO_DIALOGS = Path(metrics.__file__).parent.parent / "data" / "demo" / "dialogs.parquet"


def test_bleu_by_hand():
    # 我很难过 vs 我很伤心: unigrams 2/4, bigrams 1/3, trigrams 0/2 → 1/(2·2), 4-grams 0/1 → 1/(4·1); BP 1
    assert metrics.sentence_bleu("我很难过", "我很伤心", 1) == pytest.approx(0.5)
    assert metrics.sentence_bleu("我很难过", "我很伤心", 2) == pytest.approx(math.sqrt(0.5 / 3))
    assert metrics.sentence_bleu("我很难过", "我很伤心", 3) == pytest.approx((0.5 / 3 / 4) ** (1 / 3))
    assert metrics.sentence_bleu("我很难过", "我很伤心", 4) == pytest.approx((0.5 / 3 / 4 / 4) ** (1 / 4))
    # a short response pays the brevity penalty exp(1 - 4/2) however precise it is
    assert metrics.sentence_bleu("我很", "我很伤心", 2) == pytest.approx(math.exp(-1))
    assert metrics.sentence_bleu("你好", "我很伤心", 1) == 0.0  # nothing shared
    assert metrics.sentence_bleu("", "我很伤心", 1) == 0.0
    assert metrics.sentence_bleu("我很 伤\n心", "我很伤心", 4) == pytest.approx(1.0)  # whitespace is not content


def test_rouge_by_hand():
    scores = metrics.rouge_scores(["我", "很", "难过"], ["我", "很", "伤心"])
    assert scores["rouge-1"] == pytest.approx(2 / 3) and scores["rouge-l"] == pytest.approx(2 / 3)
    assert scores["rouge-2"] == pytest.approx(0.5)
    # rouge_chinese compares *sets* of n-grams, but ROUGE-L counts every word
    repeated = metrics.rouge_scores(["好", "好", "好"], ["好"])
    assert repeated["rouge-1"] == pytest.approx(1.0) and repeated["rouge-l"] == pytest.approx(0.5)
    assert metrics.rouge_scores([], ["好"]) == {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}
    assert metrics.word_tokens("我今天很难过。\n 你呢？") == ["我", "今天", "很", "难过", "。", "你", "呢", "？"]


def test_lcs_matches_dynamic_programming():
    rng = random.Random(3)
    for _ in range(200):
        first = [rng.choice("abcde") for _ in range(rng.randint(0, 70))]
        second = [rng.choice("abcde") for _ in range(rng.randint(0, 70))]
        table = [[0] * (len(second) + 1) for _ in range(len(first) + 1)]
        for i, x in enumerate(first):
            for j, y in enumerate(second):
                table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
        assert metrics.lcs_length(first, second) == table[-1][-1]


def test_distinct_and_lengths():
    assert metrics.distinct(["哈哈哈"], 1) == pytest.approx(1 / 3)
    assert metrics.distinct(["哈哈哈"], 2) == pytest.approx(1 / 2)
    result = metrics.score(["我很难过", "好"], ["我很伤心", "好的"])
    assert result["avg-length"] == 2.5 and result["reference-avg-length"] == 3.0 and result["samples"] == 2
    assert result["bleu-1"] == pytest.approx(100 * (0.5 + math.exp(1 - 2)) / 2)


@pytest.fixture(scope="module")
def real_pairs() -> list[tuple[str, str]]:
    """Real counselor turns from the bundled SMILECHAT sample, paired with each other and with their own
    prefixes, plus edge cases: a fixed set, the same on every run."""
    turns = [message["content"] for row in pq.read_table(DEMO_DIALOGS).to_pylist()
             for message in row["messages"] if message["role"] == "assistant"]
    rng = random.Random(0)
    pairs = [(rng.choice(turns), rng.choice(turns)) for _ in range(120)]
    pairs += [(turn, turn[: len(turn) // 3]) for turn in turns[:30]] + [(turn, turn) for turn in turns[30:35]]
    return pairs + [("好的……好的………", "好的………"), ("a", "b"), ("嗯", "嗯嗯嗯嗯")]


def test_bleu_equals_nltk(real_pairs):
    smoothing = SmoothingFunction().method3
    for order in metrics.BLEU_ORDERS:
        weights = tuple([1 / order] * order)
        for response, reference in real_pairs:
            expected = nltk_sentence_bleu([metrics.char_tokens(reference)], metrics.char_tokens(response),
                                          weights=weights, smoothing_function=smoothing)
            assert metrics.sentence_bleu(response, reference, order) == pytest.approx(expected, abs=1e-12)
        responses, references = zip(*real_pairs, strict=True)
        expected = nltk_corpus_bleu([[metrics.char_tokens(r)] for r in references],
                                    [metrics.char_tokens(r) for r in responses], weights=weights,
                                    smoothing_function=smoothing)
        assert metrics.corpus_bleu(responses, references, order) == pytest.approx(expected, abs=1e-12)


def test_rouge_equals_rouge_chinese(real_pairs):
    rouge = Rouge()
    for response, reference in real_pairs:
        response_words, reference_words = metrics.word_tokens(response), metrics.word_tokens(reference)
        expected = rouge.get_scores(" ".join(response_words), " ".join(reference_words))[0]
        mine = metrics.rouge_scores(response_words, reference_words)
        for kind in metrics.ROUGE_KINDS:
            assert mine[kind] == pytest.approx(expected[kind]["f"], abs=1e-12), (kind, response, reference)


def test_score_is_the_mean_of_sample_scores_times_100(real_pairs):
    responses, references = zip(*real_pairs, strict=True)
    result = metrics.score(responses, references)
    per_sample = metrics.sample_scores(responses, references)
    for name, values in per_sample.items():
        assert result[name] == pytest.approx(100 * sum(values) / len(values))
    assert 0 < result["bleu-4"] < result["bleu-1"] < 100 and 0 < result["rouge-2"] < result["rouge-1"] < 100
    assert metrics.score(responses, references) == result  # no hidden state, no randomness
