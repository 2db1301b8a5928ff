"""Sources: Parquet Q&A tables (local or s3://) normalised to rewrite units, and importers."""

from soulray.sources.reader import Fragment, SourcePlan, normalise_fragment, plan_fragments

__all__ = ["Fragment", "SourcePlan", "normalise_fragment", "plan_fragments"]
