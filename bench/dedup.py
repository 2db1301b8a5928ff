"""Dedup benchmarks: signature throughput against datasketch, quality against exact Jaccard, recall on
drifted copies of real Chinese dialogues and false marks on distinct ones (where the defaults come
from), and the Ray stage at 10k -> 100k (-> 1M) synthetic rows.

    python bench/dedup.py --quick          # a few minutes: throughput, quality, drift, 10k and 100k
    python bench/dedup.py --only drift     # the defaults' curve alone (~4 min on 2 busy cores)
    python bench/dedup.py                  # adds 1M rows to the scale run
    python bench/run.py --only dedup       # the same, inside the project's benchmark report

Every speed figure is a ratio against datasketch measured in the same run on the same texts (median
of interleaved repeats); quality is measured against the exact Jaccard of every pair.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from soulray.dedup.cluster import bucket_pairs  # noqa: E402
from soulray.dedup.lsh import optimal_params  # noqa: E402
from soulray.dedup.minhash import MinHasher, char_shingles, estimate_jaccard  # noqa: E402
from soulray.dedup.text import normalise  # noqa: E402

SAMPLE = Path(__file__).resolve().parent.parent / "tests" / "data" / "smilechat-sample"
NUM_PERM, NGRAM = 128, 5  # throughput: signatures of 5-gram shingles (the cost per shingle hardly depends on n)
# quality: the default DedupConfig's threshold and shingles (dialogues; units' source dedup keeps 5-grams at 0.8)
THRESHOLD, QUALITY_NGRAM, QUALITY_NUM_PERM = 0.7, 3, 256
OBJECT_STORE_MB = 1500  # the scale runs' object store: more data than this spills to disk


def run(workdir: Path, quick: bool) -> dict:
    return {"throughput": bench_throughput(count=400 if quick else 1500, repeats=3 if quick else 5),
            "quality": bench_quality(bases=150 if quick else 400),
            "drift": bench_drift(bases=150 if quick else 300),
            "scale": bench_scale(workdir, [10_000, 100_000] if quick else [10_000, 100_000, 1_000_000])}


# ---- throughput ------------------------------------------------------------------------------------

def chinese_texts(count: int, seed: int = 0) -> list[str]:
    """300-1,000 character cuts of real SMILECHAT dialogues (each dialogue cut at several offsets)."""
    rng = np.random.default_rng(seed)
    dialogues = ["".join(m["content"] for m in row["messages"])
                 for row in pq.read_table(SAMPLE / "dialogs.parquet").to_pylist()]
    dialogues = [text for text in dialogues if len(text) >= 1000]
    texts = []
    while len(texts) < count:
        text = dialogues[int(rng.integers(len(dialogues)))]
        length = int(rng.integers(300, 1001))
        start = int(rng.integers(0, len(text) - length + 1))
        texts.append(text[start:start + length])
    return texts


def bench_throughput(*, count: int, repeats: int) -> dict:
    """One process, one core, CPU seconds (time.process_time: the machine is shared, and waiting for a
    core is not work). datasketch side: shingle, encode, MinHash.bulk (its fastest path: permutations
    drawn once, update_batch per text) with the same hash function; soulray side: MinHasher.signatures
    on the texts. murmur3_32 is compared with datasketch given mmh3's C MurmurHash3 as hashfunc when
    mmh3 is installed (else with datasketch's default SHA-1, and the ratio says so)."""
    texts = chinese_texts(count)
    encoded = [[s.encode("utf-8") for s in char_shingles(t, NGRAM)] for t in texts]
    shingles = sum(len(e) for e in encoded)
    results: dict = {"texts": count, "mean_chars": float(np.mean([len(t) for t in texts])), "shingles": shingles,
                     "clock": "process_time"}
    for name in ("sha1_32", "murmur3_32"):
        hashfunc, baseline_hash = _datasketch_hashfunc(name)
        hasher = MinHasher(num_perm=NUM_PERM, ngram=NGRAM, hash_function=name)
        hasher.signatures(texts[:2])  # load (or compile, on a fresh checkout) the kernels outside the clock
        ours, whole, update, per_text = [], [], [], []
        for _ in range(repeats):  # interleaved, so load changes hit both sides alike
            ours.append(_cpu_seconds(lambda h=hasher: h.signatures(texts)))
            whole.append(_cpu_seconds(lambda f=hashfunc: _datasketch(texts, f)))
            update.append(_cpu_seconds(lambda f=hashfunc: _datasketch(texts, f, encoded=encoded)))
            per_text.append(_cpu_seconds(lambda f=hashfunc: _datasketch_per_text(texts, f)))
        identical = bool(np.array_equal(hasher.signatures(texts), _datasketch(texts, hashfunc)))
        t_ours, t_whole, t_update, t_per_text = (statistics.median(x) for x in (ours, whole, update, per_text))
        results[name] = {"soulray_texts_per_s": count / t_ours, "datasketch_texts_per_s": count / t_whole,
                         "ratio": t_whole / t_ours, "ratio_vs_update_batch_alone": t_update / t_ours,
                         "ratio_vs_minhash_per_text": t_per_text / t_ours,
                         "soulray_ns_per_shingle": t_ours / shingles * 1e9, "datasketch_hash": baseline_hash,
                         "identical_signatures": identical if baseline_hash == name else None}
    return results


def _datasketch_hashfunc(name: str):
    if name == "sha1_32":
        return None, "sha1_32"
    try:
        import mmh3
    except ImportError:
        return None, "sha1_32"
    return (lambda data: mmh3.hash(data, 0, signed=False)), "murmur3_32"


def _datasketch(texts: list[str], hashfunc, encoded: list[list[bytes]] | None = None) -> np.ndarray:
    from datasketch import MinHash

    kwargs = {"hashfunc": hashfunc} if hashfunc else {}
    if encoded is None:
        encoded = [[s.encode("utf-8") for s in char_shingles(t, NGRAM)] for t in texts]
    return np.array([m.hashvalues for m in MinHash.bulk(encoded, num_perm=NUM_PERM, **kwargs)])


def _datasketch_per_text(texts: list[str], hashfunc) -> np.ndarray:
    """The usage most code has: a new MinHash per text (permutations drawn each time), update_batch."""
    from datasketch import MinHash

    kwargs = {"hashfunc": hashfunc} if hashfunc else {}
    out = []
    for text in texts:
        minhash = MinHash(num_perm=NUM_PERM, **kwargs)
        minhash.update_batch([s.encode("utf-8") for s in char_shingles(text, NGRAM)])
        out.append(minhash.hashvalues)
    return np.array(out)


def _cpu_seconds(fn) -> float:
    started = time.process_time()
    fn()
    return time.process_time() - started


# ---- quality -----------------------------------------------------------------------------------------

def labelled_set(bases: int, seed: int = 1) -> tuple[list[str], list[str]]:
    """SMILECHAT answers and, for each, variants of known kinds: character edits, insertions,
    truncations, reordered sentences, at strengths spanning Jaccard ~0.3 to 1 around the threshold."""
    rng = np.random.default_rng(seed)
    answers = [row["answer"] for row in pq.read_table(SAMPLE / "qa.parquet").to_pylist() if len(row["answer"]) >= 120]
    chosen = [answers[i] for i in rng.choice(len(answers), min(bases, len(answers)), replace=False)]
    texts, kinds = [], []
    for base in chosen:
        texts.append(base)
        kinds.append("base")
        for kind in ("edit", "insert", "truncate", "reorder"):
            for strength in (0.01, 0.03, 0.06, 0.12):
                texts.append(_variant(rng, base, kind, strength, answers))
                kinds.append(kind)
    return texts, kinds


def _variant(rng: np.random.Generator, text: str, kind: str, strength: float, pool: list[str]) -> str:
    chars = list(text)
    if kind == "edit":
        for position in rng.choice(len(chars), max(1, int(len(chars) * strength)), replace=False):
            chars[position] = "的了呢吧啊是我你"[int(rng.integers(8))]
        return "".join(chars)
    if kind == "insert":
        other = pool[int(rng.integers(len(pool)))]
        piece = max(2, int(len(text) * strength))
        start = int(rng.integers(0, max(1, len(other) - piece)))
        at = int(rng.integers(len(text)))
        return text[:at] + other[start:start + piece] + text[at:]
    if kind == "truncate":
        return text[: len(text) - max(1, int(len(text) * strength * 2))]
    sentences = [s for s in text.replace("。", "。\n").split("\n") if s]
    swaps = max(1, int(len(sentences) * strength * 4))
    for _ in range(swaps):
        i, j = rng.integers(len(sentences), size=2)
        sentences[i], sentences[j] = sentences[j], sentences[i]
    return "".join(sentences)


def exact_jaccard_pairs(texts: list[str], threshold: float, ngram: int) -> set[tuple[int, int]]:
    """Every pair whose n-gram sets have Jaccard >= threshold, exactly (sparse intersection counts)."""
    left, right, similarity = _all_pairs_jaccard([set(char_shingles(text, ngram)) for text in texts])
    keep = similarity >= threshold
    return set(zip(left[keep].tolist(), right[keep].tolist(), strict=True))


# (name, LSH weights, verification): datasketch's default choice as it is, then checked by the
# signatures' estimate, then a recall-weighted choice checked by true Jaccard (soulray's default
# DedupConfig: weights=(0.05, 0.95), verify="jaccard").
SETTINGS = [("lsh_default", (0.5, 0.5), "none"), ("lsh_default+signature", (0.5, 0.5), "signature"),
            ("lsh_recall_weighted+jaccard", (0.05, 0.95), "jaccard")]


def _quality_of(texts: list[str]) -> dict:
    from datasketch import MinHashLSH

    from soulray.dedup.cluster import connected_components, jaccard
    from soulray.dedup.minhash import to_lean_minhashes

    normalised = normalise(pa.array(texts)).to_pylist()
    truth = exact_jaccard_pairs(normalised, THRESHOLD, QUALITY_NGRAM)
    signatures = MinHasher(num_perm=QUALITY_NUM_PERM, ngram=QUALITY_NGRAM).signatures(normalised)
    out: dict = {"texts": len(texts), "true_pairs": len(truth)}
    for name, weights, verify in SETTINGS:
        bands, rows = optimal_params(THRESHOLD, QUALITY_NUM_PERM, weights)
        candidates = bucket_pairs(signatures, bands=bands, rows=rows)
        if verify == "signature":
            candidates = candidates[estimate_jaccard(signatures[candidates[:, 0]], signatures[candidates[:, 1]])
                                    >= THRESHOLD]
        elif verify == "jaccard":
            keep = [jaccard(normalised[a], normalised[b], QUALITY_NGRAM) >= THRESHOLD for a, b in candidates]
            candidates = candidates[np.array(keep, bool)] if len(candidates) else candidates
        predicted = set(map(tuple, candidates.tolist()))
        hits = len(predicted & truth)
        labels = connected_components(len(texts), candidates)
        clustered = sum(1 for a, b in truth if labels[a] == labels[b])
        out[name] = {"bands": bands, "rows": rows, "pairs": len(predicted),
                     "precision": hits / max(1, len(predicted)), "recall": hits / max(1, len(truth)),
                     "recall_same_cluster": clustered / max(1, len(truth))}
    # datasketch's own index over the same signatures, with the same (default) parameters
    index = MinHashLSH(threshold=THRESHOLD, num_perm=QUALITY_NUM_PERM)
    lean = to_lean_minhashes(signatures)
    for key, minhash in enumerate(lean):
        index.insert(key, minhash)
    theirs = {(min(a, b), max(a, b)) for a, minhash in enumerate(lean) for b in index.query(minhash) if a != b}
    ours = set(map(tuple, bucket_pairs(signatures, bands=index.b, rows=index.r).tolist()))
    out["datasketch_lsh"] = {"bands": index.b, "rows": index.r, "pairs": len(theirs),
                             "agreement": len(ours & theirs) / max(1, len(ours | theirs))}
    return out


def bench_quality(*, bases: int) -> dict:
    texts, kinds = labelled_set(bases)
    # the SMILECHAT sample as the source dedup sees it: question + answer per unit
    sample = [f"{row['question']}\n{row['answer']}" for row in pq.read_table(SAMPLE / "qa.parquet").to_pylist()]
    counts = {str(kind): int(count) for kind, count in zip(*np.unique(kinds, return_counts=True), strict=True)}
    return {"threshold": THRESHOLD, "ngram": QUALITY_NGRAM, "num_perm": QUALITY_NUM_PERM, "labelled": {**_quality_of(texts), "kinds": counts},
            "smilechat_sample": _quality_of(sample)}


# ---- near-duplicates of Chinese dialogues: where the defaults come from -----------------------------------

# Each base dialogue gets one copy per (kind, rate): within 5% character edits of it (soulray/dedup/drift.py).
DRIFT_VARIANTS = [("edits", 0.01), ("edits", 0.02), ("edits", 0.03), ("edits", 0.04), ("edits", 0.05),
                  ("punctuation", 0.0), ("drop_sentence", 0.05), ("drift", 0.05)]
CURVE_SHINGLES = [("char", 2), ("char", 3), ("char", 4), ("char", 5), ("char", 6), ("char", 7), ("word", 1), ("word", 2),
                  ("word", 3)]
CURVE_THRESHOLDS = [0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9]
# The whole pipeline (MinHash, LSH bands, verification: dedup_texts) at the settings worth comparing;
# each is DedupConfig's defaults with these fields changed. The first is the old default.
PIPELINE_SETTINGS = [
    ("old default: 5-gram, 0.8", {"ngram": 5, "threshold": 0.8, "num_perm": 128}),
    ("default: 3-gram, 0.7, 256 permutations", {}),
    ("3-gram, 0.7, 128 permutations", {"num_perm": 128}),
    ("3-gram, 0.65, 128", {"threshold": 0.65, "num_perm": 128}),
    ("3-gram, 0.75, 128", {"threshold": 0.75, "num_perm": 128}),
    ("2-gram, 0.75, 128", {"ngram": 2, "threshold": 0.75, "num_perm": 128}),
    ("4-gram, 0.65, 128", {"ngram": 4, "threshold": 0.65, "num_perm": 128}),
    ("5-gram, 0.55, 128", {"ngram": 5, "threshold": 0.55, "num_perm": 128}),
    ("5-gram, 0.55, 256", {"ngram": 5, "threshold": 0.55}),
    ("default, LSH weights (0.5, 0.5)", {"weights": (0.5, 0.5)}),
    ("default, verify signature", {"verify": "signature"}),
    ("default, verify none", {"verify": "none"}),
]


def drift_set(*, bases: int, seed: int = 0) -> dict:
    """The sample's 2,000 real dialogues (distinct: they stand for what must not be marked) and, for
    `bases` of them, one drifted copy per DRIFT_VARIANTS entry. Also the sample's Q&A units, what
    source dedup sees (959 of 2,000 share their question with another unit)."""
    from soulray.dedup.drift import drift
    from soulray.dedup.text import row_texts

    table = pq.read_table(SAMPLE / "dialogs.parquet")
    dialogues = table.to_pylist()
    alphabet = "".join(m["content"] for row in dialogues for m in row["messages"])
    rng = np.random.default_rng(seed)
    variants, base_of, kinds, edited_share = [], [], [], []
    for base in sorted(rng.choice(len(dialogues), bases, replace=False).tolist()):
        messages = dialogues[base]["messages"]
        total = sum(len(m["content"]) for m in messages)
        for kind, rate in DRIFT_VARIANTS:
            copy, edited = drift(messages, kind=kind, rate=rate, rng=rng, alphabet=alphabet)
            variants.append(copy)
            base_of.append(base)
            kinds.append(f"{kind} {rate:.0%}" if kind == "edits" else kind)
            edited_share.append(edited / total)
    units = pq.read_table(SAMPLE / "qa.parquet")
    unit_texts = row_texts(units.append_column("description", pa.nulls(units.num_rows, pa.string())))
    return {"dialogues": row_texts(table), "variants": row_texts(pa.table({"messages": variants})),
            "base_of": np.array(base_of), "kinds": kinds, "edited_share": np.array(edited_share),
            "first_turns": [row["messages"][0]["content"] for row in dialogues], "units": unit_texts}


def _shingle_sets(texts: list[str], kind: str, ngram: int, words: list[list[str]] | None) -> list[set[str]]:
    """The shingle sets MinHasher hashes (char_shingles; word_shingles from pre-cut words)."""
    if kind == "char":
        return [set(char_shingles(text, ngram)) for text in texts]
    out = []
    for text_words in words:
        if len(text_words) < ngram:
            out.append({" ".join(text_words)} if text_words else set())
        else:
            out.append({" ".join(text_words[i:i + ngram]) for i in range(len(text_words) - ngram + 1)})
    return out


def _all_pairs_jaccard(sets: list[set[str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(left, right, Jaccard) of every pair with a shingle in common (sparse intersection counts)."""
    from scipy.sparse import csr_matrix

    vocabulary: dict[str, int] = {}
    rows, columns = [], []
    for index, shingles in enumerate(sets):
        for shingle in shingles:
            rows.append(index)
            columns.append(vocabulary.setdefault(shingle, len(vocabulary)))
    incidence = csr_matrix((np.ones(len(rows), np.int32), (rows, columns)), shape=(len(sets), len(vocabulary)))
    sizes = np.asarray(incidence.sum(axis=1)).ravel()
    overlap = (incidence @ incidence.T).tocoo()
    upper = overlap.row < overlap.col
    left, right, inter = overlap.row[upper], overlap.col[upper], overlap.data[upper]
    return left, right, inter / (sizes[left] + sizes[right] - inter)


def _false_marks(count: int, left: np.ndarray, right: np.ndarray, similarity: np.ndarray, threshold: float) -> int:
    """Rows dedup marks among distinct texts: all but one of each component of pairs >= threshold."""
    from soulray.dedup.cluster import connected_components

    keep = similarity >= threshold
    labels = connected_components(count, np.stack([left[keep], right[keep]], axis=1))
    return count - len(np.unique(labels))


def bench_drift(*, bases: int) -> dict:
    """Recall on drifted copies and false marks on distinct real dialogues: first against exact Jaccard
    for every shingle kind, size and threshold (what verification can reach), then through the whole
    pipeline (dedup_texts: MinHash, LSH, verification) at PIPELINE_SETTINGS."""
    data = drift_set(bases=bases)
    dialogues = normalise(data["dialogues"]).to_pylist()
    variants = normalise(data["variants"]).to_pylist()
    units = normalise(data["units"]).to_pylist()
    base_of, kinds = data["base_of"], data["kinds"]
    kind_names = list(dict.fromkeys(kinds))
    kind_index = np.array([kind_names.index(kind) for kind in kinds])
    first_turns = np.unique(np.array(data["first_turns"], dtype=object), return_inverse=True)[1].reshape(-1)
    out: dict = {"dialogues": len(dialogues), "bases": bases, "pairs": len(variants), "units": len(units),
                 "kinds": kind_names, "max_edited_share": float(data["edited_share"].max()),
                 "shared_first_turn_pairs": int(sum(n * (n - 1) // 2 for n in np.bincount(first_turns))),
                 "curve": {}, "pipeline": {}}
    words = None
    for kind, ngram in CURVE_SHINGLES:
        if kind == "word" and words is None:
            import jieba

            words = {name: [[w for w in jieba.lcut(text) if w.strip()] for text in texts]
                     for name, texts in (("dialogues", dialogues), ("variants", variants), ("units", units))}
        sets = {name: _shingle_sets(texts, kind, ngram, words and words[name])
                for name, texts in (("dialogues", dialogues), ("variants", variants), ("units", units))}
        pair_similarity = np.array([len(a & b) / max(1, len(a | b)) for a, b in
                                    zip((sets["dialogues"][i] for i in base_of), sets["variants"], strict=True)])
        distinct = _all_pairs_jaccard(sets["dialogues"])
        unit_pairs = _all_pairs_jaccard(sets["units"])
        same_turn = first_turns[distinct[0]] == first_turns[distinct[1]]
        row: dict = {"pair_jaccard_min": float(pair_similarity.min()),
                     "pair_jaccard_p5": float(np.quantile(pair_similarity, 0.05)),
                     "distinct_max": float(distinct[2].max()),
                     "distinct_shared_first_turn_max": float(distinct[2][same_turn].max()) if same_turn.any() else 0.0,
                     "units_max": float(unit_pairs[2].max()), "thresholds": {}}
        for threshold in CURVE_THRESHOLDS:
            found = pair_similarity >= threshold
            row["thresholds"][str(threshold)] = {
                "recall": float(found.mean()),
                "worst_kind_recall": float(min(found[kind_index == k].mean() for k in range(len(kind_names)))),
                "false_marks": _false_marks(len(dialogues), *distinct, threshold),
                "false_marks_units": _false_marks(len(units), *unit_pairs, threshold)}
        out["curve"][f"{kind} {ngram}"] = row
        print(f"drift curve: {kind} {ngram} done", file=sys.stderr, flush=True)
    for name, changes in PIPELINE_SETTINGS:
        out["pipeline"][name] = _pipeline_quality(changes, dialogues, variants, units, base_of, kind_index,
                                                  kind_names, first_turns)
        print(f"drift pipeline: {name} done", file=sys.stderr, flush=True)
    return out


def _pipeline_quality(changes: dict, dialogues: list[str], variants: list[str], units: list[str],
                      base_of: np.ndarray, kind_index: np.ndarray, kind_names: list[str],
                      first_turns: np.ndarray) -> dict:
    """One setting end to end: false marks among the distinct dialogues and units, recall of the drifted
    copies mixed in with all 2,000 dialogues (a copy counts when it ends in its base's cluster), LSH
    candidate pairs among the distinct dialogues before verification, and the expected candidates per
    row at a million rows: the sample's exact-Jaccard distribution of pairs with different first turns
    under the bands' S-curve (a million dialogues have a million times as many such pairs per row), plus
    those of one row's question siblings (their number does not grow with the corpus)."""
    from soulray.dedup.minhash import word_shingles
    from soulray.dedup.settings import DedupConfig
    from soulray.dedup.stage import dedup_texts

    config = DedupConfig(**changes)
    bands, rows = config.lsh_params()
    started = time.process_time()
    mixed = dedup_texts(dialogues + variants, config=config)
    seconds = time.process_time() - started
    keeper = np.arange(len(dialogues) + len(variants))
    keeper[mixed.ordinal] = mixed.keeper
    found = keeper[len(dialogues) + np.arange(len(variants))] == keeper[base_of]
    per_kind = [float(found[kind_index == k].mean()) for k in range(len(kind_names))]
    hasher = MinHasher(num_perm=config.num_perm, seed=config.seed, ngram=config.ngram, shingle=config.shingle,
                       hash_function=config.hash_function)
    candidates = bucket_pairs(hasher.signatures(dialogues), bands=bands, rows=rows)
    shingles = char_shingles if config.shingle == "char" else word_shingles
    left, right, similarity = _all_pairs_jaccard([set(shingles(text, config.ngram)) for text in dialogues])
    candidate = 1 - (1 - similarity ** rows) ** bands
    siblings = first_turns[left] == first_turns[right]
    other_pairs = len(dialogues) * (len(dialogues) - 1) / 2 - siblings.sum()
    return {"ngram": config.ngram, "shingle": config.shingle, "threshold": config.threshold,
            "num_perm": config.num_perm, "verify": config.verify, "bands": bands, "rows": rows,
            "recall": float(found.mean()), "worst_kind_recall": min(per_kind),
            "worst_kind": kind_names[int(np.argmin(per_kind))],
            "false_marks": len(dedup_texts(dialogues, config=config).ordinal),
            "false_marks_units": len(dedup_texts(units, config=config).ordinal),
            "distinct_candidates": len(candidates),
            "candidates_per_row_at_1m": float(candidate[~siblings].sum() / other_pairs * 1e6
                                              + 2 * candidate[siblings].sum() / len(dialogues)),
            "cpu_s": seconds}


# ---- scale -------------------------------------------------------------------------------------------

def bench_scale(workdir: Path, sizes: list[int], *, object_store_mb: int = OBJECT_STORE_MB,
                kind: str = "units", partition_mb: int | None = None) -> dict:
    """Each size in a fresh process with its own local Ray (so peak memory is that size's), reading
    synthetic PsyQA-shaped units (10% near-duplicates) from Parquet as the jobs do, or (kind="dialogues")
    the dialogues the offline server writes from them (the regenerate job's dialogue dedup input), through
    dedup_dataset with the default DedupConfig of that stage; wall time and peak memory (PSS summed over
    the driver, Ray's daemons and workers, sampled every 0.5 s). The object store is capped at
    `object_store_mb`, so what does not fit spills to disk and peak memory shows what the pipeline itself holds."""
    out = {}
    for rows in sizes:
        # written here, so the measured process only reads
        source = _synthetic_dialogues(rows, workdir) if kind == "dialogues" else _synthetic_units(rows, workdir)
        result_path = workdir / f"scale-{kind}-{rows}.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--scale-one", str(rows), "--workdir", str(workdir),
                   "--result", str(result_path), "--object-store-mb", str(object_store_mb), "--kind", kind]
        if partition_mb:
            command += ["--partition-mb", str(partition_mb)]
        subprocess.run(command, check=True, timeout=3600)
        out[str(rows)] = {**json.loads(result_path.read_text()), "source_mb": _size_mb(source)}
    return out



def scale_one(rows: int, workdir: Path, *, object_store_mb: int, kind: str = "units",
              partition_mb: int | None = None) -> dict:
    import ray

    from soulray.dedup.settings import DedupConfig, DedupJobConfig
    from soulray.dedup.stage import dedup_dataset
    from soulray.runtime import RayConfig, init_ray

    init_ray(RayConfig(num_cpus=4, object_store_mb=object_store_mb))
    sampler = _MemorySampler()
    sampler.start()
    started = time.perf_counter()
    # one read task per row group (25k rows), as the jobs' readers split sources; Ray's default of 200
    # blocks at least makes hundreds of tiny tasks at the small sizes
    ds = ray.data.read_parquet(str(workdir / f"{kind}-{rows}"), override_num_blocks=max(1, -(-rows // 25_000)))
    config = DedupJobConfig().dialogue if kind == "dialogues" else DedupConfig()
    if partition_mb:
        config = config.model_copy(update={"partition_mb": partition_mb})
    marked, report = dedup_dataset(ds, config=config)
    output_rows = marked.count()
    wall = time.perf_counter() - started
    sampler.stop()
    ray.shutdown()
    return {"rows": rows, "wall_s": wall, "rows_per_s": rows / wall, "peak_pss_mb": sampler.peak / 1e6,
            "peak_pss_by_group_mb": sampler.peak_groups, "peak_processes": sampler.peak_processes, "object_store_mb": object_store_mb, "output_rows": output_rows, "marked": report.marked,
            "clusters": report.clusters, "considered": report.considered_rows, "seconds": report.seconds,
            "largest_component": report.largest_component, "largest_resolved": report.largest_resolved,
            "partitions": report.partitions, "partition_mb": report.partition_mb, "kind": kind}


def bench_settings_cost(workdir: Path, rows: int) -> dict:
    """The stage's own work per phase (fingerprint, buckets, components, members, resolve: the same
    functions dedup_dataset maps over its blocks) in this one process, in CPU seconds, for the old and
    the new default settings (and the new at 128 permutations) on the scale run's synthetic units. Ray's scheduling and shuffles are left
    out: on a shared 2-core machine their wall time varies 4x between identical runs, so they hide
    what the settings change."""
    from soulray.dedup import stage
    from soulray.dedup.settings import DedupConfig

    table = pq.read_table(_synthetic_units(rows, workdir))
    out = {}
    for name, changes in (("old default: 5-gram, 0.8", {"ngram": 5, "threshold": 0.8, "num_perm": 128}),
                          ("3-gram, 0.7, 128 permutations", {"num_perm": 128}), ("default", {})):
        settings = stage._Settings.of(DedupConfig(**changes))
        batches = [stage._with_row_ids(table.slice(start, 25_000), published=False)
                   for start in range(0, table.num_rows, 25_000)]
        seconds: dict[str, float] = {}
        keyed = _timed(seconds, "fingerprint", lambda s=settings, b=batches: pa.concat_tables(
            [stage._fingerprint(batch, settings=s) for batch in b]))
        edges = _timed(seconds, "buckets", lambda k=keyed: stage._bucket_edges(k))
        involved, component = _timed(seconds, "components", lambda e=edges: stage._components(
            {"u": e["u"].to_numpy(), "v": e["v"].to_numpy()}))
        members = _timed(seconds, "members", lambda s=settings, b=batches, i=involved, c=component: pa.concat_tables(
            [stage._members(batch, settings=s, lookup=(i, c)) for batch in b]))
        decisions = _timed(seconds, "resolve", lambda s=settings, m=members: stage._resolve_partition(m, settings=s))
        out[name] = {"bands": settings.rules.bands, "rows": settings.rules.rows, "candidate_edges": edges.num_rows,
                     "candidate_rows": len(involved),
                     "largest_component": int(np.bincount(component).max()) if len(component) else 0,
                     "marked": decisions.num_rows, "cpu_s": seconds, "total_cpu_s": sum(seconds.values())}
    return {"rows": rows, **out}


def _timed(seconds: dict[str, float], name: str, fn):
    started = time.process_time()
    result = fn()
    seconds[name] = time.process_time() - started
    return result


def _size_mb(path: Path) -> float:
    return sum(part.stat().st_size for part in path.glob("*.parquet")) / 1e6


def _synthetic_units(rows: int, workdir: Path, planted_share: float = 0.05) -> Path:
    """A folder of WORKING_UNIT Parquet files from soulray.sources.synthetic (kept between runs). Its
    near-duplicate answers land under other questions, so few whole units are near-duplicates;
    `planted_share` of rows are therefore replaced by a recent unit with its answer perturbed the
    generator's way (Jaccard of the unit ~0.9)."""
    from soulray.schema import REJECT_MARK, record_id
    from soulray.sources import normalise_fragment, plan_fragments
    from soulray.sources.settings import SourceSpec
    from soulray.sources.synthetic import _perturb, write_synthetic

    folder = workdir / f"units-{rows}"
    if (folder / "_done").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    path = workdir / f"synthetic-{rows}.parquet"
    write_synthetic(path, rows, seed=0, near_duplicate_rate=0.1, chunk_rows=min(rows, 50_000))
    spec = SourceSpec(path=str(path), columns={"description": "description", "topic": "topic"})
    rng = np.random.default_rng(1)
    for index, fragment in enumerate(plan_fragments(spec).fragments):
        table = normalise_fragment(fragment, spec)
        for name, dtype in REJECT_MARK:
            if name not in table.column_names:
                table = table.append_column(name, pa.nulls(table.num_rows, dtype))
        columns = {name: table[name].to_pylist() for name in ("record_id", "question", "description", "answer")}
        for target in rng.choice(table.num_rows, int(table.num_rows * planted_share), replace=False):
            origin = max(0, int(target) - int(rng.integers(1, 1000)))
            for name in ("question", "description"):
                columns[name][target] = columns[name][origin]
            columns["answer"][target] = _perturb(rng, columns["answer"][origin])
            columns["record_id"][target] = record_id(columns["question"][target], columns["description"][target],
                                                     columns["answer"][target])
        for name, values in columns.items():
            table = table.set_column(table.column_names.index(name), name, pa.array(values, pa.string()))
        pq.write_table(table, folder / f"part-{index:05d}.parquet", row_group_size=25_000)
    path.unlink()
    (folder / "_done").touch()
    return folder


def _synthetic_dialogues(rows: int, workdir: Path) -> Path:
    """WORKING_DIALOGUE Parquet files: each synthetic unit (above) rendered with the default prompt and
    rewritten by the offline server's `offline_rewrite` (the e2e bench's local LLM), then parsed as the
    rewrite stage parses; a completion that does not parse keeps its row with the parse reject mark."""
    from soulray.offline.server import offline_rewrite
    from soulray.rewrite.parse import parse_completion
    from soulray.rewrite.prompts import load_template
    from soulray.schema import WORKING_DIALOGUE

    folder = workdir / f"dialogues-{rows}"
    if (folder / "_done").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    template = load_template("soulchat-v1")
    for part in sorted(_synthetic_units(rows, workdir).glob("*.parquet")):
        out = []
        for unit in pq.read_table(part).to_pylist():
            prompt = template.render(unit["question"], unit["description"], unit["answer"])[0]["content"]
            parsed = parse_completion(offline_rewrite(prompt))
            out.append({**{name: unit.get(name) for name in WORKING_DIALOGUE.names}, "messages": parsed.messages or [],
                        "prompt_version": template.version, "model": "offline", "api_key_name": "", "attempts": 1,
                        "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0, "id": unit["answer_id"],
                        "source_answer": unit["answer"], "reject_stage": None if parsed.ok else "parse",
                        "reject_reason": parsed.reason, "reject_detail": parsed.detail})
        pq.write_table(pa.Table.from_pylist(out, schema=WORKING_DIALOGUE), folder / part.name, row_group_size=25_000)
    (folder / "_done").touch()
    return folder


class _MemorySampler:
    """Peak PSS of this process's tree, sampled every 0.5 s, and what each process group held then."""

    def __init__(self) -> None:
        self.peak = 0
        self.peak_groups: dict[str, float] = {}
        self.peak_processes: list[tuple[float, str]] = []  # the largest processes at the peak (PSS MB, title)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        from e2e import process_group, process_tree  # bench/e2e.py, beside this script

        while not self._stop.wait(0.5):
            processes = process_tree(os.getpid())
            total = sum(process["pss"] for process in processes)
            if total > self.peak:
                self.peak, self.peak_groups = total, {}
                self.peak_processes = sorted(((p["pss"] / 1e6, p["name"]) for p in processes), reverse=True)[:12]
                for process in processes:
                    group = process_group(process["name"])
                    self.peak_groups[group] = self.peak_groups.get(group, 0) + process["pss"] / 1e6


# ---- report ------------------------------------------------------------------------------------------

def markdown(result: dict) -> str:
    lines = ["## dedup", ""]
    throughput = result.get("throughput")
    if throughput:
        lines += [f"Signatures, one core (CPU seconds), {NUM_PERM} permutations, {NGRAM}-gram shingles, "
                  f"{throughput['texts']} SMILECHAT cuts of 300-1,000 chars (mean {throughput['mean_chars']:.0f}), "
                  f"{throughput['shingles']:,} shingles; datasketch = shingle + encode + MinHash.bulk:", "",
                  "| hash | soulray texts/s | datasketch texts/s (its hash) | ratio | vs update_batch alone | "
                  "vs MinHash() per text | soulray ns/shingle | identical signatures |", "|---|---|---|---|---|---|---|---|"]
        for name in ("sha1_32", "murmur3_32"):
            row = throughput[name]
            lines.append(f"| {name} | {row['soulray_texts_per_s']:,.0f} | {row['datasketch_texts_per_s']:,.0f} "
                         f"({row['datasketch_hash']}) | {row['ratio']:.1f}x | {row['ratio_vs_update_batch_alone']:.1f}x"
                         f" | {row.get('ratio_vs_minhash_per_text', float('nan')):.1f}x | "
                         f"{row['soulray_ns_per_shingle']:.0f} | {row['identical_signatures']} |")
    quality = result.get("quality")
    if quality:
        lines += ["", f"Quality at Jaccard >= {quality['threshold']} against the exact Jaccard of "
                  f"{quality.get('ngram', 5)}-gram sets of every "
                  "pair (pairs found directly; 'same cluster' counts true pairs that end in one cluster):", "",
                  "| set | texts | true pairs | setting | b x r | precision | recall | recall, same cluster |",
                  "|---|---|---|---|---|---|---|---|"]
        for name in ("labelled", "smilechat_sample"):
            row = quality[name]
            for setting, _, _ in SETTINGS:
                got = row[setting]
                lines.append(f"| {name} | {row['texts']} | {row['true_pairs']} | {setting} | {got['bands']} x "
                             f"{got['rows']} | {got['precision']:.3f} | {got['recall']:.3f} | "
                             f"{got['recall_same_cluster']:.3f} |")
        lines += ["", "Candidate pairs agree with datasketch MinHashLSH on the same signatures: " + ", ".join(
            f"{name} {quality[name]['datasketch_lsh']['agreement']:.4f} ({quality[name]['datasketch_lsh']['pairs']} "
            "pairs)" for name in ("labelled", "smilechat_sample"))]
    drift = result.get("drift")
    if drift:
        lines += _drift_markdown(drift)
    cost = result.get("settings_cost")
    if cost:
        lines += ["", f"The stage's work per phase in one process, CPU seconds, {cost['rows']:,} synthetic units "
                  "(`--only settings-cost`):", "",
                  "| setting | b × r | candidate edges | candidate rows | largest component | marked | "
                  "fingerprint | buckets | components | members | resolve | total |", "|---" * 12 + "|"]
        for name, row in cost.items():
            if name == "rows":
                continue
            phases = " | ".join(f"{row['cpu_s'][phase]:.1f}" for phase in
                                ("fingerprint", "buckets", "components", "members", "resolve"))
            lines.append(f"| {name} | {row['bands']} × {row['rows']} | {row['candidate_edges']:,} | "
                         f"{row['candidate_rows']:,} | {row['largest_component']:,} | {row['marked']:,} | {phases} | "
                         f"{row['total_cpu_s']:.1f} |")
    scale = result.get("scale")
    if scale:
        dialogues = next(iter(scale.values())).get("kind") == "dialogues"
        lines += ["", "dedup_dataset on local Ray (this machine), synthetic PsyQA-shaped units read from Parquet "
                  "(generator at 10% near-duplicate answers, plus 5% planted near-duplicate units)"
                  + (", rewritten into dialogues by the offline server (the e2e bench's LLM), the job's dialogue "
                     "DedupConfig" if dialogues else ", default DedupConfig")
                  + ", object store capped (spills to disk beyond):",
                  "", "| rows | source MB | object store MB | wall s | rows/s | peak PSS MB | largest process MB | "
                  "marked | largest candidate component → resolved whole | phases (s) |", "|---" * 10 + "|"]
        for row in scale.values():
            phases = ", ".join(f"{k} {v:.1f}" for k, v in row["seconds"].items())
            largest = row.get("peak_processes") or [[0, ""]]
            lines.append(f"| {row['rows']:,} | {row.get('source_mb', 0):,.0f} | {row.get('object_store_mb', '-')} | "
                         f"{row['wall_s']:.1f} | {row['rows_per_s']:,.0f} | {row['peak_pss_mb']:,.0f} | "
                         f"{largest[0][0]:,.0f} ({largest[0][1][:40]}) | {sum(row['marked'].values()):,} | "
                         f"{row.get('largest_component', 0):,} → {row.get('largest_resolved', 0):,} | {phases} |")
        lines += ["", "At each size's peak, PSS MB by process group: " + "; ".join(
            f"{row['rows']:,} rows: " + ", ".join(f"{group} {mb:,.0f}" for group, mb in
                                                sorted(row.get("peak_pss_by_group_mb", {}).items()))
            for row in scale.values())]
    return "\n".join(lines) + "\n"


def _drift_markdown(drift: dict) -> list[str]:
    thresholds = list(next(iter(drift["curve"].values()))["thresholds"])
    lines = ["", "### Near-duplicate dialogues: where the defaults come from (`python bench/dedup.py --only drift`)", "",
             f"{drift['pairs']:,} drifted copies of {drift['bases']} of the sample's {drift['dialogues']:,} real "
             f"SMILECHAT dialogues (seed 0, soulray/dedup/drift.py; one copy per kind: {', '.join(drift['kinds'])}; "
             f"at most {drift['max_edited_share']:.1%} of characters edited), texts normalised as dedup does. "
             f"Recall: copies whose Jaccard with their base reaches the threshold (worst kind in brackets). "
             f"False marks: rows dedup marks among the {drift['dialogues']:,} distinct dialogues "
             f"({drift['shared_first_turn_pairs']:,} pairs of them share their first client turn), all pairs "
             f"at or above the threshold glued by union-find.", "",
             "Exact Jaccard (what verification decides), recall (worst kind) / false marks among dialogues:", "",
             "| shingles | copies: min J | distinct: max J | same first turn: max J | "
             + " | ".join(f"≥ {t}" for t in thresholds) + " |", "|---" * (4 + len(thresholds)) + "|"]
    for name, row in drift["curve"].items():
        cells = [f"{c['recall']:.3f} ({c['worst_kind_recall']:.2f}) / {c['false_marks']}"
                 for c in row["thresholds"].values()]
        lines.append(f"| {name} | {row['pair_jaccard_min']:.3f} | {row['distinct_max']:.3f} | "
                     f"{row['distinct_shared_first_turn_max']:.3f} | " + " | ".join(cells) + " |")
    lines += ["", f"The same curve's false marks among the sample's {drift['units']:,} Q&A units (question + answer, "
              "what source dedup compares; max J is of any two units):", "",
              "| shingles | max J | " + " | ".join(f"≥ {t}" for t in thresholds) + " |",
              "|---" * (2 + len(thresholds)) + "|"]
    for name, row in drift["curve"].items():
        lines.append(f"| {name} | {row['units_max']:.3f} | "
                     + " | ".join(str(c["false_marks_units"]) for c in row["thresholds"].values()) + " |")
    lines += ["", "The whole pipeline (dedup_texts: MinHash, LSH bands, verification), copies mixed in with all "
              "2,000 dialogues; a copy is found when it ends in its base's cluster. Candidates: LSH pairs among "
              "the distinct dialogues before verification, and expected per row at a million dialogues like "
              "these (the candidate graph's mean degree: past 1, one candidate component takes most rows):", "",
              "| setting | b × r | recall | worst kind | false marks, dialogues | false marks, units | "
              "candidates, 2,000 distinct | candidates per row at 1M | CPU s |", "|---|---|---|---|---|---|---|---|---|"]
    for name, row in drift["pipeline"].items():
        lines.append(f"| {name} | {row['bands']} × {row['rows']} | {row['recall']:.4f} | "
                     f"{row['worst_kind_recall']:.3f} ({row['worst_kind']}) | {row['false_marks']} | "
                     f"{row['false_marks_units']} | {row['distinct_candidates']} | "
                     f"{row['candidates_per_row_at_1m']:.3f} | {row['cpu_s']:.1f} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k and 100k rows at scale, fewer texts")
    parser.add_argument("--out", default=None, help="write dedup.json and dedup.md here")
    parser.add_argument("--only", choices=["throughput", "quality", "drift", "scale", "settings-cost"],
                        help="run one part (settings-cost: old vs new defaults, CPU seconds per phase, at "
                             "--sizes' first size, 100k by default)")
    parser.add_argument("--scale-one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help="where the scale runs' synthetic units are written (and reused)")
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--object-store-mb", type=int, default=OBJECT_STORE_MB, help="object store of each scale run")
    parser.add_argument("--sizes", help="scale sizes, comma-separated (default 10k,100k,1M; --quick 10k,100k)")
    parser.add_argument("--kind", choices=["units", "dialogues"], default="units",
                        help="scale: dedup source units, or the dialogues the offline server writes from them")
    parser.add_argument("--partition-mb", type=int, help="scale: the config's dedup partition_mb (default: its own)")
    args = parser.parse_args()
    if args.scale_one:
        result = scale_one(args.scale_one, Path(args.workdir), object_store_mb=args.object_store_mb, kind=args.kind,
                           partition_mb=args.partition_mb)
        Path(args.result).write_text(json.dumps(result))
        return 0
    sizes = [int(size) for size in args.sizes.split(",")] if args.sizes else None
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.workdir or scratch  # a kept --workdir reuses its synthetic units
        if args.only == "throughput":
            result = {"throughput": bench_throughput(count=400 if args.quick else 1500, repeats=3 if args.quick else 5)}
        elif args.only == "drift":
            result = {"drift": bench_drift(bases=150 if args.quick else 300)}
        elif args.only == "quality":
            result = {"quality": bench_quality(bases=150 if args.quick else 400)}
        elif args.only == "settings-cost":
            result = {"settings_cost": bench_settings_cost(Path(workdir), (sizes or [100_000])[0])}
        elif args.only == "scale":
            result = {"scale": bench_scale(Path(workdir), sizes or ([10_000, 100_000] if args.quick
                                                                     else [10_000, 100_000, 1_000_000]),
                                           object_store_mb=args.object_store_mb, kind=args.kind,
                                           partition_mb=args.partition_mb)}
        else:
            result = run(Path(workdir), args.quick)
    text = markdown(result)
    print(text)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "dedup.json").write_text(json.dumps(result, indent=2))
        (Path(args.out) / "dedup.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
