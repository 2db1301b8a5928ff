"""Exact and MinHash-LSH near-duplicate marking: a numpy core (text, minhash, lsh, cluster) that
needs no Ray, and the Ray Data stage (stage.dedup_dataset)."""

from soulray.dedup.cluster import REASON_EXACT, REASON_NEAR, Decisions, Members, Rules, resolve
from soulray.dedup.lsh import band_keys, optimal_params
from soulray.dedup.minhash import MinHasher, char_shingles, murmur3_32, to_lean_minhashes, word_shingles
from soulray.dedup.stage import DedupReport, dedup_dataset, dedup_texts
from soulray.dedup.text import DedupInputError, content_hashes, normalise, row_texts

__all__ = ["REASON_EXACT", "REASON_NEAR", "Decisions", "DedupInputError", "DedupReport", "Members", "MinHasher",
           "Rules", "band_keys", "char_shingles", "content_hashes", "dedup_dataset", "dedup_texts", "murmur3_32", "normalise",
           "optimal_params", "resolve", "row_texts", "to_lean_minhashes", "word_shingles"]
