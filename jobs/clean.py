"""The clean job: filter an existing multi-turn corpus (no rewrite) and publish it as a version.

Locally (starts a local Ray; the SMILECHAT sample's dialogues; writes ./output):
    python jobs/clean.py --input soulray/data/demo/dialogs.parquet --output output
    python jobs/clean.py --input SoulChatCorpus.json --output /tmp/soulray --set filters.dialogue.4.min_turns=8
On a cluster (joins the cluster the job runs on):
    ray job submit --working-dir . -- python jobs/clean.py --input s3://bucket/corpus/ --output s3://bucket/soulray
The flow, readable here and in soulray/pipeline.py: the command line → the config → the pipeline (a
source and a list of stages, soulray/clean.py `pipeline`: filter_dialogue → dedup_dialogue) → `run`
(plan, read, apply each stage, write shards, build and commit the manifest) → the summary.
"""

from __future__ import annotations

import argparse
import logging
import sys

from soulray.clean import pipeline
from soulray.cli import add_clean_arguments, clean_config, configure_logging, run_cli
from soulray.pipeline import JobSettings, run
from soulray.report import text

log = logging.getLogger("soulray.jobs.clean")


def clean(args: argparse.Namespace) -> int:
    config = clean_config(args)
    flow = pipeline(config)
    log.info("clean: %s → %s", type(flow.source).__name__, " → ".join(stage.name for stage in flow.stages))
    result = run(flow, settings=JobSettings.of(config))
    print(text(result.manifest, version_uri=result.version_uri))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_clean_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args()
    configure_logging(args.verbose)
    return run_cli(clean, args)


if __name__ == "__main__":
    sys.exit(main())
