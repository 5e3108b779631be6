"""Entrypoint for `ray job submit --working-dir . -- python jobs/compress.py NAME --config ...`.

Same options as `foundry compress`; connects to the cluster the job runs on (RAY_ADDRESS is set by
the job runner)."""

import sys

from modelfoundry.cli import main

if __name__ == "__main__":
    sys.exit(main(["compress", *sys.argv[1:]]))
