"""Repairs instead of rejects (issue 16): trailing client turns trimmed, leading counselor turns dropped,
same-role turns merged within the turn-length limit; every other utterance byte-identical."""

from __future__ import annotations

from collections import Counter

import pyarrow.compute as pc

from soulray.filters import DIALOGUE_STAGE, build_chain
from soulray.filters.batch import batch_from_table
from soulray.filters.dialogue import DialogueFormatSpec
from soulray.filters.quality import TurnLengthSpec
from soulray.filters.registry import FiltersConfig
from soulray.filters.repair import DialogueRepair, DialogueRepairSpec
from soulray.repair import TurnLimits, plan_repair, repair_messages
from tests.filters.tables import dialogues, good_dialogue, reasons, smilechat

LIMITS = TurnLimits()
# smile-00113 (the shared sample): a complete dialogue, then the client's thanks
THANKS = "谢谢你的支持和鼓励，我会加倍努力的！"
# smile-09583: the counselor's last answer split in two turns (132 and 45 characters)
SPLIT = ("直接在脸上表达不满或者憋在心里都不是一个有效的解决方法。当我们面对事情不合心意时，可以先冷静下来并观察自己为什么不满意。",
         "以上是我的一些建议，希望对你有所帮助。如果还有其他问题或者需要进一步的帮助，请随时告诉我。")


def chain(*specs):
    return build_chain(list(specs), stage=DIALOGUE_STAGE, kind="dialogue")


def test_plan_trims_drops_and_merges_within_the_limit():
    assert plan_repair(["user", "assistant", "user"], [10, 10, 10], limits=LIMITS).groups == [[0], [1]]
    plan = plan_repair(["assistant", "user", "assistant", "assistant", "user"], [5, 5, 5, 5, 5], limits=LIMITS)
    assert plan.groups == [[1], [2, 3]] and plan.kinds == ("leading_counselor", "trailing_client", "merged_turns")
    over = plan_repair(["user", "assistant", "assistant"], [5, 400, 300], limits=LIMITS)  # 701 > 700
    assert over.groups == [[0], [1], [2]] and not over.changed
    assert not plan_repair(["user", "assistant"], [5, 5], limits=LIMITS).changed


def test_what_no_repair_fixes_is_left_for_its_reason():
    for roles in (["user", "user"], ["assistant", "user"], ["user", "system", "assistant"], []):
        assert not plan_repair(roles, [1] * len(roles), limits=LIMITS).changed


def test_chain_repairs_real_dialogues_and_keeps_other_utterances_byte_identical():
    thanks = good_dialogue(8) + [{"role": "user", "content": THANKS}]
    split = good_dialogue(8)[:-1] + [{"role": "assistant", "content": SPLIT[0]},
                                     {"role": "assistant", "content": SPLIT[1]}]
    leading = [{"role": "assistant", "content": "你好，有什么想聊的吗？"}] + good_dialogue(8)
    table = dialogues(thanks, split, leading, good_dialogue(8))
    out = chain(DialogueRepairSpec(name="dialogue_repair"), DialogueFormatSpec(name="dialogue_format"))(table)
    assert reasons(out) == [None] * 4
    messages = out["messages"].to_pylist()
    assert messages[0] == good_dialogue(8) and messages[2] == good_dialogue(8) and messages[3] == good_dialogue(8)
    assert messages[1][:-1] == good_dialogue(8)[:-1]
    assert messages[1][-1] == {"role": "assistant", "content": SPLIT[0] + "\n" + SPLIT[1]}
    assert out["flags"].to_pylist() == [["repair:trailing_client"], ["repair:merged_turns"],
                                        ["repair:leading_counselor"], None]


def test_a_repair_that_leaves_a_failing_dialogue_still_rejects():
    short = [{"role": "user", "content": "我最近总是睡不着。"}, {"role": "assistant", "content": "能说说发生了什么吗？"},
             {"role": "user", "content": THANKS}]
    too_long = good_dialogue(3) + [{"role": "assistant", "content": "好" * 400}, {"role": "assistant", "content": "好" * 400}]
    out = chain(DialogueRepairSpec(name="dialogue_repair"), DialogueFormatSpec(name="dialogue_format"))(
        dialogues(short, too_long))
    assert reasons(out) == ["turn_count", "repeated_role"]
    assert out["reject_detail"].to_pylist()[0] == "2 turns, fewer than 4"


def test_merge_limit_follows_the_turn_length_spec():
    split = good_dialogue(8)[:-1] + [{"role": "assistant", "content": SPLIT[0]},
                                     {"role": "assistant", "content": SPLIT[1]}]
    strict = DialogueRepair(max_user_chars=500, max_first_user_chars=1800, max_assistant_chars=100)
    assert strict.apply(batch_from_table(dialogues(split), "dialogue")).batch is None
    assert DialogueRepairSpec(name="dialogue_repair").max_assistant_chars == \
        TurnLengthSpec(name="turn_length").max_assistant_chars


def test_rows_already_rejected_are_not_repaired():
    thanks = good_dialogue(8) + [{"role": "user", "content": THANKS}]
    table = dialogues({"messages": thanks, "reject_stage": "x", "reject_reason": "earlier", "reject_detail": ""})
    out = chain(DialogueRepairSpec(name="dialogue_repair"))(table)
    assert out["messages"].to_pylist()[0] == thanks and out["flags"].to_pylist() == [None]


def test_the_sample_is_repaired_not_rejected_and_nothing_else_changes():
    """The shared sample: 274 of 2,000 ended with the client and 12 repeated a role (the old chain's
    rejects); after the repair step every dialogue's kept utterances are its own, byte for byte."""
    table = smilechat()
    out = chain(DialogueRepairSpec(name="dialogue_repair"))(table)
    flags = Counter(flag for row in out["flags"].to_pylist() if row for flag in row)
    assert flags["repair:trailing_client"] >= 270 and flags["repair:merged_turns"] >= 5
    for before, after in zip(table["messages"].to_pylist(), out["messages"].to_pylist(), strict=True):
        if before == after:
            continue
        repaired, _ = repair_messages(before, limits=LIMITS)
        assert after == repaired
        originals = {turn["content"] for turn in before}
        for turn in after:  # every utterance is an original one, or originals joined by a line break
            assert turn["content"] in originals or all(part in originals for part in turn["content"].split("\n"))
    formatted = chain(*[spec for spec in FiltersConfig().dialogue if spec.name in ("dialogue_repair", "dialogue_format")])(table)
    rejected = Counter(reason for reason in reasons(formatted) if reason)
    assert "not_ending_with_counselor" not in rejected and rejected["repeated_role"] <= 2
    assert pc.sum(pc.list_value_length(formatted["messages"])).as_py() < pc.sum(
        pc.list_value_length(table["messages"])).as_py()
