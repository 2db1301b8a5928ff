"""Persona conditioning: the rule-based profile, the profile call's parser, the persona prompt, and the
profile as part of the rewrite call's cache key."""

from __future__ import annotations

import json

import pytest

from soulray.errors import ConfigError
from soulray.llm.cache import call_key
from soulray.offline.gate import offline_gate
from soulray.rewrite.persona import (
    PersonaSettings,
    check_template,
    parse_profile,
    profile_prompt,
    rule_persona,
)
from soulray.rewrite.prompts import load_template

QUESTION = "高三了，压力很大，每天晚上焦虑得睡不着，我该怎么办？"
DECODING = {"temperature": 1.0, "top_p": None, "max_tokens": 2048}


def test_the_rule_based_profile_reads_the_questions_words():
    persona = rule_persona(QUESTION, None, "学业")
    assert (persona.neuroticism, persona.age_group, persona.wants, persona.situation) == \
        ("高", "青少年", "具体的建议和方法", "学业")
    assert persona.source == "rules" and rule_persona(QUESTION, None, "学业") == persona
    assert "神经质高" in persona.describe() and "rules" not in persona.describe()


def test_the_profile_call_is_parsed_or_refused():
    answer, _ = offline_gate(profile_prompt(QUESTION, None)[0]["content"], 0)
    persona = parse_profile(f"画像如下：```json\n{answer}\n```")
    assert persona is not None and persona.source == "llm" and persona.age_group == "青少年"
    assert parse_profile("无法判断。") is None
    assert parse_profile(json.dumps({**json.loads(answer), "neuroticism": "很高"}, ensure_ascii=False)) is None


def test_a_persona_needs_the_persona_prompt_and_the_other_way_round():
    persona_prompt, plain = load_template("soulchat-persona-v1"), load_template("soulchat-v1")
    check_template(persona_prompt, PersonaSettings(enabled=True))
    check_template(plain, PersonaSettings())
    with pytest.raises(ConfigError, match="soulchat-persona-v1"):
        check_template(plain, PersonaSettings(enabled=True))
    with pytest.raises(ConfigError, match="has {persona}"):
        check_template(persona_prompt, PersonaSettings())
    with pytest.raises(ValueError, match="persona="):
        persona_prompt.render(QUESTION, "", "答")


def test_the_profile_is_in_the_rewrite_calls_cache_key():
    template = load_template("soulchat-persona-v1")
    first = rule_persona(QUESTION, None, "学业")
    changed = rule_persona("我大学毕业后一直很孤独，想找人倾诉。", None, "学业")
    assert first.describe() != changed.describe()

    def key(persona):
        messages = template.render(QUESTION, "", "可以试着放松。", persona=persona.describe())
        assert persona.describe() in messages[0]["content"]
        return call_key(messages, template.version, "gpt-3.5-turbo", DECODING, 0)

    assert key(first) == key(rule_persona(QUESTION, None, "学业"))  # unchanged profile: the same call
    assert key(first) != key(changed)  # changed profile: a new call
