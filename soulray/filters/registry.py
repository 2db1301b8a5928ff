"""Every filter, registered once, and the filter chains' settings.

Adding a filter: write its file (a FilterSettings subclass with `name: Literal["<name>"]` and its
parameters, and the Filter subclass naming it as `settings`; soulray/filters/base.py), then add the
class to FILTERS below. The config's discriminated union of filter specs, the check that dialogue-only
filters stay out of the source chain, and build_chain's lookup all derive from FILTERS; a default chain
lists a filter only when it should run without being asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Field, model_validator

from soulray.filters.base import Filter, FilterSettings
from soulray.filters.dialogue import DialogueFormat, DialogueFormatSpec
from soulray.filters.duplicate_turns import DuplicateTurns, DuplicateTurnsSpec
from soulray.filters.ethics import BlocklistSpec, CrisisScreen, CrisisSpec, EthicsBlocklist
from soulray.filters.pii import PiiRedact, PiiSpec
from soulray.filters.quality import (
    CjkRatio,
    CjkRatioSpec,
    LengthRatio,
    LengthRatioSpec,
    Repetition,
    RepetitionSpec,
    TurnLength,
    TurnLengthSpec,
)
from soulray.filters.repair import DialogueRepair, DialogueRepairSpec
from soulray.filters.source import (
    ForumWords,
    ForumWordsSpec,
    LengthCap,
    LengthCapSpec,
    TooShort,
    TooShortSpec,
)
from soulray.filters.template import (
    AdviceList,
    AdviceListSpec,
    AiDisclosure,
    AiDisclosureSpec,
    TemplateMarkers,
    TemplateMarkersSpec,
)
from soulray.settings import StrictModel

FILTERS: dict[str, type[Filter]] = {cls.name: cls for cls in (
    ForumWords, TemplateMarkers, LengthCap, TooShort, PiiRedact, CrisisScreen, EthicsBlocklist, DialogueRepair,
    DialogueFormat, AiDisclosure, AdviceList, Repetition, CjkRatio, TurnLength, LengthRatio,
    DuplicateTurns)}

if TYPE_CHECKING:
    FilterSpec = FilterSettings  # what every member of the union below is
else:  # one member per registered filter, told apart by `name` (tests/filters/test_registry.py checks each)
    FilterSpec = Annotated[Union[tuple(cls.settings for cls in FILTERS.values())],  # noqa: UP007 - built at run time
                           Field(discriminator="name")]
DIALOGUE_ONLY_FILTERS = tuple(name for name, cls in FILTERS.items() if "unit" not in cls.kinds)
# A whole dialogue's characters: about twice the longest of the 2,000 sample dialogues (2,385; p99.9 2,181),
# and more than per-turn training keeps of a history (SoulChat: 1,536 input tokens).
MAX_DIALOGUE_CHARS = 4000


def _default_source_chain() -> list[FilterSpec]:
    # rewrite text first (so every later detail quotes redacted text), then the cheap drops
    return [ForumWordsSpec(name="forum_words"), TemplateMarkersSpec(name="template_markers"), PiiSpec(name="pii_redact"),
            LengthCapSpec(name="length_cap"), TooShortSpec(name="too_short"), CrisisSpec(name="crisis_screen")]


def _default_dialogue_chain() -> list[FilterSpec]:
    # rewrite text first (forum words, template markers, PII), then repair the structure of what is left,
    # then judge it: a row is rejected only for what no repair or normalisation fixed
    return [PiiSpec(name="pii_redact"), ForumWordsSpec(name="forum_words"), TemplateMarkersSpec(name="template_markers"),
            DialogueRepairSpec(name="dialogue_repair"), DialogueFormatSpec(name="dialogue_format"),
            LengthCapSpec(name="length_cap", max_chars=MAX_DIALOGUE_CHARS), CrisisSpec(name="crisis_screen"),
            BlocklistSpec(name="ethics_blocklist"), AiDisclosureSpec(name="ai_disclosure"),
            AdviceListSpec(name="advice_list"), TurnLengthSpec(name="turn_length"),
            LengthRatioSpec(name="length_ratio"), RepetitionSpec(name="repetition"), CjkRatioSpec(name="cjk_ratio"),
            DuplicateTurnsSpec(name="duplicate_turns")]  # last: earlier indices stay what --set overrides name


class FiltersConfig(StrictModel):
    source: list[FilterSpec] = Field(default_factory=_default_source_chain,
                                     description="on rewrite units, after normalise, before the rewrite")
    dialogue: list[FilterSpec] = Field(default_factory=_default_dialogue_chain,
                                       description="on dialogues, after the rewrite (and in the clean job)")

    @model_validator(mode="before")
    @classmethod
    def _overrides_on_default_chains(cls, data: Any) -> Any:
        """`--set filters.dialogue.1.min_turns=4` with no chain in the file arrives as {"1": {…}}: it
        patches that filter of the default chain, so one threshold can change without restating the list."""
        if not isinstance(data, dict):
            return data
        for key, default in (("source", _default_source_chain), ("dialogue", _default_dialogue_chain)):
            patches = data.get(key)
            if not isinstance(patches, dict) or not all(str(index).isdigit() for index in patches):
                continue
            chain = [spec.model_dump() for spec in default()]
            for index, patch in patches.items():
                if int(index) >= len(chain):
                    raise ValueError(f"{key}.{index}: the default {key} chain has {len(chain)} filters, "
                                     f"0-{len(chain) - 1}: {', '.join(spec['name'] for spec in chain)}")
                chain[int(index)] = {**chain[int(index)], **patch} if isinstance(patch, dict) else patch
            data = {**data, key: chain}
        return data

    @model_validator(mode="after")
    def _source_filters_fit_units(self) -> FiltersConfig:
        for index, spec in enumerate(self.source):
            if spec.name in DIALOGUE_ONLY_FILTERS:
                raise ValueError(f"source.{index}: {spec.name} checks dialogues; put it in the dialogue chain")
        return self
