"""The clean job: filter an existing multi-turn corpus (no rewrite) and publish it as a version.

Locally (starts a local Ray; the SMILECHAT sample's dialogues; writes ./output):
    python jobs/clean.py --input soulray/data/demo/dialogs.parquet --output output
    python jobs/clean.py --input SoulChatCorpus.json --output /tmp/soulray --set filters.dialogue.4.min_turns=8
On a cluster (joins the cluster the job runs on):
    ray job submit --working-dir . -- python jobs/clean.py --input s3://bucket/corpus/ --output s3://bucket/soulray
The story of the job is in soulray/clean.py; this script only reads the command line.
"""

from __future__ import annotations

import argparse
import sys

from soulray.cli import add_clean_arguments, clean_main, configure_logging, run_cli


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_clean_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args()
    configure_logging(args.verbose)
    return run_cli(clean_main, args)


if __name__ == "__main__":
    sys.exit(main())
