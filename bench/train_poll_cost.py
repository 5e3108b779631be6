"""CPU that Ray Train's result polling takes beside the training, side by side in one run.

Ray Train's controller polls every worker for reports each RAY_TRAIN_HEALTH_CHECK_INTERVAL_S
(2 s by default); a report waits while the previous one is unpolled, so a long interval stretches
short epochs, and a short one costs CPU that on a small machine the training does not get. For
each interval: a 2-worker TorchTrainer whose workers only sleep once started (so the training
takes no CPU), and the CPU that all of the cluster's processes (GCS, raylet, dashboard, the Train
controller and its helper actors, the workers) use over a steady window, next to the same window
with no run at all.

    python bench/train_poll_cost.py [--intervals 0.1 0.5 2.0] [--window 15]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import psutil

from machine import finish, quiet_start  # bench/machine.py (the script's folder is on sys.path)

POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"


def cores_over(seconds: float) -> float:
    """Cores used, as a sum over processes that live through the window (ones that exit inside it
    take their time with them, so the window must lie where no process starts or ends)."""
    procs = [psutil.Process(), *psutil.Process().children(recursive=True)]

    def total() -> dict[int, float]:
        out = {}
        for p in procs:
            try:
                c = p.cpu_times()
                out[p.pid] = c.user + c.system
            except psutil.NoSuchProcess:
                pass
        return out

    before = total()
    time.sleep(seconds)
    after = total()
    return sum(after[k] - before[k] for k in after if k in before) / seconds


def _sleeper(config: dict) -> None:
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    Path(config["ready_dir"], str(rank)).touch()
    time.sleep(config["sleep_s"])


def run_with_interval(interval: float, window: float, storage: str) -> float:
    import ray.train
    from ray.train.torch import TorchTrainer

    os.environ[POLL_ENV] = str(interval)  # read by the run's controller when it starts
    with tempfile.TemporaryDirectory() as ready:
        result: dict[str, float] = {}

        def measure() -> None:
            while len(os.listdir(ready)) < 2:  # both workers past start-up (torch import, process group)
                time.sleep(0.2)
            time.sleep(3)
            result["cores"] = cores_over(window)

        t = threading.Thread(target=measure)
        t.start()
        TorchTrainer(
            _sleeper,
            train_loop_config={"ready_dir": ready, "sleep_s": window + 8},
            scaling_config=ray.train.ScalingConfig(num_workers=2),
            run_config=ray.train.RunConfig(name=f"poll-{interval}", storage_path=storage),
        ).fit()
        t.join()
    return result["cores"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--intervals", type=float, nargs="+", default=[0.1, 0.5, 2.0])
    ap.add_argument("--window", type=float, default=15.0, help="seconds of steady state measured per setting")
    args = ap.parse_args()
    from modelfoundry.cluster import connect

    connect()
    time.sleep(5)
    start = quiet_start()
    rows = {}
    with tempfile.TemporaryDirectory() as storage:
        for interval in args.intervals:
            rows[f"poll {interval:g} s"] = run_with_interval(interval, args.window, storage)
    time.sleep(5)
    # after the runs: actors a run leaves behind for the cluster's lifetime count as "no run"
    rows = {"no run": cores_over(args.window), **rows}
    print(f"\nCPU of the local cluster's processes, {args.window:g} s windows, {os.cpu_count()} cores on this machine")
    print(f"{'setting':12} {'cores':>7} {'above no run':>13}")
    for k, v in rows.items():
        print(f"{k:12} {v:7.3f} {v - rows['no run']:13.3f}")
    Path("bench/results").mkdir(parents=True, exist_ok=True)
    Path("bench/results/train_poll_cost.json").write_text(
        json.dumps({"window_s": args.window, "cores": rows, "machine": finish(start)}, indent=2)
    )


if __name__ == "__main__":
    main()
