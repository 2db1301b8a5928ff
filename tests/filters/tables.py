"""Tiny WORKING_UNIT / WORKING_DIALOGUE tables for filter tests, and the SMILECHAT sample as dialogues."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from soulray.clean import RAW_DIALOGUE, working_dialogues
from soulray.schema import WORKING_DIALOGUE, WORKING_UNIT, record_id
from tests.conftest import SMILECHAT_SAMPLE

LONG_ANSWER = "我能理解你现在的感受，这种不安很常见。"  # 19 characters, over every minimum


def units(*rows: dict[str, Any]) -> pa.Table:
    """WORKING_UNIT rows from partial dicts (question/description/answer/reject_reason …)."""
    full = []
    for index, row in enumerate(rows):
        question, description, answer = row.get("question", "我最近很焦虑怎么办？"), row.get("description", ""), \
            row.get("answer", LONG_ANSWER)
        full.append({"record_id": record_id(question, description, answer), "question_id": f"q{index}",
                     "answer_id": f"a{index}", "topic": "", "question": question, "description": description,
                     "answer": answer, "source_file": "test.parquet", "source_row": index,
                     "reject_stage": row.get("reject_stage"), "reject_reason": row.get("reject_reason"),
                     "reject_detail": row.get("reject_detail")})
    return pa.Table.from_pylist(full, schema=WORKING_UNIT)


def turns(*texts: str, start: str = "user") -> list[dict[str, str]]:
    """Alternating turns starting with `start`."""
    roles = ("user", "assistant") if start == "user" else ("assistant", "user")
    return [{"role": roles[index % 2], "content": text} for index, text in enumerate(texts)]


def good_dialogue(turn_count: int = 8) -> list[dict[str, str]]:
    user = ["我最近总是睡不着，心里很乱。", "是的，工作压力很大，还和家人吵架了。", "我不知道该怎么和他们沟通。",
            "嗯，我会试着说出来。", "谢谢你愿意听我说。", "好的，我想先休息一下。", "我觉得好一些了。",
            "还有一点担心。", "我会慢慢来的。", "谢谢你。"]
    counselor = ["听起来你最近承受了很多，能和我说说发生了什么吗？", "工作和家里的压力叠在一起，确实让人喘不过气。",
                 "你很想被家人理解，这份心意很珍贵。", "愿意尝试已经是很好的一步了。", "我一直在这里听你说。",
                 "休息是照顾自己的一种方式。", "很高兴听到你感觉好一些。", "担心是正常的，我们可以一起面对。",
                 "慢慢来，你已经做得很好了。", "不客气，随时欢迎你回来聊聊。"]
    texts = [text for pair in zip(user, counselor, strict=True) for text in pair]
    return turns(*texts[:turn_count])


def dialogues(*rows: list[dict[str, str]] | dict[str, Any] | None) -> pa.Table:
    """WORKING_DIALOGUE rows from message lists (or dicts with messages and a reject mark)."""
    full = []
    for index, row in enumerate(rows):
        mark = row if isinstance(row, dict) else {}
        messages = mark.get("messages") if isinstance(row, dict) else row
        full.append({"id": index, "record_id": f"{index:032x}", "question_id": f"q{index}", "topic": "",
                     "messages": messages, "prompt_version": None, "model": None, "api_key_name": None,
                     "attempts": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0,
                     "source_file": "test.parquet", "source_row": index, "scores": None, "flags": None,
                     "reject_stage": mark.get("reject_stage"), "reject_reason": mark.get("reject_reason"),
                     "reject_detail": mark.get("reject_detail")})
    return pa.Table.from_pylist(full, schema=WORKING_DIALOGUE)


@lru_cache(maxsize=1)
def smilechat() -> pa.Table:
    """The 2,000 real SMILECHAT dialogues of the shared sample as WORKING_DIALOGUE rows."""
    raw = pq.read_table(SMILECHAT_SAMPLE / "dialogs.parquet")
    rows = raw.num_rows
    return working_dialogues(pa.table({
        "id": raw["id"], "topic": pa.nulls(rows, pa.string()), "messages": raw["messages"],
        "source_file": pa.array([str(SMILECHAT_SAMPLE / "dialogs.parquet")] * rows),
        "source_row": pa.array(range(rows), pa.int64()), "reject_reason": pa.nulls(rows, pa.string()),
        "reject_detail": pa.nulls(rows, pa.string())}, schema=RAW_DIALOGUE))


def reasons(table: pa.Table) -> list[str | None]:
    return table["reject_reason"].to_pylist()
