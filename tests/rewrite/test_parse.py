from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from soulray.repair import TurnLimits, repair_messages
from soulray.rewrite.parse import parse_completion, render_dialogue

DIALOGS = Path(__file__).parent.parent.parent / "soulray" / "data" / "demo" / "dialogs.parquet"
GOOD = "\n".join(f"{'用户' if i % 2 == 0 else '心理咨询师'}：第{i}句话。" for i in range(10))


def test_real_smilechat_dialogs_round_trip_or_reject_with_reason():
    reasons, repairs = Counter(), Counter()
    for row in pq.read_table(DIALOGS).to_pylist():
        messages = [{"role": m["role"], "content": m["content"].strip()} for m in row["messages"]]
        for labels in (("用户", "心理咨询师"), ("求助者", "支持者")):
            parsed = parse_completion(render_dialogue(messages, *labels), min_turns=2, max_turns=100)
            if parsed.ok:
                assert parsed.messages == repair_messages(messages, limits=TurnLimits())[0]
                repairs.update(parsed.repairs)
            reasons[parsed.reason] += 1
    # 46 of the 300 end with the client's thanks and one repeats the counselor: repaired, not re-asked
    assert reasons == Counter({None: 600})
    assert repairs == Counter({"trailing_client": 92, "merged_turns": 2})


def test_formats_real_models_produce():
    analysis = "分析：用户的需求是被理解。\n心理咨询师使用了倾听和共情。\n\n改写结果：\n\n"
    variants = [GOOD, GOOD.replace("：", ":"), analysis + GOOD, GOOD.replace("\n", "\n\n"),
                "\n".join(f"**{line.split('：')[0]}**：{line.split('：')[1]}" for line in GOOD.splitlines()),
                GOOD.replace("用户", "求助者").replace("心理咨询师", "支持者")]
    for text in variants:
        parsed = parse_completion(text)
        assert parsed.ok, (parsed.reason, text[:80])
        assert [m["content"] for m in parsed.messages] == [f"第{i}句话。" for i in range(10)]


def test_continuation_lines_join_their_turn():
    text = GOOD + "\n这是上一句的续行。"
    assert parse_completion(text).messages[-1]["content"] == "第9句话。\n这是上一句的续行。"


@pytest.mark.parametrize("text, finish, reason", [
    (GOOD, "length", "truncated"),
    ("", "stop", "empty_completion"),
    ("我觉得这个问题很复杂，需要慢慢来。", "stop", "no_role_prefix"),
    ("抱歉，我无法完成这个改写请求。", "stop", "refusal"),
    ("I'm sorry, but I can't help with that.", "stop", "refusal"),
    ("用户：你好，我很难过。", "stop", "single_line"),
    (GOOD.replace("用户：第2句话", "用户：用户：第2句话"), "stop", "doubled_role_prefix"),
    ("心理咨询师：你好。\n用户：嗯。", "stop", "not_starting_with_user"),  # nothing left to repair
    # two user turns that a merge would take past the 500-character limit
    (GOOD.replace("心理咨询师：第3句话。", "用户：" + "长" * 498), "stop", "repeated_role"),
    ("用户：嗯。\n心理咨询师：好。\n用户：是。\n心理咨询师：对。", "stop", "turn_count"),
    ("\n".join([GOOD] * 3), "stop", "turn_count"),
    (GOOD.replace("第9句话。", "You are doing great, keep going."), "stop", "english_in_last_turn"),
    (GOOD.replace("用户：第4句话。", "用户："), "stop", "empty_turn"),
])
def test_rejects_name_their_reason(text, finish, reason):
    parsed = parse_completion(text, finish)
    assert not parsed.ok and parsed.reason == reason, parsed


def test_a_few_english_words_are_fine_in_the_last_turn():
    assert parse_completion(GOOD.replace("第9句话。", "可以试试 CBT 的方法。")).ok


def test_a_completion_ending_with_the_client_is_trimmed_not_re_asked():
    parsed = parse_completion(GOOD + "\n用户：谢谢你的鼓励，我会努力的。")
    assert parsed.ok and parsed.repairs == ("trailing_client",)
    assert parsed.messages == parse_completion(GOOD).messages  # every other utterance as it was


def test_leading_counselor_and_same_role_turns_are_repaired():
    parsed = parse_completion("心理咨询师：你好。\n" + GOOD.replace("心理咨询师：第3句话", "用户：第3句话"))
    assert parsed.ok and parsed.repairs == ("leading_counselor", "merged_turns")
    contents = [m["content"] for m in parsed.messages]
    assert contents[:3] == ["第0句话。", "第1句话。", "第2句话。\n第3句话。\n第4句话。"]
    assert contents[3:] == [f"第{i}句话。" for i in range(5, 10)]


def test_a_repair_that_leaves_too_few_turns_still_rejects():
    parsed = parse_completion("用户：你好。\n心理咨询师：你好。\n用户：嗯。\n心理咨询师：嗯。\n用户：谢谢。")
    assert not parsed.ok and parsed.reason == "turn_count"
