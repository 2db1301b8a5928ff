"""The paper's automatic metrics, computed the way the common Chinese recipe computes them.

SoulChat reports BLEU-1..4 and ROUGE-1/2/L ×100 (Table 1) and names its environment (nltk,
rouge_chinese, jieba) but released no evaluation code. That environment is the ChatGLM fine-tuning
recipe (ptuning/main.py), which this module reproduces exactly, without depending on either package:

- BLEU-n: nltk's `sentence_bleu([list(reference)], list(response))` on characters, cumulative
  (uniform weights 1/n over the 1..n-gram precisions), clipped counts, brevity penalty against the one
  reference, smoothing `SmoothingFunction().method3` (NIST geometric: the k-th n-gram order with no
  match counts as 1 / (2^k · number of response n-grams)); a response sharing no character with the
  reference scores 0, as in nltk. Averaging: the mean of the per-sample scores (macro, as the recipe
  does), not corpus-level BLEU; `corpus_bleu` here gives the corpus-level figure as a diagnostic.
- ROUGE-1/2/L: rouge_chinese 1.0.3 `Rouge().get_scores(" ".join(jieba.cut(response)), …)`, F-score,
  mean over samples. Its definitions differ from rouge-score's: ROUGE-N compares the *sets* of distinct
  word n-grams (`exclusive=True`), ROUGE-L is the LCS of the whole word sequences, F = 2PR/(P+R+1e-8),
  and its sentence cutter splits some ellipsis runs inside a token (`_sentence_cut` mimics it). An
  empty response or reference scores 0 (rouge_chinese raises; the ChatGLM2 recipe scores 0).
- Characters exclude whitespace throughout (a newline in a response is layout, not content).
- distinct-n (Li et al. 2016): distinct character n-grams / all character n-grams over every response
  of a model; average length: characters per response. Diagnostics, not in Table 1.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

BLEU_ORDERS = (1, 2, 3, 4)
ROUGE_KINDS = ("rouge-1", "rouge-2", "rouge-l")
_EPSILON = 1e-8  # rouge_chinese's F-score guard, kept so the figures match it to the last digit


def char_tokens(text: str) -> list[str]:
    return [char for char in text if not char.isspace()]


@lru_cache(maxsize=1)
def _jieba():
    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()  # about a second: once per process
    return jieba


# rouge_chinese's Rouge.cut_sent: a sentence ends after 。！？? (unless a closing quote follows), after
# six dots, after two ellipses. Sentence boundaries only matter where they fall inside a word.
_SENTENCE_ENDS = [(re.compile(r"([。！？\?])([^”’])"), r"\1\n\2"), (re.compile(r"(\.{6})([^”’])"), r"\1\n\2"),
                  (re.compile(r"(\…{2})([^”’])"), r"\1\n\2"), (re.compile(r"([。！？\?][”’])([^，。！？\?])"), r"\1\n\2")]


def _sentence_cut(text: str) -> str:
    for pattern, replacement in _SENTENCE_ENDS:
        text = pattern.sub(replacement, text)
    return text


def word_tokens(text: str) -> list[str]:
    """jieba words (accurate mode, HMM on), whitespace dropped, as rouge_chinese sees them."""
    joined = " ".join(word for word in _jieba().cut(text) if not word.isspace())
    return _sentence_cut(joined).split()


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[index:index + n]) for index in range(len(tokens) - n + 1)]


@dataclass(frozen=True)
class BleuStats:
    """One pair's clipped n-gram matches and response n-gram counts (orders 1..4) and lengths."""

    matches: tuple[int, ...]
    totals: tuple[int, ...]
    response_length: int
    reference_length: int


def bleu_stats(response: Sequence[str], reference: Sequence[str]) -> BleuStats:
    matches, totals = [], []
    for n in BLEU_ORDERS:
        produced, wanted = Counter(ngrams(response, n)), Counter(ngrams(reference, n))
        matches.append(sum(min(count, wanted[gram]) for gram, count in produced.items()))
        totals.append(sum(produced.values()))
    return BleuStats(tuple(matches), tuple(totals), len(response), len(reference))


def _bleu(matches: Sequence[int], totals: Sequence[int], response_length: int, reference_length: int,
          order: int) -> float:
    """nltk's corpus_bleu arithmetic for uniform weights over orders 1..`order`, smoothing method3."""
    if matches[0] == 0:
        return 0.0
    log_precisions, halvings = [], 0
    for n in range(order):
        denominator = max(1, totals[n])  # nltk: a response shorter than n has 0 matches of 1 n-gram
        if matches[n] == 0:
            halvings += 1
            log_precisions.append(math.log(1 / (2 ** halvings * denominator)))
        else:
            log_precisions.append(math.log(matches[n] / denominator))
    weight = 1 / order  # the float nltk's weight tuples hold, so sums agree to the last bit
    return _brevity_penalty(response_length, reference_length) * math.exp(
        math.fsum(weight * log for log in log_precisions))


