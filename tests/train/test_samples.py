"""Sample construction: rendering, exact target positions, masking and truncation in both modes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from soulray.errors import SoulrayError
from soulray.train.samples import (
    IGNORE_INDEX,
    Encoding,
    SampleStore,
    Segment,
    chat_template_segments,
    plan_samples,
    soulchat_segments,
    tokenize_dialogues,
)

EOS = 0
DIALOGUE = [{"role": "user", "content": "好"}, {"role": "assistant", "content": "嗯"},
            {"role": "user", "content": "累"}, {"role": "assistant", "content": "抱抱"}]


def char_encode(texts: list[str]) -> list[list[int]]:
    """A toy tokenizer: one token per character, so positions can be counted by hand."""
    return [[ord(char) for char in text] for text in texts]


def decode(ids) -> str:
    return "".join("</s>" if token == EOS else chr(token) for token in ids)


def table_of(*dialogues: list[dict[str, str]]) -> pa.Table:
    return pa.table({"id": list(range(len(dialogues))), "question_id": [f"q{i}" for i in range(len(dialogues))],
                     "messages": list(dialogues)})


def tokens_of(*dialogues: list[dict[str, str]]) -> pa.Table:
    return tokenize_dialogues(table_of(*dialogues), encode_batch=char_encode, eos_id=EOS)


def test_soulchat_rendering_is_the_papers_format():
    segments = soulchat_segments(DIALOGUE)
    assert segments == [Segment("用户：好\n心理咨询师：", False), Segment("嗯", True),
                        Segment("\n用户：累\n心理咨询师：", False), Segment("抱抱", True)]


def test_target_positions_are_exact():
    row = tokens_of(DIALOGUE).to_pylist()[0]
    # "用户：好\n心理咨询师：" is 11 characters, then 嗯</s>; then 12 characters of prompt, then 抱抱</s>
    assert (row["target_starts"], row["target_ends"]) == ([11, 25], [13, 28])
    assert decode(row["input_ids"]) == "用户：好\n心理咨询师：嗯</s>\n用户：累\n心理咨询师：抱抱</s>"


def test_per_turn_masks_everything_but_its_own_target():
    tokens = tokens_of(DIALOGUE)
    samples = plan_samples(tokens, mode="per_turn", max_input=1536, max_output=512)
    store = SampleStore.from_tables(tokens, samples)
    batch = store.batch([0, 1], pad_id=EOS)
    assert samples.column("start").to_pylist() == [0, 0] and samples.column("end").to_pylist() == [13, 28]
    first, second = batch["labels"]
    assert np.flatnonzero(first != IGNORE_INDEX).tolist() == [11, 12]
    assert np.flatnonzero(second != IGNORE_INDEX).tolist() == [25, 26, 27]  # the earlier reply is context only
    assert decode(second[25:28]) == "抱抱</s>"
    assert batch["attention_mask"][0].tolist() == [1] * 13 + [0] * 15  # right padding, masked


def test_whole_dialog_supervises_every_reply_in_one_sequence():
    tokens = tokens_of(DIALOGUE)
    samples = plan_samples(tokens, mode="whole_dialog", max_input=1536, max_output=512)
    assert samples.num_rows == 1
    labels = SampleStore.from_tables(tokens, samples).batch([0], pad_id=EOS)["labels"][0]
    assert np.flatnonzero(labels != IGNORE_INDEX).tolist() == [11, 12, 25, 26, 27]


def test_truncation_keeps_the_end_of_the_prompt_and_the_start_of_the_reply():
    tokens = tokens_of(DIALOGUE)
    samples = plan_samples(tokens, mode="per_turn", max_input=5, max_output=2)
    store = SampleStore.from_tables(tokens, samples)
    batch = store.batch([1], pad_id=EOS)
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    assert decode(ids) == "理咨询师：抱抱"  # the last 5 prompt tokens, the first 2 reply tokens, no </s>
    assert decode(ids[labels != IGNORE_INDEX]) == "抱抱"


def test_whole_dialog_windows_respect_both_limits_and_match_per_turn():
    long = DIALOGUE + [{"role": "user", "content": "嗯嗯"}, {"role": "assistant", "content": "我在这里陪着你"}]
    tokens = tokens_of(long)
    windows = plan_samples(tokens, mode="whole_dialog", max_input=12, max_output=4).to_pylist()
    per_turn = plan_samples(tokens, mode="per_turn", max_input=12, max_output=4).to_pylist()
    for window in windows:
        assert window["end"] - window["start"] <= 16
        for start, end in zip(window["supervised_starts"], window["supervised_ends"], strict=True):
            assert start - window["start"] <= 12 and end - start <= 4
    spans = lambda rows: sorted(s for row in rows for s in zip(row["supervised_starts"], row["supervised_ends"], strict=True))  # noqa: E731
    assert spans(windows) == spans(per_turn)
    # a window that opens on a target gives it exactly the context per_turn gives it
    first_targets = {row["supervised_starts"][0]: row["start"] for row in windows}
    assert all(first_targets[row["supervised_starts"][0]] == row["start"] for row in per_turn
               if row["supervised_starts"][0] in first_targets)


def test_defective_dialogues_from_released_corpora():
    client_only = [{"role": "user", "content": "在吗"}]
    counselor_first = [{"role": "assistant", "content": "你好"}, {"role": "user", "content": "嗯"},
                       {"role": "assistant", "content": "说说看"}]
    repeated = [{"role": "user", "content": "我"}, {"role": "assistant", "content": "嗯"},
                {"role": "assistant", "content": "继续"}]
    rows = tokens_of(client_only, counselor_first, repeated).to_pylist()
    assert rows[0]["target_starts"] == []  # nothing to learn from
    assert decode(rows[1]["input_ids"][: rows[1]["target_starts"][0]]) == "心理咨询师：你好\n用户：嗯\n心理咨询师："
    assert len(rows[2]["target_starts"]) == 2  # a second counselor turn is a reply too


def test_unknown_role_names_the_dialogue_and_message():
    with pytest.raises(SoulrayError, match=r"dialogue id=0 \(row 0\): messages\[1\]\.role.*'system'"):
        tokens_of([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}])


def qwen_like(messages, add_generation_prompt):
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def test_chat_template_targets_carry_the_end_of_turn_marker():
    segments = chat_template_segments(DIALOGUE, qwen_like)
    assert [s.text for s in segments if s.target] == ["嗯<|im_end|>\n", "抱抱<|im_end|>\n"]
    assert "".join(s.text for s in segments) == qwen_like(DIALOGUE, add_generation_prompt=False)


def test_chat_template_that_rewrites_history_is_refused():
    def drops_history(messages, add_generation_prompt):
        return qwen_like(messages[-1:], add_generation_prompt)

    with pytest.raises(SoulrayError, match="use samples.format=soulchat"):
        chat_template_segments(DIALOGUE, drops_history)


def test_contexts_are_what_per_turn_samples_hold_before_their_target():
    """What the evaluation prompts a model with (Encoding.contexts) for the turn after a history."""
    encoding = Encoding(fmt="soulchat", encode_batch=char_encode, eos_id=EOS)
    row = tokens_of(DIALOGUE).to_pylist()[0]
    assert encoding.contexts([DIALOGUE[:1], DIALOGUE[:3]], max_input=1536) == \
        [row["input_ids"][:11], row["input_ids"][:25]]
    assert decode(encoding.contexts([DIALOGUE[:3]], max_input=5)[0]) == "理咨询师："  # cut as per_turn cuts
    with pytest.raises(SoulrayError, match="history 0: no user turn"):
        encoding.contexts([[{"role": "assistant", "content": "你好"}]], max_input=10)
