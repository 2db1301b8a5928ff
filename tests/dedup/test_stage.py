"""The dedup stage on a real local Ray: the same decisions as the pure core, every row back once."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from soulray.dedup import cluster
from soulray.dedup.cluster import Members, resolve
from soulray.dedup.settings import DedupConfig
from soulray.dedup.stage import (
    KEY_ROW_BYTES,
    MIN_KEYS_PER_PARTITION,
    ROW_ID,
    DedupReport,
    _collect,
    _hold,
    _pack,
    _Settings,
    _shuffle_keys,
    _Sizing,
    _task_rows,
    dedup_dataset,
)
from soulray.dedup.text import DedupInputError, content_hashes, normalise, row_texts
from soulray.schema import WORKING_UNIT
from soulray.store import VersionStore, open_version
from tests.dedup.conftest import dialogues_table, units_table
from tests.dedup.test_cluster import A, B, C

# low enough that the A~B~C chain of test_cluster is found (true Jaccard 0.75 and 0.62; A~C 0.44)
CONFIG = DedupConfig(threshold=0.6, bands=32, rows=4, verify="jaccard")


def planted_units(smile_qa: list[dict]) -> tuple[pa.Table, dict[str, int]]:
    rows = [{"question": r["question"], "answer": r["answer"]} for r in smile_qa[:240]]
    planted = {"copy_of_5": dict(rows[5]),
               "chain_a": {"question": "失眠怎么办", "answer": A},
               "chain_b": {"question": "失眠怎么办", "answer": B},
               "chain_c": {"question": "失眠怎么办", "answer": C},
               "marked_copy_of_7": {**rows[7], "reject_stage": "filter_source", "reject_reason": "too_short",
                                    "reject_detail": "x"},
               "empty_1": {"question": "", "answer": "。"},
               "empty_2": {"question": "", "answer": ""}}
    at = {}
    for name, row in planted.items():
        at[name] = len(rows)
        rows.append(row)
    return units_table(rows), at


def oracle(table: pa.Table, config: DedupConfig) -> dict[int, tuple[str, str]]:
    """The pure core over the whole table at once, with the config's shingles, signatures and rules:
    source_row -> (reason, kept record_id)."""
    texts = normalise(row_texts(table))
    active = [i for i, (text, mark) in enumerate(zip(texts.to_pylist(), table["reject_reason"].to_pylist(),
                                                     strict=True)) if text and mark is None]
    sub, subtexts = table.take(active), texts.take(active)
    settings = _Settings.of(config)
    members = Members(ordinal=np.array(sub["source_row"].to_pylist()), record_id=sub["record_id"].to_pylist(),
                      text_length=np.array([len(t) for t in subtexts.to_pylist()]),
                      content_hash=content_hashes(subtexts), published=np.zeros(len(active), bool),
                      signatures=settings.hasher.signatures(subtexts), texts=subtexts.to_pylist(),
                      provenance=[f"{f}\x1f{r:020d}" for f, r in zip(sub["source_file"].to_pylist(),
                                                                sub["source_row"].to_pylist(), strict=True)])
    decisions = resolve(members, settings.rules)
    return {int(o): (reason, json.loads(d)["kept"])
            for o, reason, d in zip(decisions.ordinal, decisions.reason, decisions.detail, strict=True)}


def marks_of(rows: list[dict]) -> dict[int, tuple[str, str]]:
    return {r["source_row"]: (r["reject_reason"], json.loads(r["reject_detail"])["kept"])
            for r in rows if r["reject_stage"] == "dedup_source"}


def test_units_marked_as_the_pure_core_decides(ray_local, smile_qa):
    table, at = planted_units(smile_qa)
    blocks = [table.slice(start, 37) for start in range(0, table.num_rows, 37)]  # clusters span blocks
    out, report = dedup_dataset(ray_local.data.from_arrow(blocks), config=CONFIG)
    rows = out.take_all()

    # accounting: every row exactly once, nothing added
    assert sorted(r["source_row"] for r in rows) == list(range(table.num_rows))
    assert ROW_ID not in out.columns() and set(WORKING_UNIT.names) <= set(out.columns())
    marks = marks_of(rows)
    assert marks == oracle(table, CONFIG)
    assert report.rows_marked == len(marks) and report.input_rows == table.num_rows
    assert report.considered_rows == table.num_rows - 3  # one pre-marked row, two empty texts
    assert report.clusters == len({kept for _, kept in marks.values()})
    assert set(report.seconds) == {"identify", "fingerprint", "buckets", "components", "resolve", "mark"}
    assert 3 <= report.largest_component < table.num_rows // 2  # the A~B~C chain at least; not everything

    # the planted facts, by hand
    by_row = {r["source_row"]: r for r in rows}
    assert marks[at["copy_of_5"]] == ("exact_duplicate", by_row[5]["record_id"])
    chain = sorted(by_row[at[k]]["record_id"] for k in ("chain_a", "chain_b", "chain_c"))
    assert sum(1 for k in ("chain_a", "chain_b", "chain_c") if at[k] in marks) == 2  # A~B~C: one cluster
    assert {marks[at[k]][1] for k in ("chain_a", "chain_b", "chain_c") if at[k] in marks} == {chain[0]}
    assert by_row[at["marked_copy_of_7"]]["reject_reason"] == "too_short" and 7 not in marks
    assert at["empty_1"] not in marks and at["empty_2"] not in marks
    detail = json.loads(by_row[at["copy_of_5"]]["reject_detail"])
    assert detail["similarity"] == 1.0 and detail["kept_from"] == "input"


def test_same_marks_whatever_the_batches_and_partitions(ray_local, smile_qa):
    # batch_rows and the partition count bound memory per task; they must not change a decision
    table, _ = planted_units(smile_qa)
    config = CONFIG.model_copy(update={"batch_rows": 64, "num_partitions": 5})
    out, report = dedup_dataset(ray_local.data.from_arrow(table), config=config)
    assert marks_of(out.take_all()) == oracle(table, CONFIG)
    assert report.partitions == {"buckets": 5, "resolve": 5}


def test_a_component_too_large_for_one_task_is_verified_in_pieces(ray_local, smile_qa, monkeypatch):
    """Issue 22: a stock opening and closing around every answer (as the offline rewrite's dialogues have) chains
    the rows into one candidate component, which one task resolved (291,450 dialogues, 2.7 GB, at 1M). Cut
    into pieces of at most component_rows / 2, verified two pieces a task, the marks are the pure core's
    when it checks every pair sharing a band (a piece pair holds at most 40 rows, so every pair is checked;
    the whole component, with template buckets over ALL_PAIRS_MAX_BUCKET rows, checks only a chain)."""
    opening = "我能感受到你现在的不容易，谢谢你愿意把这些说出来，你的感受是可以理解的，我在这里愿意听你慢慢说。"
    closing = "如果你愿意的话，我们可以一起慢慢梳理这些感受，找到适合你的方式去面对它们。"
    rows = [{"question": "心情不好怎么办", "answer": opening + r["answer"][:120] + closing} for r in smile_qa[:300]]
    rows += [dict(rows[7]), {**rows[9], "answer": rows[9]["answer"] + "加油。"}]
    table = units_table(rows)
    whole = dedup_dataset(ray_local.data.from_arrow(table), config=CONFIG)[1]
    assert whole.largest_component > 200 and not whole.split_components  # the template's one component

    out, report = dedup_dataset(ray_local.data.from_arrow(table), config=CONFIG.model_copy(update={"component_rows": 40}))
    marks = marks_of(out.take_all())
    chained = oracle(table, CONFIG)
    monkeypatch.setattr(cluster, "ALL_PAIRS_MAX_BUCKET", 10 ** 6)
    assert marks == oracle(table, CONFIG) and len(marks) >= 30
    assert set(chained) <= set(marks)  # checking every pair finds more, never less
    assert {7, 300} & set(marks) and {9, 301} & set(marks)  # the planted copy and the edited copy
    assert report.split_components == 1 and report.largest_component == whole.largest_component
    # what one task resolved after the split is the largest verified cluster, not the template's component
    assert report.largest_resolved == 1 + max(Counter(kept for _, kept in marks.values()).values())
    assert report.largest_resolved < report.largest_component
    assert "split" in report.seconds and report.partitions["split"] >= 1
    assert "1 candidate components split" in report.summary()


def test_the_split_tasks_are_packed_into_partitions_not_hashed(ray_local):
    """Issue 22: a split's tasks are few and equal; hashed into partitions they were lumpy (136 tasks into 88
    partitions: 4 in one, a 1.4 GB task at 1M dialogues). Now they are packed (largest first into the
    emptiest) and each partition gets a key Ray's keyed repartition sends to it."""
    tasks = _task_rows(330_032, 16)  # the 1M run's giant component, 16 pieces: 136 tasks
    assert len(tasks) == 136 and tasks.sum() == 16 * 330_032  # every row once per piece pair it is in
    assert tasks[0] == -(-330_032 // 16) and tasks[1] == tasks[0] + 330_032 // 16  # (0, 0) one piece, (0, 1) two
    for bins in (88, 136, 200):
        loads = np.bincount(_pack(tasks, bins), weights=tasks, minlength=bins)
        assert loads.max() <= tasks.sum() / bins + tasks.max()  # LPT: at most the share plus one task
    assert np.bincount(_pack(np.full(136, 10), 136)).max() == 1  # as many bins as tasks: one each

    for partitions in (2, 7, 88):
        keys = _shuffle_keys(partitions)
        assert len(set(keys.tolist())) == partitions
        table = pa.table({"component": np.repeat(keys, 3), "partition": np.repeat(np.arange(partitions), 3)})
        blocks = ray_local.data.from_arrow(table).repartition(partitions, keys=["component"]).to_arrow_refs()
        held = [ray_local.get(block) for block in blocks]
        # every key arrives alone in its own block: the plan survives Ray's shuffle
        assert sorted(len(set(block["component"].to_pylist())) for block in held if block.num_rows) == [1] * partitions


def _running_at_once(ray, verify_tasks: int | None) -> int:
    """Most reduce tasks of an 8-partition keyed shuffle that ran at once, collected as a verifying one is."""
    import time

    def hold(batch: pa.Table) -> pa.Table:
        start = time.time()
        time.sleep(1.0)
        return pa.table({"start": [start], "end": [time.time()]})

    # 8 partitions of ~2 MB, and a target of 2 MB: the limit is room for verify_tasks of them
    sizing = _Sizing(cpus=4, target_bytes=2 * 2 ** 20, fixed=None, verify_tasks=verify_tasks or 0)
    table = pa.table({"component": np.repeat(_shuffle_keys(8), 2_000), "pad": pa.array([b"x" * 1_000] * 16_000)})
    ds = ray.data.from_arrow(table).repartition(8, keys=["component"]).map_batches(
        hold, batch_size=None, batch_format="pyarrow")
    spans = _collect(ds, ("start", "end"), sizing, verifying=verify_tasks is not None)
    events = sorted([(t, 1) for t in spans["start"]] + [(t, -1) for t in spans["end"]])
    return max(np.cumsum([step for _, step in events]))


def test_verifying_tasks_run_at_most_verify_tasks_at_once(ray_local):
    """Issue 22: the 1M run's split ran four ~450 MB verify tasks at once (the local Ray's four logical CPUs,
    on 2 cores: no faster than two), and they stayed idle with their heaps through the resolve: 1.9 GB of the
    4.8 GB peak. A verifying shuffle now asks Ray Data to run at most verify_tasks partitions' tasks at once."""
    # unlimited, the four CPUs run several (four, when the reduce workers start in time: a loaded machine
    # starts them seconds apart)
    assert (unlimited := _running_at_once(ray_local, None)) >= 2, unlimited
    assert (limited := _running_at_once(ray_local, 1)) == 1, limited
    assert ray_local.data.DataContext.get_current().execution_options.resource_limits.memory == float("inf")

    config = DedupConfig(partition_mb=128)
    assert _Sizing.of({"CPU": 4, "memory": 16 * GIB}, config, cores=2).verify_tasks == 2  # one node: its cores
    assert _Sizing.of({"CPU": 64, "memory": 256 * GIB}, config).verify_tasks == 64  # a cluster: its CPUs
    assert _Sizing.of({"CPU": 4, "memory": 16 * GIB}, DedupConfig(verify_tasks=3), cores=2).verify_tasks == 3
    # the limit is in what Ray Data asks per task (2x a partition): smaller partitions run more at once
    assert _Sizing.of({"CPU": 4, "memory": 16 * GIB}, config, cores=2).verify_memory() == 2 * 2 * 128 * 2 ** 20


GIB = 2 ** 30


def test_partitions_grow_with_the_rows_not_their_size():
    """Issue 22: partitions were capped at 2 per CPU, so each grew with the rows (1M units: 8 partitions of
    37M band keys / 8; 100M: the same 8, 7 GB each). Now one holds at most partition_mb however many rows."""
    sizing = _Sizing.of({"CPU": 4, "memory": 16 * GIB}, DedupConfig(partition_mb=128))
    assert sizing.target_bytes == 128 * 2 ** 20
    counts = []
    for units in (1_000, 100_000, 1_000_000, 10_000_000, 100_000_000):
        keys = 37 * units
        partitions = sizing.partitions(keys, KEY_ROW_BYTES, MIN_KEYS_PER_PARTITION)
        assert keys * KEY_ROW_BYTES / partitions <= sizing.target_bytes
        counts.append(partitions)
    assert counts[0] == 1  # a small input is not cut into tasks of nothing
    assert counts == sorted(counts) and counts[-1] >= 400  # 100M units: 59 GB of keys → ≥ 442 partitions
    assert sizing.partitions(1_000_000, 16, 200_000) == 5  # work spread: 2 per CPU while each keeps 200k rows

    # a node with little memory per CPU lowers the target (a quarter of it), an explicit count wins
    assert _Sizing.of({"CPU": 4, "memory": 1 * GIB}, DedupConfig(partition_mb=128)).target_bytes == 64 * 2 ** 20
    assert _Sizing.of({"CPU": 4, "memory": 16 * GIB}, DedupConfig(num_partitions=3)).partitions(10 ** 9, 16, 1) == 3

    report = DedupReport(stage="dedup_dialogue")
    # 1M units' 37M band keys (592 MB): 8 partitions (2 per CPU) of 70.6 MB; 10M: 45 of 125.5 MB
    keys = {"row_bytes": KEY_ROW_BYTES, "min_rows": MIN_KEYS_PER_PARTITION}
    assert sizing.plan(report, "buckets", rows=1_700_000, **keys) == 1  # 100k units: one task, as before
    assert sizing.plan(report, "buckets", rows=37_000_000, **keys) == 8
    assert sizing.plan(report, "buckets", rows=370_000_000, **keys) == 45
    assert report.partitions == {"buckets": 45} and report.partition_mb == {"buckets": 125.5}
    assert "partitions buckets 45 × 125.5 MB" in report.summary()


def test_dialogues_and_cross_version(ray_local, smile_dialogs, smile_qa, tmp_path):
    dialogs = [dict(d) for d in smile_dialogs[:80]]
    edited = [dict(m) for m in dialogs[3]["messages"]]
    edited[-1] = {**edited[-1], "content": edited[-1]["content"] + "祝你一切顺利。"}
    table = dialogues_table(dialogs + [dialogs[10], {"id": "edited", "messages": edited}])
    out, report = dedup_dataset(ray_local.data.from_arrow(table), config=DedupConfig(threshold=0.8))
    rows = out.take_all()
    assert sorted(r["source_row"] for r in rows) == list(range(table.num_rows)) and report.stage == "dedup_dialogue"
    marked = {r["source_row"]: r for r in rows if r["reject_stage"] == "dedup_dialogue"}
    # one of each pair is marked, whichever has the higher record_id
    assert len({10, 80} & set(marked)) == 1 and len({3, 81} & set(marked)) == 1 and len(marked) == 2
    exact, near = marked[max({10, 80} & set(marked))], marked[max({3, 81} & set(marked))]
    assert exact["reject_reason"] == "exact_duplicate" and near["reject_reason"] == "near_duplicate"
    assert json.loads(near["reject_detail"])["similarity"] >= 0.8

    # a new run against a published version: new copies of published rows are marked, kept_from published
    store = VersionStore(str(tmp_path / "store"), "units")
    published = units_table([{"question": r["question"], "answer": r["answer"]} for r in smile_qa[:60]])
    from tests.store.test_store import write_version

    store.commit(write_version(store, "v1", published.select([n for n in published.column_names
                                                               if not n.startswith("reject_")])))
    fresh = units_table([{"question": r["question"], "answer": r["answer"]} for r in smile_qa[55:90]])
    out, report = dedup_dataset(ray_local.data.from_arrow(fresh), config=CONFIG,
                                against=open_version("latest", root=str(tmp_path / "store"), dataset="units"))
    rows = out.take_all()
    assert len(rows) == fresh.num_rows and report.published_rows == 60
    against_published = {r["source_row"] for r in rows
                          if r["reject_detail"] and json.loads(r["reject_detail"])["kept_from"] == "published"}
    assert {0, 1, 2, 3, 4} <= against_published  # rows 55-59 of the sample are in v1


def test_empty_and_one_row(ray_local, smile_qa):
    empty, report = dedup_dataset(ray_local.data.from_arrow(units_table([])), config=CONFIG)
    assert empty.count() == 0 and report.rows_marked == 0 and report.input_rows == 0
    one, report = dedup_dataset(ray_local.data.from_arrow(units_table(smile_qa[:1])), config=CONFIG)
    rows = one.take_all()
    assert len(rows) == 1 and rows[0]["reject_reason"] is None and report.considered_rows == 1


def test_disabled_and_bad_input(ray_local, smile_qa):
    table = units_table([smile_qa[0], smile_qa[0]])
    out, report = dedup_dataset(ray_local.data.from_arrow(table), config=DedupConfig(enabled=False))
    assert [r["reject_reason"] for r in out.take_all()] == [None, None] and report.rows_marked == 0
    from soulray.dedup.text import DedupInputError

    with pytest.raises(DedupInputError, match="record_id"):
        dedup_dataset(ray_local.data.from_arrow(table.drop_columns(["record_id"])), config=CONFIG)
    assert Counter(r["reject_reason"] for r in dedup_dataset(ray_local.data.from_arrow(table),
                                                             config=CONFIG)[0].take_all()) \
        == Counter({None: 1, "exact_duplicate": 1})


def _slow_block(batch: pa.Table, *, out: str) -> pa.Table:
    """One 8 MB block a task, each task's start and end written down."""
    import time

    start = time.time()
    time.sleep(0.3)
    row = int(batch["id"][0].as_py())
    (Path(out) / str(row)).write_text(json.dumps([start, time.time()]))
    return pa.table({"id": [row], "payload": [np.random.default_rng(row).bytes(8 << 20)]})


def test_the_rows_dedup_holds_leave_the_pipeline_its_object_store_budget(ray_local, tmp_path):
    """Issue 22: dedup holds everything upstream of it (for the dialogue dedup, the whole rewrite). Held with
    materialize(), Ray Data 2.60 counts those blocks against the producing operator's object-store budget
    (half the 1 GB store), and past it runs one task at a time (the 1M run's second rewrite actor idled;
    materialize() here: one task at a time over the last 20 of 80 × 8 MB blocks). Held as copies, the tasks
    keep overlapping to the end."""
    ds = ray_local.data.range(80, override_num_blocks=80).map_batches(
        _slow_block, fn_kwargs={"out": str(tmp_path)}, batch_size=None, num_cpus=0.5, batch_format="pyarrow")
    held = _hold(ds)
    assert held.count() == 80 and sorted(held.select_columns(["id"]).to_pandas()["id"]) == list(range(80))
    spans = sorted(json.loads(path.read_text()) for path in tmp_path.iterdir())
    last = spans[-20:]
    overlap = max(sum(1 for start, end in last if start <= at + 0.01 < end) for at, _ in last)
    assert len(spans) == 80 and overlap >= 2


def test_held_rows_are_joined_into_fewer_blocks(ray_local):
    """Issue 22: the rewrite hands dedup blocks of ~120 rows (~8,100 at 1M), and every block is a task of each
    phase after (the mark phase took 362 s at 1M). `_hold` joins consecutive blocks up to its block size; a
    column null in some blocks takes the others' type, and blocks whose types clash are a clear error."""
    small = ray_local.data.range(2_000, override_num_blocks=100)
    held = _hold(small, block_bytes=4_000)  # 20 rows of 8 bytes a block: ~25 blocks of 500 rows
    assert 2 <= held.num_blocks() <= 8
    assert sorted(held.to_pandas()["id"].tolist()) == list(range(2_000))

    def nulls_from(batch: pa.Table, kind: str) -> pa.Table:
        """Ids from 1,000 on as text; below it, nulls (joined) or numbers (they disagree)."""
        if batch["id"][0].as_py() >= 1_000:
            return pa.table({"id": pa.array(batch["id"].to_numpy().astype(str))})
        return pa.table({"id": pa.nulls(batch.num_rows)}) if kind == "nulls" else batch
    typed = ray_local.data.range(2_000, override_num_blocks=20).map_batches(
        nulls_from, fn_kwargs={"kind": "nulls"}, batch_size=None, batch_format="pyarrow")
    held = _hold(typed, block_bytes=1 << 30)
    assert held.num_blocks() == 1 and held.schema().types == [pa.string()]
    assert sorted(held.to_pandas()["id"].dropna().astype(int)) == list(range(1_000, 2_000))
    clashing = ray_local.data.range(2_000, override_num_blocks=20).map_batches(
        nulls_from, fn_kwargs={"kind": "numbers"}, batch_size=None, batch_format="pyarrow")
    with pytest.raises(DedupInputError, match="disagree on their columns"):
        _hold(clashing, block_bytes=1 << 30)
