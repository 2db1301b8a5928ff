"""duplicate_turns: a turn that repeats an earlier turn of the same speaker, on toys and on the real sample."""

from __future__ import annotations

import pyarrow.compute as pc

from soulray.filters import DIALOGUE_STAGE, FiltersConfig, build_chain
from soulray.filters.duplicate_turns import DuplicateTurnsSpec
from tests.filters.tables import dialogues, good_dialogue, reasons, smilechat

REPEAT = "是的，我感觉自己变得焦虑了，不知道怎么才能控制这种胡思乱想。"  # 29 characters


def screen(table, **settings):
    spec = DuplicateTurnsSpec(name="duplicate_turns", **settings)
    return build_chain([spec], stage=DIALOGUE_STAGE, kind="dialogue")(table)


def with_turn(index: int, role: str, text: str) -> list[dict[str, str]]:
    messages = good_dialogue(8)
    messages[index] = {"role": role, "content": text}
    return messages


def test_a_repeated_turn_drops_the_dialogue_and_names_both_turns():
    looped = with_turn(2, "user", REPEAT)
    looped[4] = {"role": "user", "content": " " + REPEAT + "\n"}  # spaces at the ends aside
    out = screen(dialogues(looped, good_dialogue(8)))
    assert reasons(out) == ["duplicate_turn", None]
    assert out["reject_detail"][0].as_py().startswith("turn 5 (user) repeats turn 3: ")


def test_short_repeats_other_speakers_and_unscreened_roles_are_kept():
    thanks = with_turn(2, "user", "好的好的，谢谢您的建议。")
    thanks[4] = {"role": "user", "content": "好的好的，谢谢您的建议。"}  # 12 characters: said twice, ordinary
    echoed = with_turn(2, "user", REPEAT)
    echoed[3] = {"role": "assistant", "content": REPEAT}  # the counselor quoting the client
    assert reasons(screen(dialogues(thanks, echoed))) == [None, None]
    looped = with_turn(2, "user", REPEAT)
    looped[4] = {"role": "user", "content": REPEAT}
    assert reasons(screen(dialogues(looped), roles=["assistant"])) == [None]
    assert reasons(screen(dialogues(thanks), min_chars=10)) == ["duplicate_turn"]


def test_the_source_question_sent_again_is_a_repeat():
    question = good_dialogue(8)
    question[0] = {"role": "user", "content": REPEAT}
    question[6] = {"role": "user", "content": REPEAT}
    assert reasons(screen(dialogues(question))) == ["duplicate_turn"]


def test_on_the_smilechat_sample_the_default_chain_drops_the_looped_rewrite_only():
    out = build_chain(FiltersConfig().dialogue, stage=DIALOGUE_STAGE, kind="dialogue")(smilechat())
    dropped = out.filter(pc.equal(out["reject_reason"], "duplicate_turn"))
    # smile-51936 loops too, but the repetition screen before it drops it first
    assert dropped["id"].to_pylist() == ["smile-14142"]
    kept = out.filter(pc.is_null(out["reject_reason"]))["id"].to_pylist()
    assert "smile-16033" in kept  # its client says "好的好的，谢谢您的建议。" twice
