"""What the local OpenAI-compatible server (`soulray serve-llm`, soulray/offline/server.py) answers to the
evaluation's requests, without any model: judge ratings and next counselor turns. For plumbing, demos
and tests, not for quality: the figures it produces say nothing about a model.

Both answers are deterministic functions of the prompt and the request's seed, so a rerun gets the same
text and the cache can be tested. Judge ratings come from a few lexical cues (empathy words, suggestions,
length, repetition, harmful phrases), then, with a seeded 10% chance per dimension, move one step, so two
judge runs (different seeds) disagree now and then and their agreement is a real figure below 1.
"""

from __future__ import annotations

import hashlib
import json
import random
import re

from soulray.evaluate.judge import DIMENSIONS, RESPONSE_CLOSE, RESPONSE_OPEN

_EMPATHY_CUES = ("理解", "感受", "不容易", "辛苦", "难过", "担心", "陪", "听", "愿意", "谢谢你", "心疼", "委屈")
_HELP_CUES = ("可以", "试着", "尝试", "建议", "不妨", "或许", "也许", "？", "?")
_HARM_CUES = ("去死", "自杀吧", "活该", "没用的东西", "伤害他")
_REPLIES = ("我能感受到你现在的不容易。", "谢谢你愿意把这些说出来。", "听起来这件事让你很困扰。", "你的感受是可以理解的。")
_ASKS = ("能再多说一些吗？", "这种感觉持续多久了？", "你希望事情变成什么样子呢？", "身边有人可以陪你聊聊吗？")
DRIFT = 0.1  # chance per dimension that a rating moves one step (seeded): runs disagree sometimes


def is_judge_prompt(prompt: str) -> bool:
    return RESPONSE_OPEN in prompt and RESPONSE_CLOSE in prompt


def offline_judge(prompt: str, seed: object, fault: str | None = None) -> tuple[str, str]:
    """(completion, finish_reason) for a judge prompt; `fault` is the server's injected fault."""
    if fault == "refusal":
        return "抱歉，我无法对这段对话进行评价。", "stop"
    response = prompt.split(RESPONSE_OPEN, 1)[1].split(RESPONSE_CLOSE, 1)[0].strip().removeprefix("心理咨询师：")
    rng = random.Random(hashlib.sha256(f"{response}|{seed}".encode()).digest())
    scores = {name: _drift(value, DIMENSIONS[name], rng) for name, value in _cue_scores(response).items()}
    answer = json.dumps(scores)
    if fault == "malformed":
        return "这条回复整体比较自然，也有一定的共情。", "stop"
    if fault == "truncated":
        return answer[: len(answer) // 2], "length"
    return answer, "stop"


def _cue_scores(response: str) -> dict[str, int]:
    text = response.strip()
    characters = [c for c in text if not c.isspace()]
    pairs = [tuple(characters[i:i + 2]) for i in range(len(characters) - 1)]
    repetitive = bool(pairs) and len(set(pairs)) / len(pairs) < 0.5
    content = 0 if len(characters) < 4 else 1 if repetitive or len(characters) < 15 else 2
    empathy = min(2, sum(cue in text for cue in _EMPATHY_CUES))
    helpfulness = min(2, sum(cue in text for cue in _HELP_CUES)) if characters else 0
    safety = 0 if any(cue in text for cue in _HARM_CUES) else 1
    return {"content": content, "empathy": empathy, "helpfulness": helpfulness, "safety": safety}


def _drift(value: int, highest: int, rng: random.Random) -> int:
    if highest < 2 or rng.random() >= DRIFT:  # safety stays put: a safe reply is safe in every run
        return value
    return value + 1 if value == 0 else value - 1 if value == highest else value + rng.choice((-1, 1))


def offline_reply(prompt: str, seed: object, fault: str | None = None) -> tuple[str, str]:
    """A next counselor turn for a chat request (its last message is the user's): an empathic opener,
    the user's words back, a question."""
    if fault == "refusal":
        return "抱歉，我无法回答这个问题。", "stop"
    rng = random.Random(hashlib.sha256(f"{prompt}|{seed}".encode()).digest())
    clause = re.split(r"[，。！？,.!?\n]", prompt.strip(), maxsplit=1)[0][:30]
    echo = f"你提到“{clause}”，" if clause else ""
    reply = f"{rng.choice(_REPLIES)}{echo}{rng.choice(_ASKS)}"
    if fault == "truncated":
        return reply[: len(reply) // 2], "length"
    return reply, "stop"


def offline_evaluation(prompt: str, seed: object, fault: str | None = None) -> tuple[str, str]:
    """The server's answer to an evaluation request: a rating for a judge prompt, else a next turn."""
    return offline_judge(prompt, seed, fault) if is_judge_prompt(prompt) else offline_reply(prompt, seed, fault)
