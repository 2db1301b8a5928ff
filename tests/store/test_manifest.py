"""The manifest's typed parts, and manifests published before they were typed."""

from __future__ import annotations

import json

from soulray.report import text
from soulray.store.manifest import Changes, Manifest

# A manifest as the store wrote it before Counts, Usage, Changes and StageReport were typed: usage and
# changes `{}` when empty, dedup's facts as a bare dict, its phase times in timings_s.
DICT_FORM = {
    "format": "soulray.manifest/1", "dataset": "d", "version": "v1", "run_id": "r1", "created_at": "2026-11-30T00:00:00Z",
    "parent_version": None, "code_version": "soulray 0.1.0", "job": "clean", "config_hash": "abc", "config": {},
    "inputs": [], "data_schema": [], "reject_schema": [], "data": [], "rejects": [],
    "counts": {"input_rows": 3, "output_rows": 2, "rejected_rows": 1, "by_stage": {"dedup_dialogue": {"near_duplicate": 1}}},
    "timings_s": {"plan_s": 0.1, "dedup_dialogue_identify_s": 1.5, "dedup_dialogue_mark_s": 0.2, "pipeline_s": 2.0},
    "usage": {}, "changes": {},
    "stages": {"dedup_dialogue": {"clusters": 1, "rows_marked": 1, "marked": {"near_duplicate": 1},
                                  "considered_rows": 3, "bands": 16, "rows_per_band": 16, "candidate_edges": 1,
                                  "largest_component": 2}},
}


def test_a_dict_form_manifest_loads_typed_and_renders():
    manifest = Manifest.model_validate(DICT_FORM)
    assert manifest.usage is None and manifest.changes is None
    assert manifest.counts.by_stage == {"dedup_dialogue": {"near_duplicate": 1}}
    report = manifest.stages["dedup_dialogue"]
    assert report.dedup.clusters == 1 and report.seconds == {"identify": 1.5, "mark": 0.2}
    assert "dedup   dedup_dialogue: 1 clusters, 1 rows marked" in text(manifest)


def test_typed_parts_round_trip_through_json():
    manifest = Manifest.model_validate(DICT_FORM).model_copy(
        update={"changes": Changes(parent="v0", added=1, removed=0, kept=2)})
    again = Manifest.model_validate(json.loads(manifest.to_json()))
    assert again == manifest and "1 added, 0 removed, 2 kept since v0" in text(again)
