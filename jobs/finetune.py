"""The fine-tuning job: train a model on a published version with Ray Train and export it.

Locally (starts a local Ray; the tiny model on the latest version `make run` published, a few minutes):
    python jobs/finetune.py
    python jobs/finetune.py --set samples.mode=whole_dialog --set optim.steps=100
Resume an interrupted run (same settings): add --set run_name=<the run name it printed>.
Your own model: --set model.path=/models/Qwen2.5-0.5B-Instruct (a Hugging Face folder, local or s3://),
optionally --set model.lora.r=16 for LoRA.
On a cluster (GPU workers; checkpoints to S3):
    ray job submit --working-dir . -- python jobs/finetune.py --config my-finetune.yaml \\
        --set root=s3://bucket/soulray --set trainer.use_gpu=true --set trainer.workers=8
The story of the job is in soulray/finetune.py; this script only reads the command line.
"""

from __future__ import annotations

import argparse
import sys

from soulray.cli import FINETUNE_DEMO_CONFIG, add_config_arguments, configure_logging, finetune_main, run_cli


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(parser, default=FINETUNE_DEMO_CONFIG)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args()
    configure_logging(args.verbose)
    return run_cli(finetune_main, args)


if __name__ == "__main__":
    sys.exit(main())
