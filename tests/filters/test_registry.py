"""The filter registry: each filter registered once, with its settings beside it, and everything the
config knows about filters (the spec union, the dialogue-only list) derived from it."""

from __future__ import annotations

import inspect
from typing import get_args

import pytest
from pydantic import ValidationError

from soulray.filters import FILTERS, FiltersConfig
from soulray.filters.registry import DIALOGUE_ONLY_FILTERS, FilterSpec


@pytest.mark.parametrize("name", sorted(FILTERS))
def test_a_filter_and_its_settings_agree(name):
    cls = FILTERS[name]
    assert get_args(cls.settings.model_fields["name"].annotation) == (name,), "settings name the filter"
    assert cls.settings.__module__ == cls.__module__, "settings live in the filter's own file"
    parameters = inspect.signature(cls.__init__).parameters.values()
    keywords = {parameter.name for parameter in parameters if parameter.kind is inspect.Parameter.KEYWORD_ONLY}
    assert keywords == set(cls.settings.model_fields) - {"name"}, "build_chain passes the settings as keywords"


def test_the_config_union_is_the_registry():
    union, *_ = get_args(FilterSpec)
    assert set(get_args(union)) == {cls.settings for cls in FILTERS.values()}
    chain = FiltersConfig(dialogue=[{"name": name} for name in FILTERS]).dialogue
    assert [type(spec) for spec in chain] == [cls.settings for cls in FILTERS.values()]


def test_dialogue_only_filters_come_from_their_kinds():
    assert set(DIALOGUE_ONLY_FILTERS) == {name for name, cls in FILTERS.items() if cls.kinds == ("dialogue",)}
    assert {"dialogue_format", "turn_length"} <= set(DIALOGUE_ONLY_FILTERS)
    for name in DIALOGUE_ONLY_FILTERS:
        with pytest.raises(ValidationError, match=f"{name} checks dialogues"):
            FiltersConfig(source=[{"name": name}])
