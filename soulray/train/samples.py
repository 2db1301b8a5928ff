"""Training samples from dialogues: render, tokenize once, then plan which token spans each sample covers.

A dialogue is tokenized once into one token sequence with the span of every counselor turn (its
target). Both modes are plans over that sequence, so they supervise exactly the same tokens:

- `per_turn`: one sample per counselor turn, as the paper counted its 2.3M samples: the history up to
  the turn (at most `max_input` tokens, cut from the left so the most recent context stays) and the
  turn itself (at most `max_output` tokens, cut from the right so the reply keeps its beginning).
- `whole_dialog`: one sequence per dialogue with every counselor turn supervised at once (the poster's
  diagram marks every `心理咨询师：…</s>` segment as a target). A dialogue longer than
  max_input + max_output becomes several windows; each target keeps the same length limits.

The paper's rendering (SOULCHAT.md): `用户：u1\n心理咨询师：a1\n用户：u2\n心理咨询师：` → target `a2</s>`.
Earlier counselor turns keep the `</s>` that ended them, as the model's own replies do when it is
served turn by turn; that is what lets one whole-dialogue pass reproduce every per-turn sample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from soulray.errors import SoulrayError
from soulray.schema import ROLE_ASSISTANT, ROLE_USER

USER_PREFIX = "用户："
COUNSELOR_PREFIX = "心理咨询师："
IGNORE_INDEX = -100  # the label torch's cross_entropy skips

Mode = Literal["per_turn", "whole_dialog"]
Format = Literal["soulchat", "chat_template"]
EncodeBatch = Callable[[list[str]], list[list[int]]]

# One tokenized dialogue per row; targets are [start, end) token spans, end exclusive.
TOKENS = pa.schema([
    ("row", pa.int64()),
    ("dialogue_id", pa.string()),  # the dialogue's `id`
    ("question_id", pa.string()),
    ("input_ids", pa.list_(pa.int32())),
    ("target_starts", pa.list_(pa.int32())),
    ("target_ends", pa.list_(pa.int32())),
])

# One training sample: a slice of a tokenized dialogue and the spans in it that carry a loss.
SAMPLES = pa.schema([
    ("row", pa.int64()),
    ("start", pa.int32()),
    ("end", pa.int32()),
    ("supervised_starts", pa.list_(pa.int32())),
    ("supervised_ends", pa.list_(pa.int32())),
])


@dataclass(frozen=True)
class Segment:
    text: str
    target: bool


def soulchat_segments(messages: Sequence[dict[str, str]], *, where: str = "") -> list[Segment]:
    """The paper's rendering as prompt / target pieces. A counselor turn is a target once a user turn
    came before it (the paper's dialogues start with the user); one before that is context only."""
    segments: list[Segment] = []
    prompt, seen_user = "", False
    for index, message in enumerate(messages):
        role, content = message.get("role"), message.get("content") or ""
        separator = "\n" if segments or prompt else ""
        if role == ROLE_USER:
            prompt += f"{separator}{USER_PREFIX}{content}"
            seen_user = True
        elif role == ROLE_ASSISTANT:
            if seen_user and content.strip():
                segments.append(Segment(f"{prompt}{separator}{COUNSELOR_PREFIX}", target=False))
                segments.append(Segment(content, target=True))
                prompt = ""
            else:
                prompt += f"{separator}{COUNSELOR_PREFIX}{content}"
        else:
            raise SoulrayError(f"{where}messages[{index}].role: expected {ROLE_USER!r} or {ROLE_ASSISTANT!r}, got {role!r}")
    return segments


def chat_template_segments(messages: Sequence[dict[str, str]], render: Callable[..., str], *,
                           where: str = "") -> list[Segment]:
    """The model's own chat template as prompt / target pieces. `render(messages, add_generation_prompt=)`
    is the tokenizer's apply_chat_template(tokenize=False); each assistant reply is what its render adds
    to the prompt render before it, so the template's end-of-turn marker is supervised with the reply."""
    segments: list[Segment] = []
    done, seen_user = "", False
    for index, message in enumerate(messages):
        if message.get("role") not in (ROLE_USER, ROLE_ASSISTANT):
            raise SoulrayError(f"{where}messages[{index}].role: expected {ROLE_USER!r} or {ROLE_ASSISTANT!r}, "
                               f"got {message.get('role')!r}")
        seen_user = seen_user or message["role"] == ROLE_USER
        if message["role"] != ROLE_ASSISTANT or not seen_user or not (message.get("content") or "").strip():
            continue
        prompt = render(list(messages[:index]), add_generation_prompt=True)
        full = render(list(messages[: index + 1]), add_generation_prompt=False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise SoulrayError(f"{where}the chat template does not render turn {index} as an extension of the "
                               "turns before it; use samples.format=soulchat for this model")
        segments += [Segment(prompt[len(done):], target=False), Segment(full[len(prompt):], target=True)]
        done = full
    return segments


def tokenize_dialogues(table: pa.Table, *, encode_batch: EncodeBatch, eos_id: int | None, fmt: Format = "soulchat",
                       render: Callable[..., str] | None = None) -> pa.Table:
    """TOKENS rows for the dialogues in `table` (columns id, question_id, messages). Segments are encoded
    separately and concatenated, so a prompt never merges with its target into one token. `eos_id` is
    appended to every target (None: the rendering carries its own end marker, as chat templates do)."""
    per_dialogue: list[list[Segment]] = []
    ids = table.column("id").to_pylist()
    for row, messages in enumerate(table.column("messages").to_pylist()):
        where = f"dialogue id={ids[row]} (row {row}): "
        if fmt == "soulchat":
            per_dialogue.append(soulchat_segments(messages or [], where=where))
        else:
            if render is None:
                raise SoulrayError("samples.format=chat_template needs a tokenizer with a chat template")
            per_dialogue.append(chat_template_segments(messages or [], render, where=where))
    encoded = iter(encode_batch([segment.text for segments in per_dialogue for segment in segments]))
    columns: dict[str, list[Any]] = {name: [] for name in TOKENS.names}
    question_ids = table.column("question_id").to_pylist()
    for row, segments in enumerate(per_dialogue):
        input_ids, starts, ends = [], [], []
        for segment in segments:
            piece = next(encoded)
            if segment.target:
                starts.append(len(input_ids))
                input_ids += piece + ([eos_id] if eos_id is not None else [])
                ends.append(len(input_ids))
            else:
                input_ids += piece
        dialogue_id = None if ids[row] is None else str(ids[row])
        for name, value in zip(TOKENS.names, (row, dialogue_id, question_ids[row], input_ids, starts, ends),
                               strict=True):
            columns[name].append(value)
    return pa.table(columns, schema=TOKENS)


# The reply a history is extended with to find where its next counselor turn would begin (never encoded
# into a prompt: segments are encoded apart, and a chat template renders the prompt without it).
_PENDING_REPLY = {"role": ROLE_ASSISTANT, "content": "…"}


@dataclass(frozen=True)
class Encoding:
    """How fine-tuning turns one model's dialogues into token ids. The fine-tuning job tokenizes its
    samples with it and the evaluation builds its prompts with it, so a model is asked for a turn with
    token for token the context that turn had in training (same rendering, same segment boundaries, no
    special tokens the training did not add). prepare.encoding_of builds one from a tokenizer."""

    fmt: Format
    encode_batch: EncodeBatch
    eos_id: int | None
    render: Callable[..., str] | None = None

    def tokenize(self, table: pa.Table) -> pa.Table:
        return tokenize_dialogues(table, encode_batch=self.encode_batch, eos_id=self.eos_id, fmt=self.fmt,
                                  render=self.render)

    def contexts(self, histories: Sequence[Sequence[dict[str, str]]], *, max_input: int) -> list[list[int]]:
        """For each history, the ids a per_turn sample holds before the counselor turn that follows it
        (at most the last `max_input`, cut as plan_per_turn cuts them): the history is tokenized as a
        dialogue by `tokenize` with one more counselor turn, and its target start is where the prompt ends."""
        pending = [[*history, _PENDING_REPLY] for history in histories]
        tokens = self.tokenize(pa.table({"id": list(range(len(pending))), "question_id": [""] * len(pending),
                                         "messages": pending}))
        contexts = []
        for index, (ids, starts, ends) in enumerate(zip(tokens["input_ids"].to_pylist(),
                                                        tokens["target_starts"].to_pylist(),
                                                        tokens["target_ends"].to_pylist(), strict=True)):
            if not ends or ends[-1] != len(ids):  # the pending turn is a target only after a user turn
                raise SoulrayError(f"history {index}: no user turn for a counselor turn to answer")
            start, _, _ = plan_per_turn(starts[-1:], ends[-1:], max_input=max_input, max_output=1)[0]
            contexts.append(ids[start:starts[-1]])
        return contexts


def plan_per_turn(starts: Sequence[int], ends: Sequence[int], *, max_input: int, max_output: int
                  ) -> list[tuple[int, int, list[tuple[int, int]]]]:
    """(start, end, supervised spans) of one sample per target."""
    plans = []
    for target_start, target_end in zip(starts, ends, strict=True):
        cut = min(target_end, target_start + max_output)  # a long reply keeps its beginning
        plans.append((max(0, target_start - max_input), cut, [(target_start, cut)]))
    return plans


def plan_whole_dialog(starts: Sequence[int], ends: Sequence[int], *, max_input: int, max_output: int
                      ) -> list[tuple[int, int, list[tuple[int, int]]]]:
    """Windows over a dialogue, each supervising the targets it ends with: a target joins the open window
    while its context there stays within max_input and the window within max_input + max_output; else a
    new window opens with the target's last max_input tokens of context, exactly as per_turn gives it."""
    plans: list[tuple[int, int, list[tuple[int, int]]]] = []
    for target_start, target_end in zip(starts, ends, strict=True):
        cut = min(target_end, target_start + max_output)
        if plans:
            window_start, _, spans = plans[-1]
            if target_start - window_start <= max_input and cut - window_start <= max_input + max_output:
                plans[-1] = (window_start, cut, [*spans, (target_start, cut)])
                continue
        plans.append((max(0, target_start - max_input), cut, [(target_start, cut)]))
    return plans


def plan_samples(tokens: pa.Table, *, mode: Mode, max_input: int, max_output: int) -> pa.Table:
    """SAMPLES rows for every tokenized dialogue in `tokens`."""
    if max_input < 1 or max_output < 1:
        raise SoulrayError("samples.max_input_tokens and samples.max_output_tokens must be at least 1")
    plan = plan_per_turn if mode == "per_turn" else plan_whole_dialog
    columns: dict[str, list[Any]] = {name: [] for name in SAMPLES.names}
    for row, starts, ends in zip(tokens.column("row").to_pylist(), tokens.column("target_starts").to_pylist(),
                                 tokens.column("target_ends").to_pylist(), strict=True):
        for start, end, spans in plan(starts, ends, max_input=max_input, max_output=max_output):
            for name, value in zip(SAMPLES.names, (row, start, end, [s for s, _ in spans], [e for _, e in spans]),
                                   strict=True):
                columns[name].append(value)
    return pa.table(columns, schema=SAMPLES)


@dataclass(frozen=True)
class SampleStore:
    """Tokens and samples as flat numpy arrays, for building batches by sample index without Python
    lists per token."""

    token_ids: np.ndarray  # all dialogues' input_ids, concatenated
    row_offsets: np.ndarray  # where each row's tokens begin in token_ids
    starts: np.ndarray
    ends: np.ndarray
    rows: np.ndarray
    supervised: list[np.ndarray]  # per sample: (n, 2) spans

    @classmethod
    def from_tables(cls, tokens: pa.Table, samples: pa.Table) -> SampleStore:
        input_ids = tokens.column("input_ids").combine_chunks()
        lengths = np.asarray(input_ids.value_lengths(), dtype=np.int64)
        row_offsets = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1], out=row_offsets[1:])
        position = {row: index for index, row in enumerate(tokens.column("row").to_pylist())}
        supervised = [np.asarray(list(zip(s, e, strict=True)), dtype=np.int64).reshape(-1, 2) for s, e in
                      zip(samples.column("supervised_starts").to_pylist(),
                          samples.column("supervised_ends").to_pylist(), strict=True)]
        return cls(token_ids=np.asarray(input_ids.flatten(), dtype=np.int64), row_offsets=row_offsets,
                   starts=np.asarray(samples.column("start"), dtype=np.int64),
                   ends=np.asarray(samples.column("end"), dtype=np.int64),
                   rows=np.asarray([position[row] for row in samples.column("row").to_pylist()], dtype=np.int64),
                   supervised=supervised)

    def __len__(self) -> int:
        return len(self.starts)

    def lengths(self, indices: Sequence[int]) -> np.ndarray:
        return self.ends[indices] - self.starts[indices]

    def supervised_tokens(self, indices: Sequence[int]) -> int:
        return int(sum((spans[:, 1] - spans[:, 0]).sum() for spans in (self.supervised[i] for i in indices)))

    def batch(self, indices: Sequence[int], *, pad_id: int) -> dict[str, np.ndarray]:
        """input_ids, attention_mask and labels (IGNORE_INDEX outside supervised spans), right-padded to the
        longest sample of the batch."""
        width = int(self.lengths(indices).max())
        input_ids = np.full((len(indices), width), pad_id, dtype=np.int64)
        labels = np.full((len(indices), width), IGNORE_INDEX, dtype=np.int64)
        attention = np.zeros((len(indices), width), dtype=np.int64)
        for line, index in enumerate(indices):
            base, start, end = self.row_offsets[self.rows[index]], self.starts[index], self.ends[index]
            input_ids[line, : end - start] = self.token_ids[base + start: base + end]
            attention[line, : end - start] = 1
            for span_start, span_end in self.supervised[index]:
                labels[line, span_start - start: span_end - start] = input_ids[line, span_start - start: span_end - start]
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
