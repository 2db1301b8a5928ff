"""A deterministic generator of PsyQA-shaped Chinese Q&A, for scale tests up to millions of rows.

Questions fall into SoulChat's 12 topics (shares from the poster, reference/SOULCHAT.md); each has
several answers; a controllable share of answers are near-duplicates of an earlier answer (a few
characters changed), so dedup has known work to do. The same seed always gives the same bytes.

Answer bodies and question descriptions are drawn sentence by sentence from the bundled SMILECHAT demo
(soulray/data/demo, CC0: a few thousand real sentences), so two unrelated rows share about as little
text as two real answers do. (Built from ten template sentences, every pair of rows had a 5-gram
Jaccard of 0.3-0.6, and MinHash-LSH saw most of a million rows as candidates of each other.)
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from soulray.sources.importers import QA_TABLE

# SoulChat poster topic shares (%, sums to 100.0).
TOPICS = {
    "婚恋": 16.3, "情绪": 11.7, "行为": 11.5, "自我": 11.1, "人际": 10.0, "家庭": 9.7,
    "职业": 9.5, "治疗": 7.9, "成长": 5.8, "性": 3.7, "心理学知识": 2.1, "社会事件": 0.7,
}
_SUBJECTS = ["我", "我男朋友", "我妈妈", "我的同事", "我们班主任", "我老公", "我女儿", "室友", "领导", "我自己"]
_FEELINGS = ["很焦虑", "总是失眠", "感觉很压抑", "一直很自卑", "经常发脾气", "提不起精神", "特别害怕", "很迷茫",
             "心里空落落的", "控制不住地难过"]
_SITUATIONS = ["最近工作压力很大", "和家人吵了一架", "考试没有考好", "感情出现了问题", "搬到了新的城市",
               "被朋友误解了", "身体一直不太好", "找工作屡屡碰壁", "孩子不愿意沟通", "总觉得别人看不起我"]
_QUESTIONS = ["该怎么办？", "这正常吗？", "我该如何调整？", "有什么办法能走出来吗？", "是不是我的问题？"]
_OPENINGS = ["你好，看到你的描述，能感受到你现在很辛苦。", "抱抱你，谢谢你愿意说出来。", "题主你好，",
             "读完你的文字，我能理解你的无助。", "你好呀，先给你一个拥抱。"]
DEMO_QA = Path(__file__).resolve().parent.parent / "data" / "demo" / "qa.parquet"
_CLOSINGS = ["希望你能慢慢好起来。", "愿你被温柔以待。", "加油，你并不孤单。", "祝好。", "我们一起努力。"]


def generate(rows: int, *, seed: int = 0, answers_per_question: tuple[int, int] = (1, 5),
             near_duplicate_rate: float = 0.1, chunk_rows: int = 100_000) -> Iterator[pa.Table]:
    """Yield QA_TABLE chunks totalling `rows` answers (long form, one row per answer)."""
    rng = np.random.default_rng(seed)
    topic_names = list(TOPICS)
    shares = np.array(list(TOPICS.values())) / sum(TOPICS.values())
    produced, question_number = 0, 0
    recent_answers: list[str] = []
    while produced < rows:
        columns: dict[str, list] = {name: [] for name in QA_TABLE.names}
        while len(columns["answer"]) < chunk_rows and produced < rows:
            topic = topic_names[rng.choice(len(topic_names), p=shares)]
            question, description = _question(rng, topic)
            question_id = f"syn-q{question_number:09d}"
            question_number += 1
            count = int(rng.integers(answers_per_question[0], answers_per_question[1] + 1))
            for answer_index in range(min(count, rows - produced)):
                if recent_answers and rng.random() < near_duplicate_rate:
                    answer = _perturb(rng, recent_answers[int(rng.integers(len(recent_answers)))])
                else:
                    answer = _answer(rng)
                recent_answers = (recent_answers + [answer])[-1000:]
                for name, value in (("question_id", question_id), ("answer_id", f"{question_id}-{answer_index}"),
                                    ("topic", topic), ("question", question), ("description", description),
                                    ("answer", answer), ("keywords", [topic])):
                    columns[name].append(value)
                produced += 1
        yield pa.Table.from_pydict(columns, schema=QA_TABLE)


def write_synthetic(path: str | Path, rows: int, *, seed: int = 0, near_duplicate_rate: float = 0.1,
                    chunk_rows: int = 100_000) -> int:
    """Write `rows` synthetic answers to one Parquet file (one row group per chunk); returns rows."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with pq.ParquetWriter(path, QA_TABLE, compression="zstd") as writer:
        for chunk in generate(rows, seed=seed, near_duplicate_rate=near_duplicate_rate, chunk_rows=chunk_rows):
            writer.write_table(chunk, row_group_size=chunk_rows)
            written += chunk.num_rows
    return written


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _question(rng: np.random.Generator, topic: str) -> tuple[str, str]:
    subject, feeling, situation = _pick(rng, _SUBJECTS), _pick(rng, _FEELINGS), _pick(rng, _SITUATIONS)
    question = f"{situation}，{subject}{feeling}，{_pick(rng, _QUESTIONS)}"
    details = "".join(_pick(rng, _sentences("question")) for _ in range(int(rng.integers(1, 4))))
    return question, f"（{topic}）{details}"


def _answer(rng: np.random.Generator) -> str:
    body = "".join(_pick(rng, _sentences("answer")) for _ in range(int(rng.integers(3, 9))))
    return f"{_pick(rng, _OPENINGS)}{body}{_pick(rng, _CLOSINGS)}"


@cache
def _sentences(column: str) -> list[str]:
    """The demo's sentences of one column (6-80 characters each, in file order: deterministic)."""
    texts = pq.read_table(DEMO_QA, columns=[column])[column].to_pylist()
    pieces = (piece.strip() for text in texts for piece in re.split(r"(?<=[。！？!?])", text or ""))
    return [piece for piece in pieces if 6 <= len(piece) <= 80]


def _perturb(rng: np.random.Generator, text: str) -> str:
    """A near-duplicate: a handful of characters replaced (keeps character 5-gram Jaccard high)."""
    chars = list(text)
    for _ in range(int(rng.integers(1, 4))):
        position = int(rng.integers(len(chars)))
        chars[position] = _pick(rng, ["的", "了", "呢", "吧", "啊", "，"])
    return "".join(chars)
