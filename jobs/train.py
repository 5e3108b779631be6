"""Entrypoint for `ray job submit --working-dir . -- python jobs/train.py --config ...`.

Same options as `foundry train`; connects to the cluster the job runs on (RAY_ADDRESS is set by
the job runner)."""

import sys

from modelfoundry.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
