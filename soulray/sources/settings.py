"""The source readers' settings: which Parquet files, in which layout, with which column names (the
regenerate job's `sources`), and the clean job's `input`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from soulray.settings import StrictModel


class ColumnMap(StrictModel):
    """Source column names. `question` and `answer` (long) / `answers` (wide) are required in the
    file; the others are used when present, and are errors only when named explicitly but missing."""

    question_id: str = "question_id"
    answer_id: str = "answer_id"
    question: str = "question"
    description: str = "description"
    answer: str = "answer"
    answers: str = "answers"
    topic: str = "topic"


class SourceSpec(StrictModel):
    path: str = Field(description="a Parquet file or folder of Parquet files, local or s3://")
    layout: Literal["long", "wide"] = Field(
        "long", description="long: one row per answer; wide: one row per question with a list of answers"
    )
    columns: ColumnMap = ColumnMap()
    default_topic: str = ""


class CleanInput(StrictModel):
    path: str = Field(description="Parquet (file or folder; id, topic, messages) or JSON the importers read")
    format: Literal["auto", "parquet", "smilechat", "soulchatcorpus"] = Field(
        "auto", description="auto: .parquet/folder of Parquet → parquet; a JSON list of objects → soulchatcorpus; "
                            "a JSON list of turns or a folder of .json → smilechat")
