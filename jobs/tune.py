"""Entrypoint for `ray job submit --working-dir . -- python jobs/tune.py --config ...`
(same options as `foundry tune`)."""

import sys

from modelfoundry.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
