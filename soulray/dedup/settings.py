"""Dedup settings: exact and MinHash-LSH near-duplicate marking (`DedupConfig`), and where the
regenerate job dedups (`DedupJobConfig`: sources before the rewrite, dialogues after it)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from soulray.settings import StrictModel


class DedupConfig(StrictModel):
    """Exact and MinHash-LSH near-duplicate marking. Signatures equal datasketch 2.0's
    `MinHash(num_perm, seed, scheme="affine32", hashfunc=<hash_function>)` over the shingles of the
    normalised text (soulray/dedup/minhash.py says exactly what that means)."""

    enabled: bool = True
    method: Literal["exact", "minhash"] = Field("minhash", description="exact: content hash only; minhash: "
                                                                       "exact plus near duplicates")
    # Defaults measured on real Chinese dialogues (bench/dedup.py --only drift, bench/RESULTS.md "Near-duplicate
    # dialogues"): copies within 5% character edits of a SMILECHAT dialogue have character-3-gram Jaccard
    # >= 0.75 (5-grams: >= 0.61, so the old 0.8 on 5-grams found half of them), while distinct dialogues,
    # even ten answers to one question, stay <= 0.29. 3-grams at 0.7 leave margin on both sides. 256
    # permutations, because a threshold this low needs short bands: at 128 (21 x 6) recall was 0.9975 but
    # 1M templated synthetic units formed one candidate component of 79,359 rows (resolved by one task);
    # at 256 (36 x 7) recall is 1.000, the largest component 298 rows, for the same CPU seconds
    # (fingerprint +10%, resolve -40%) and 37 band keys a row to shuffle instead of 22.
    threshold: float = Field(0.7, gt=0, le=1, description="Jaccard similarity of shingle sets")
    num_perm: int = Field(256, ge=2, le=1024)
    seed: int = Field(1, ge=0, description="datasketch's default seed")
    hash_function: Literal["sha1_32", "murmur3_32"] = Field(
        "sha1_32", description="sha1_32 is datasketch's default hashfunc; murmur3_32 (mmh3, seed 0) is faster")
    shingle: Literal["char", "word"] = Field("char", description="char n-grams, or n-grams of jieba words")
    ngram: int = Field(3, ge=1, le=32, description="shingle size (characters, or words)")
    bands: int | None = Field(None, ge=2, description="LSH bands; with rows, overrides datasketch's choice")
    rows: int | None = Field(None, ge=1, description="values per band")
    # Recall-weighted bands (36 x 7 at 0.7 and 256 permutations: a pair at Jaccard 0.75 is a candidate with
    # p = 0.994, against 0.77 for datasketch's (0.5, 0.5) choice, 25 x 10), then every candidate checked by
    # true Jaccard, so
    # the extra candidates cost no precision. Only candidate rows ship their texts to be checked.
    weights: tuple[float, float] = Field((0.05, 0.95), description="false positive / false negative weights "
                                                                   "of datasketch's parameter search")
    verify: Literal["none", "signature", "jaccard"] = Field(
        "jaccard", description="drop candidate pairs below threshold by true Jaccard of the shingle sets "
                               "(ships candidate rows' texts), by the signatures' estimate (free, but a "
                               "+-0.035 estimate at 128 permutations), or none (every LSH candidate)")
    keep: Literal["lowest_record_id", "longest"] = Field(
        "lowest_record_id", description="which row of a cluster stays: lowest record_id, or longest text "
                                        "(then lowest record_id)")
    # Memory per task is bounded by these, not by the rows (issue 22): each shuffle (band keys to buckets,
    # candidate rows to components) is cut into partitions of about partition_mb, more partitions as the
    # rows grow rather than bigger ones, and the per-batch functions see batch_rows rows at a time.
    partition_mb: int = Field(128, ge=8, description="target size of one shuffle partition, MB (lowered to a "
                                                     "quarter of the memory per CPU where that is less)")
    batch_rows: int = Field(8192, ge=64, description="rows per call of the fingerprint and member functions")
    num_partitions: int | None = Field(None, ge=1, description="shuffle partitions (default: from partition_mb)")
    verify_tasks: int | None = Field(None, ge=1, description="verifying tasks (split, resolve) at once, cluster-wide: "
                                                           "each holds ~4x partition_mb (default: the cluster's "
                                                           "CPUs; a one-node Ray's, at most the machine's cores)")
    # A candidate component is resolved by one task. Templated texts (a stock phrase in every dialogue) chain
    # most rows into one component whatever their true similarity (291,450 of 973,373 synthetic dialogues at
    # 1M), so a larger one is first verified in pieces, two pieces a task, and only its verified clusters go on.
    component_rows: int | None = Field(None, ge=2, description="largest candidate component resolved whole; "
                                                               "larger ones are verified in pieces first "
                                                               "(default: the rows that fit partition_mb)")

    @model_validator(mode="after")
    def _bands_and_rows(self) -> DedupConfig:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("give both bands and rows, or neither (then datasketch's choice is used)")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows = {self.bands * self.rows} exceeds num_perm {self.num_perm}")
        if abs(sum(self.weights) - 1.0) > 1e-9 or min(self.weights) < 0:
            raise ValueError("weights must be two non-negative numbers summing to 1")
        return self

    def lsh_params(self) -> tuple[int, int]:
        """(bands, rows): as given, else what datasketch's MinHashLSH would choose."""
        from soulray.dedup.lsh import optimal_params

        if self.bands is not None:
            return self.bands, self.rows
        return optimal_params(self.threshold, self.num_perm, tuple(self.weights))


class DedupJobConfig(StrictModel):
    """Dedup in the regenerate job: sources before the rewrite (each distinct answer is paid for once)
    and dialogues after it; optionally against a published version."""

    # Units are question + description + answer, and one long question answered briefly by several
    # counselors reaches Jaccard 0.86 on that text (SMILECHAT sample): at the dialogue defaults source dedup
    # would glue 13 of 2,000 distinct units (0.65%); 5-grams at 0.8 glue 2 (bench/RESULTS.md).
    source: DedupConfig = Field(default_factory=lambda: DedupConfig(ngram=5, threshold=0.8, num_perm=128))
    dialogue: DedupConfig = Field(default_factory=lambda: DedupConfig())
    against: str | None = Field(None, description="a published version path (…/<dataset>/versions/<id>): new rows "
                                                  "that duplicate its rows are rejected")
