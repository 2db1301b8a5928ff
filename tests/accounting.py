"""The accounting invariant, checked after every fault-tolerance run (issue 10): every input row is
published or rejected exactly once, overall and per stage, as the manifest reports it and as the
version's own tables hold it."""

from __future__ import annotations

from collections import Counter

from soulray.schema import STAGE_ORDER
from soulray.store import Version


def assert_accounted(version: Version, *, record_ids: set[str] | None = None) -> None:
    """Inputs = published + rejected, in the manifest's counts and in the tables read back; per stage,
    the rejects each stage marked (reject table) are what the manifest's `by_stage` and the stage's own
    report say; no record_id twice across data and rejects; with `record_ids`, exactly those rows."""
    counts = version.manifest.counts
    data, rejects = version.to_table(), version.to_table("rejects")
    assert counts.input_rows == counts.output_rows + counts.rejected_rows, counts
    assert (data.num_rows, rejects.num_rows) == (counts.output_rows, counts.rejected_rows), counts
    by_stage: dict[str, Counter[str]] = {}
    for row in rejects.select(["stage", "reason"]).to_pylist():
        assert row["stage"] in STAGE_ORDER and row["reason"], row  # a known stage, a named reason
        by_stage.setdefault(row["stage"], Counter())[row["reason"]] += 1
    assert by_stage == counts.by_stage, (by_stage, counts.by_stage)
    remaining = counts.input_rows  # rows into a stage = rows out of it + rows it rejected
    for stage in [s for s in STAGE_ORDER if s in by_stage]:
        remaining -= sum(by_stage[stage].values())
        assert remaining >= 0, (stage, counts)
    assert remaining == counts.output_rows, counts
    for stage, report in version.manifest.stages.items():  # stages that report themselves (dedup)
        if report.dedup is not None:
            assert report.dedup.rows_marked == sum(by_stage.get(stage, {}).values()), (stage, report)
    ids = data["record_id"].to_pylist() + rejects["record_id"].to_pylist()
    duplicated = [record_id for record_id, n in Counter(ids).items() if n > 1]
    assert not duplicated, f"record_ids published or rejected twice: {duplicated[:5]}"
    if record_ids is not None:
        assert set(ids) == record_ids, (len(set(ids) - record_ids), len(record_ids - set(ids)))
