"""The main job: regenerate a SoulChat-style corpus from Q&A sources and publish a version.

Locally (starts a local Ray, reads the bundled SMILECHAT sample, writes ./output):
    python jobs/regenerate.py
    python jobs/regenerate.py --config soulray/configs/demo.yaml --set storage.root=/tmp/soulray
On a cluster (joins the cluster the job runs on):
    ray job submit --working-dir . -- python jobs/regenerate.py --config soulray/configs/cluster.yaml
The story of the job is in soulray/regenerate.py; this script only reads the command line.
"""

from __future__ import annotations

import argparse
import sys

from soulray.cli import add_config_arguments, configure_logging, regenerate_main, run_cli


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args()
    configure_logging(args.verbose)
    return run_cli(regenerate_main, args)


if __name__ == "__main__":
    sys.exit(main())
