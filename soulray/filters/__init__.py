"""Content filters: SoulChat's and SMILE's cleaning rules, Chinese PII redaction, quality screens.

A filter (soulray/filters/base.py) decides on a batch and returns, per row it drops, a reason and a
detail, plus new text (redaction) and scores; a Chain runs the ordered filters of a config list over a
WORKING_UNIT (source chain) or WORKING_DIALOGUE (dialogue chain) table and fills the reject mark.
Each filter's settings sit beside it; soulray/filters/registry.py registers every filter once.
"""

from soulray.filters.base import Filter, Verdict
from soulray.filters.batch import Batch, batch_from_table
from soulray.filters.chain import DIALOGUE_STAGE, SOURCE_STAGE, Chain, apply_chain, build_chain
from soulray.filters.registry import FILTERS, FiltersConfig

__all__ = ["DIALOGUE_STAGE", "FILTERS", "SOURCE_STAGE", "Batch", "Chain", "Filter", "FiltersConfig", "Verdict",
           "apply_chain", "batch_from_table", "build_chain"]
