"""What every bench records about the machine it ran on, and how it compares setups fairly.

(Notes go to stderr: stdout stays for a bench's results, e.g. `--json`.)
- `quiet_start()`: the load average and CPU count before the run. It waits (up to `patience_s`)
  for the 1-minute load average to fall to `max_load` (1.0 by default), and flags the run when it
  does not: on a 2-core box a busy start made the serving table 2-4x too pessimistic.
- `finish(start)`: the same figures after the run, with the start's flag (the load after a run
  is mostly the run's own: a saturating bench ends near 2 on 2 cores).
- `alternating(setups, rounds)`: the order to measure in: every setup once per round, the order
  reversed every other round (ABBA...), so a drift in the machine's speed hits all setups alike.
- `median_ratio(a, b)`: the median over rounds of a[i] / b[i], the figure to report for "a vs b"
  (a ratio of medians mixes rounds taken at different speeds).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Sequence

MAX_LOAD = 1.0


def snapshot() -> dict:
    one, five, fifteen = os.getloadavg()
    return {
        "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "load": [round(one, 2), round(five, 2), round(fifteen, 2)],
        "cpus": os.cpu_count(),
    }


def quiet_start(max_load: float = MAX_LOAD, patience_s: float = 120.0) -> dict:
    """The machine before a run: waits up to patience_s for the 1-minute load average to drop to
    max_load; the record says `busy_at_start` when it did not (the run goes on, flagged)."""
    deadline = time.monotonic() + patience_s
    while os.getloadavg()[0] > max_load and time.monotonic() < deadline:
        time.sleep(5)
    start = snapshot()
    start["max_load"] = max_load
    start["busy_at_start"] = start["load"][0] > max_load
    if start["busy_at_start"]:
        print(
            f"WARNING: load average {start['load'][0]} > {max_load} at start ({start['cpus']} CPUs): "
            "the figures of this run are flagged as taken on a busy machine",
            file=sys.stderr,
            flush=True,
        )
    else:
        print(
            f"machine: load {start['load']} with {start['cpus']} CPUs at {start['time']}", file=sys.stderr, flush=True
        )
    return start


def finish(start: dict) -> dict:
    end = snapshot()
    record = {"before": start, "after": end, "flagged": start["busy_at_start"]}
    print(
        f"machine: load {start['load']} before, {end['load']} after ({end['cpus']} CPUs)", file=sys.stderr, flush=True
    )
    if record["flagged"]:
        print(
            f"FLAGGED: the load average was above {start['max_load']} at start; rerun on a quiet machine",
            file=sys.stderr,
            flush=True,
        )
    return record


def alternating(setups: Sequence[str], rounds: int) -> list[tuple[int, str]]:
    """(round, setup) in measuring order: forward in even rounds, reversed in odd ones."""
    order = []
    for r in range(rounds):
        order += [(r, s) for s in (setups if r % 2 == 0 else list(reversed(setups)))]
    return order


def median_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    if len(a) != len(b) or not a:
        raise ValueError(f"per-round figures must pair up, got {len(a)} and {len(b)}")
    return statistics.median(x / y for x, y in zip(a, b))