def _brevity_penalty(response_length: int, reference_length: int) -> float:
    if response_length > reference_length:
        return 1.0
    if response_length == 0:
        return 0.0
    return math.exp(1 - reference_length / response_length)


def sentence_bleu(response: str, reference: str, order: int) -> float:
    """BLEU-`order` of one response on characters, in [0, 1]."""
    stats = bleu_stats(char_tokens(response), char_tokens(reference))
    return _bleu(stats.matches, stats.totals, stats.response_length, stats.reference_length, order)


def corpus_bleu(responses: Sequence[str], references: Sequence[str], order: int) -> float:
    """Corpus-level BLEU (Papineni et al.: matches and counts summed before dividing), in [0, 1]."""
    all_stats = [bleu_stats(char_tokens(r), char_tokens(ref)) for r, ref in zip(responses, references, strict=True)]
    if not all_stats:
        return 0.0
    matches = [sum(s.matches[n] for s in all_stats) for n in range(len(BLEU_ORDERS))]
    # nltk counts at least one n-gram per response, even one shorter than n: kept, to match it
    totals = [sum(max(1, s.totals[n]) for s in all_stats) for n in range(len(BLEU_ORDERS))]
    return _bleu(matches, totals, sum(s.response_length for s in all_stats),
                 sum(s.reference_length for s in all_stats), order)


def lcs_length(first: Sequence[str], second: Sequence[str]) -> int:
    """Length of the longest common subsequence, bit-parallel (Hyyrö 2004): one pass over `second`
    with Python integers as bit vectors, so a 500-word pair costs microseconds, not a 250k-cell table."""
    if not first or not second:
        return 0
    positions: dict[str, int] = {}
    for index, token in enumerate(first):
        positions[token] = positions.get(token, 0) | (1 << index)
    mask = (1 << len(first)) - 1
    row = mask
    for token in second:
        matched = row & positions.get(token, 0)
        row = ((row + matched) | (row - matched)) & mask
    return len(first) - row.bit_count()


def _f_score(overlap: int, response_count: int, reference_count: int) -> float:
    precision = overlap / response_count if response_count else 0.0
    recall = overlap / reference_count if reference_count else 0.0
    return 2.0 * (precision * recall) / (precision + recall + _EPSILON)


def rouge_scores(response_words: Sequence[str], reference_words: Sequence[str]) -> dict[str, float]:
    """rouge_chinese F-scores (rouge-1, rouge-2, rouge-l) of one pair of word sequences, in [0, 1]."""
    if not response_words or not reference_words:
        return dict.fromkeys(ROUGE_KINDS, 0.0)
    scores = {}
    for n in (1, 2):
        produced, wanted = set(ngrams(response_words, n)), set(ngrams(reference_words, n))
        scores[f"rouge-{n}"] = _f_score(len(produced & wanted), len(produced), len(wanted))
    scores["rouge-l"] = _f_score(lcs_length(reference_words, response_words), len(response_words),
                                 len(reference_words))
    return scores


def distinct(responses: Sequence[str], n: int) -> float:
    grams = [gram for response in responses for gram in ngrams(char_tokens(response), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def score(responses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Every automatic metric of one model over its samples, ×100 as in Table 1 (lengths in characters)."""
    if len(responses) != len(references):
        raise ValueError(f"{len(responses)} responses for {len(references)} references")
    per_sample = sample_scores(responses, references)
    count = max(1, len(responses))
    result = {name: 100 * math.fsum(values) / count for name, values in per_sample.items()}
    for order in BLEU_ORDERS:
        result[f"corpus-bleu-{order}"] = 100 * corpus_bleu(responses, references, order)
    result["distinct-1"] = 100 * distinct(responses, 1)
    result["distinct-2"] = 100 * distinct(responses, 2)
    result["avg-length"] = math.fsum(len(char_tokens(r)) for r in responses) / count
    result["reference-avg-length"] = math.fsum(len(char_tokens(r)) for r in references) / count
    result["samples"] = len(responses)
    return result


def sample_scores(responses: Sequence[str], references: Sequence[str]) -> dict[str, list[float]]:
    """Per-sample BLEU-1..4 and ROUGE F-scores in [0, 1], keyed bleu-1 … rouge-l."""
    per_sample: dict[str, list[float]] = {f"bleu-{order}": [] for order in BLEU_ORDERS}
    per_sample.update({kind: [] for kind in ROUGE_KINDS})
    for response, reference in zip(responses, references, strict=True):
        stats = bleu_stats(char_tokens(response), char_tokens(reference))
        for order in BLEU_ORDERS:
            per_sample[f"bleu-{order}"].append(
                _bleu(stats.matches, stats.totals, stats.response_length, stats.reference_length, order))
        for kind, value in rouge_scores(word_tokens(response), word_tokens(reference)).items():
            per_sample[kind].append(value)
    return per_sample
