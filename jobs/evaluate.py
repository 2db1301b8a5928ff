"""The evaluate job: score models on the held-out dialogues of a published version, as SoulChat's Table 1.

Locally (starts a local Ray; the newest demo fine-tuning run, before and after, and an offline chat model):
    python jobs/evaluate.py
    python jobs/evaluate.py --config soulray/configs/evaluate-demo.yaml --set samples=50 --set judge.enabled=false
A checkpoint folder and a real API (the judge and ChatGPT-style baselines go through the rewrite quotas):
    python jobs/evaluate.py --config my-eval.yaml --set models.0.checkpoint=s3://bucket/soulchat/finetune/run/model
On a cluster (joins the cluster the job runs on):
    ray job submit --working-dir . -- python jobs/evaluate.py --config my-eval.yaml
The story of the job is in soulray/evaluation.py; this script only reads the command line.
"""

from __future__ import annotations

import argparse
import sys

from soulray.cli import EVALUATE_DEMO_CONFIG, add_config_arguments, configure_logging, evaluate_main, run_cli


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(parser, default=EVALUATE_DEMO_CONFIG)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args()
    configure_logging(args.verbose)
    return run_cli(evaluate_main, args)


if __name__ == "__main__":
    sys.exit(main())
