"""What the local server answers to the persona and quality-gate prompts, without a model.

- persona-profile-v1 → the rule-based profile of the question (soulray/rewrite/persona.py) as JSON.
- the gate's rating (rubric gate-v1) → scores from lexical cues, the evaluation's offline judge's cues
  (soulray/offline/evaluation.py) read over the whole dialogue, with its seeded drift so two judge runs
  disagree now and then, and a critique naming each dimension under 2.
- the revision → the dialogue with what a critique names and words can fix fixed: a client who repeats
  himself gets varied turns, cold counselor turns an empathic opening, an unanswered risk signal a referral.
  Helpfulness and faithfulness it cannot fix (that needs knowledge of the case), so dialogues weak there
  are revised and rejected, and the offline sample has all three ways through the gate.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import asdict

from soulray.evaluate.judge import DIALOGUE_CLOSE, DIALOGUE_OPEN
from soulray.gate.core import CRITIQUE_CLOSE, CRITIQUE_OPEN, SOURCE_CLOSE, SOURCE_OPEN
from soulray.offline.evaluation import EMPATHY_CUES, HARM_CUES, HELP_CUES, drift
from soulray.rewrite.persona import QUESTION_CLOSE, QUESTION_OPEN, rule_persona

_CRISIS = ("想死", "自杀", "不想活", "活着没意思", "轻生", "伤害自己", "割腕")
_REFERRAL = ("专业", "医生", "热线", "求助", "就医", "咨询机构")
_CRITIQUES = {
    "empathy": "心理咨询师的共情不足，请在回应中体现理解和情感支持。",
    "helpfulness": "帮助性不足，请结合原始回答给出更具体的引导或建议。",
    "safety": "对风险信号处理草率，请表达关切并建议寻求专业帮助。",
    "faithfulness": "遗漏了原始回答的要点，请保留其主要观点。",
    "naturalness": "来访者的回应重复、不像真实的人，请让求助者的回应有变化并前后一致。",
}
_CLIENT_TURNS = ("嗯，你这么说我好像明白了一点。", "可是我还是控制不住地去想这件事。", "其实我之前也试过，但坚持不下来。",
                 "我身边没有人能聊这些。", "这种感觉大概有好几个月了。", "我怕说出来别人会觉得我矫情。",
                 "那如果我做不到怎么办？", "听你这么说，我心里轻松了一些。", "我确实没从这个角度想过。",
                 "有时候我也会怪自己。", "我想试试看你说的办法。", "我最担心的是以后还会这样。",
                 "家里人其实也不太懂我。", "说出来以后感觉好多了。", "可能是我对自己要求太高了吧。",
                 "我会把这些记下来，慢慢去做。")
_REFERRAL_TURN = "如果你有伤害自己的想法，请一定及时告诉身边信任的人，或联系专业的心理援助热线。"
_LINE = re.compile(r"^(用户|心理咨询师)：(.*)$")


def is_gate_prompt(prompt: str) -> bool:
    return QUESTION_OPEN in prompt or SOURCE_OPEN in prompt


def offline_gate(prompt: str, seed: object, fault: str | None = None) -> tuple[str, str]:
    """(completion, finish_reason) for a persona, rating or revision prompt; `fault` is the server's
    injected fault."""
    if fault == "refusal":
        return "抱歉，我无法完成这个请求。", "stop"
    if fault == "malformed":
        return "这段对话整体还可以，但有些地方需要改进。", "stop"
    if QUESTION_OPEN in prompt:
        text = _profile(_between(prompt, QUESTION_OPEN, QUESTION_CLOSE))
    elif CRITIQUE_OPEN in prompt:
        text = _revise(_turns(_between(prompt, DIALOGUE_OPEN, DIALOGUE_CLOSE)),
                       _between(prompt, CRITIQUE_OPEN, CRITIQUE_CLOSE), _between(prompt, SOURCE_OPEN, SOURCE_CLOSE))
    else:
        text = _rate(_between(prompt, SOURCE_OPEN, SOURCE_CLOSE),
                     _turns(_between(prompt, DIALOGUE_OPEN, DIALOGUE_CLOSE)), seed)
    if fault == "truncated":
        return text[: len(text) // 2], "length"
    return text, "stop"


def _between(text: str, open_marker: str, close_marker: str) -> str:
    return text.split(open_marker, 1)[-1].split(close_marker, 1)[0].strip()


def _profile(question: str) -> str:
    fields = asdict(rule_persona(question, None))
    fields.pop("source")
    return json.dumps(fields, ensure_ascii=False)


def _turns(block: str) -> list[tuple[str, str]]:
    """(label, content) of a rendered dialogue; unlabelled lines continue the turn before."""
    turns: list[tuple[str, str]] = []
    for line in block.splitlines():
        match = _LINE.match(line.strip())
        if match:
            turns.append((match[1], match[2]))
        elif turns:
            turns[-1] = (turns[-1][0], turns[-1][1] + line)
    return turns


def scores_of(source: str, turns: list[tuple[str, str]]) -> dict[str, int]:
    """The cue scores of a dialogue, before drift (gate-v1's dimensions, 0-2 each)."""
    client = [text for label, text in turns if label == "用户"]
    counselor = [text for label, text in turns if label == "心理咨询师"]
    said = "".join(counselor)
    warm = sum(any(cue in turn for cue in EMPATHY_CUES) for turn in counselor) / max(1, len(counselor))
    helps = sum(cue in said for cue in HELP_CUES)
    unsafe = any(cue in said for cue in HARM_CUES)
    unanswered = any(cue in "".join(client) for cue in _CRISIS) and not any(cue in said for cue in _REFERRAL)
    sentences = [s for s in re.split(r"[。！？!?]", source) if len(s.strip()) >= 6]
    kept = sum(s.strip()[:8] in said for s in sentences) / len(sentences) if sentences else 1.0
    follow_ups = client[1:]
    varied = len(set(follow_ups)) / len(follow_ups) if follow_ups else 1.0
    return {"empathy": 2 if warm >= 0.85 else 1 if warm >= 0.5 else 0,
            "helpfulness": 2 if helps >= 3 else 1 if helps >= 1 else 0,
            "safety": 0 if unsafe else 1 if unanswered else 2,
            "faithfulness": 2 if kept >= 0.7 else 1 if kept >= 0.3 else 0,
            "naturalness": 2 if varied == 1.0 else 1 if varied >= 0.7 else 0}


def _rate(source: str, turns: list[tuple[str, str]], seed: object) -> str:
    rng = random.Random(hashlib.sha256(f"{source}|{turns}|{seed}".encode()).digest())
    scores = {name: value if name == "safety" else drift(value, 2, rng)
              for name, value in scores_of(source, turns).items()}
    critique = "".join(_CRITIQUES[name] for name, value in scores.items() if value < 2) or "整体良好。"
    return json.dumps({**scores, "critique": critique}, ensure_ascii=False)


def _revise(turns: list[tuple[str, str]], critique: str, source: str) -> str:
    rng = random.Random(hashlib.sha256(f"{source}|{turns}".encode()).digest())
    pool = list(_CLIENT_TURNS)
    rng.shuffle(pool)
    revised, client_seen = [], 0
    for label, text in turns:
        if label == "用户":
            if "来访者" in critique and client_seen > 0:
                text = pool[(client_seen - 1) % len(pool)]
            client_seen += 1
        elif "共情" in critique and not any(cue in text for cue in EMPATHY_CUES):
            text = "我能理解你的感受。" + text
        revised.append((label, text))
    if "风险" in critique and revised:
        label, text = revised[-1]
        revised[-1] = (label, text + _REFERRAL_TURN)
    return "\n".join(f"{label}：{text}" for label, text in revised)
