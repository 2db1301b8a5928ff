"""The main job: regenerate a SoulChat-style corpus from Q&A sources and publish a version.

Locally (starts a local Ray, reads the bundled SMILECHAT sample, writes ./output):
    python jobs/regenerate.py
    python jobs/regenerate.py --config soulray/configs/demo.yaml --set storage.root=/tmp/soulray
On a cluster (joins the cluster the job runs on):
    ray job submit --working-dir . -- python jobs/regenerate.py --config soulray/configs/cluster.yaml
The flow, readable here and in soulray/pipeline.py: the config → the pipeline (a source and a list of
stages, soulray/regenerate.py `pipeline`: filter_source → dedup_source → rewrite → filter_dialogue →
dedup_dialogue) → `run` (plan, read, apply each stage, write shards, build, check and commit the
manifest) → the summary.
"""

from __future__ import annotations

import argparse
import logging
import sys

from soulray.cli import add_config_arguments, configure_logging, run_cli
from soulray.config import RegenerateConfig, load_config
from soulray.pipeline import JobSettings, run
from soulray.regenerate import dry_run, pipeline, summary

log = logging.getLogger("soulray.jobs.regenerate")


def regenerate(args: argparse.Namespace) -> int:
    config = load_config(RegenerateConfig, args.config, args.overrides)
    if config.rewrite.enabled and config.rewrite.dry_run:  # the stages before the rewrite, then an estimate
        print(summary(dry_run(config)))
        return 0
    flow = pipeline(config)
    log.info("regenerate: %s → %s", type(flow.source).__name__, " → ".join(stage.name for stage in flow.stages))
    print(summary(run(flow, settings=JobSettings.of(config))))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args()
    configure_logging(args.verbose)
    return run_cli(regenerate, args)


if __name__ == "__main__":
    sys.exit(main())
