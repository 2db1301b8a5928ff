"""The chain: order decides the reason, only unmarked rows are judged, nothing is removed, kept rows
carry scores, and chains come from config."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from soulray.config import CleanConfig, load_config
from soulray.errors import ConfigError
from soulray.filters import DIALOGUE_STAGE, SOURCE_STAGE, build_chain
from soulray.filters.dialogue import DialogueFormatSpec
from soulray.filters.ethics import CrisisSpec
from soulray.filters.pii import PiiSpec
from soulray.filters.registry import FiltersConfig
from soulray.schema import WORKING_DIALOGUE, WORKING_UNIT
from tests.filters.tables import dialogues, good_dialogue, reasons, smilechat, units


def dialogue_chain(*specs):
    return build_chain(list(specs), stage=DIALOGUE_STAGE, kind="dialogue")


def test_order_decides_which_reason_a_row_gets():
    short_crisis = good_dialogue(2)
    short_crisis[0] = {"role": "user", "content": "我想自杀"}
    table = dialogues(short_crisis)
    crisis, fmt = CrisisSpec(name="crisis_screen"), DialogueFormatSpec(name="dialogue_format")
    assert reasons(dialogue_chain(crisis, fmt)(table)) == ["crisis_review"]
    assert reasons(dialogue_chain(fmt, crisis)(table)) == ["turn_count"]


def test_rows_already_rejected_keep_their_mark():
    table = dialogues({"messages": None, "reject_stage": "rewrite", "reject_reason": "http_400", "reject_detail": "x"},
                      good_dialogue(2), good_dialogue(8))
    out = dialogue_chain(*FiltersConfig().dialogue)(table)
    assert out["reject_stage"].to_pylist() == ["rewrite", DIALOGUE_STAGE, None]
    assert reasons(out) == ["http_400", "turn_count", None]
    assert out.schema == WORKING_DIALOGUE and out.num_rows == 3


def test_default_chain_over_the_smilechat_sample():
    table = smilechat()
    out = dialogue_chain(*FiltersConfig().dialogue)(table)
    assert out.num_rows == table.num_rows and out["record_id"].equals(table["record_id"])
    counts = Counter(reason for reason in reasons(out) if reason)
    kept = out.filter(pc.is_null(out["reject_reason"]))
    assert sum(counts.values()) + kept.num_rows == table.num_rows
    # not_ending_with_counselor (14% of the sample before repairs) is repaired now, not rejected
    assert {"turn_count", "repeated_role", "crisis_review"} <= set(counts)
    assert "not_ending_with_counselor" not in counts
    assert set(out.filter(pc.is_valid(out["reject_reason"]))["reject_stage"].to_pylist()) == {DIALOGUE_STAGE}
    scores = kept["scores"].to_pylist()[0]
    assert {key for key, value in scores.items() if value is not None} == {
        "advice_list_rate", "cjk_ratio", "crisis_turns", "length_ratio", "marker_stock_opening", "pii_redactions",
        "repetition"}
    assert table["scores"].null_count == table.num_rows  # the input table is not modified


def test_crisis_flag_fills_flags_and_keeps_the_row():
    crisis = good_dialogue(8)
    crisis[2] = {"role": "user", "content": "我有时候想死"}
    out = dialogue_chain(CrisisSpec(name="crisis_screen", action="flag"))(dialogues(crisis, good_dialogue(8)))
    assert reasons(out) == [None, None]
    assert out["flags"].to_pylist() == [["crisis_screen"], None]
    assert out["scores"].to_pylist()[0]["crisis_turns"] == 1.0


def test_flags_set_before_the_chain_are_kept():
    """The parser's repairs arrive in `flags`; the chain adds its own beside them."""
    crisis = good_dialogue(8)
    crisis[2] = {"role": "user", "content": "我有时候想死"}
    table = dialogues(crisis, good_dialogue(8))
    table = table.set_column(table.schema.get_field_index("flags"), "flags",
                             pa.array([["repair:trailing_client"], None], pa.list_(pa.string())))
    out = dialogue_chain(CrisisSpec(name="crisis_screen", action="flag"))(table)
    assert out["flags"].to_pylist() == [["repair:trailing_client", "crisis_screen"], None]


def test_details_quote_redacted_text_when_redaction_runs_first():
    leaky = good_dialogue(4)
    leaky[3] = {"role": "assistant", "content": "好的。求助者：我的电话是13812345678"}
    out = dialogue_chain(PiiSpec(name="pii_redact"), DialogueFormatSpec(name="dialogue_format", min_turns=4))(
        dialogues(leaky))
    assert reasons(out) == ["role_label_in_turn"]
    assert "<PHONE>" in out["reject_detail"][0].as_py() and "13812345678" not in out["reject_detail"][0].as_py()


def test_source_chain_rewrites_text_and_rejects_before_the_rewrite():
    table = units({"question": "楼主你好，我的电话13812345678", "answer": "抱抱楼主，慢慢来，我们一起想办法。"},
                  {"question": "我最近一直想自杀", "answer": "谢谢你愿意说出来，你现在安全吗？"},
                  {"question": "焦虑", "answer": "嗯"},
                  {"question": "短", "answer": "", "reject_stage": "normalize", "reject_reason": "empty_answer"})
    out = build_chain(FiltersConfig().source, stage=SOURCE_STAGE, kind="unit")(table)
    assert out.schema == WORKING_UNIT
    assert out["question"].to_pylist()[0] == "你好，我的电话<PHONE>"
    assert out["answer"].to_pylist()[0] == "慢慢来，我们一起想办法。"
    assert reasons(out) == [None, "crisis_review", "too_short", "empty_answer"]
    assert out["reject_detail"][1].as_py().startswith("terms 自杀 in question;")
    assert out["reject_stage"].to_pylist() == [None, SOURCE_STAGE, SOURCE_STAGE, "normalize"]
    assert out["record_id"].equals(table["record_id"])  # identity is the source's, before any cleaning


def test_a_dialogue_only_filter_cannot_run_on_units(tmp_path):
    with pytest.raises(ConfigError, match="dialogue_format"):
        build_chain([DialogueFormatSpec(name="dialogue_format")], stage=SOURCE_STAGE, kind="unit")
    path = tmp_path / "clean.yaml"
    path.write_text("input: {path: x}\nfilters:\n  source:\n    - {name: pii_redact}\n    - {name: dialogue_format}\n")
    with pytest.raises(ConfigError, match="source.1: dialogue_format checks dialogues"):
        load_config(CleanConfig, path)


def test_config_overrides_patch_the_default_chain():
    config = load_config(CleanConfig, None, ["input.path=x", "filters.dialogue.4.min_turns=8",
                                             "filters.dialogue.6.action=flag"])
    assert config.filters.dialogue[4] == DialogueFormatSpec(name="dialogue_format", min_turns=8)
    assert config.filters.dialogue[6].action == "flag"
    assert [spec.name for spec in config.filters.dialogue] == [spec.name for spec in FiltersConfig().dialogue]
    with pytest.raises(ConfigError, match="filters.dialogue.4.dialogue_format.min_turn: unknown key"):
        load_config(CleanConfig, None, ["input.path=x", "filters.dialogue.4.min_turn=4"])
    with pytest.raises(ConfigError, match="the default dialogue chain has 15 filters"):
        load_config(CleanConfig, None, ["input.path=x", "filters.dialogue.15.min_turns=4"])


def test_an_empty_chain_changes_nothing():
    table = dialogues(good_dialogue(2))
    assert build_chain([], stage=DIALOGUE_STAGE, kind="dialogue")(table).equals(table)
