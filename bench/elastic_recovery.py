"""Recovery of an elastic run when a worker dies every N seconds, side by side in one run:

  clean      train.workers {min: 1, max: 2}, step snapshots every --snapshot-steps steps, no faults
  snapshots  the same; one Ray Train worker process SIGKILLed every --every seconds
  epochs     the same faults, no step snapshots (a restart resumes from the last epoch checkpoint)

All three draw their steps from one global order over MNIST held in the object store (the MLP's
default preset, global batch 128, 2 workers of 1 CPU each on this machine's in-process cluster),
so they do the same steps; only the faults and the snapshots differ. Setups alternate in rounds.

Figures per faulty run:
  recovery_s    kill -> the next completed optimizer step (the restarted attempt's first step,
                which the step snapshot records; `snapshots` only)
  restart_s     kill -> the restarted attempt's first epoch started (from the run's history)
  efficiency    the clean run's span / this run's span for the same steps (span: epoch 1's start
                to the run's end): steps done / steps a fault-free run does in the same time
  lost_s        (this run's span - the clean run's span) / kills: what one failure costs

    python bench/elastic_recovery.py [--epochs 8] [--every 60] [--rounds 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from machine import alternating, finish, quiet_start  # bench/machine.py
from modelfoundry.cluster import connect
from modelfoundry.config import parse_config
from modelfoundry.training import train
from modelfoundry.training.snapshots import load_snapshot


def job(tmp: str, name: str, epochs: int, snapshot_steps: int | None) -> dict:
    return {
        "name": name,
        "model": {"family": "mlp", "preset": "default"},
        "data": {"dataset": "mnist"},
        "train": {
            "epochs": epochs,
            "batch_size": 64,
            "lr": 0.001,
            "workers": {"min": 1, "max": 2, "resize_interval_s": 5},
            "checkpoint_every_steps": snapshot_steps,
            "max_failures": 100,
            "keep_checkpoints": 1,
            "storage": f"{tmp}/runs",
            "model_store": f"{tmp}/models",
        },
    }


class Killer:
    """SIGKILLs one live Ray Train worker process every `every` seconds until stopped."""

    def __init__(self, every: float) -> None:
        self.every, self.kills, self._stop = every, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Killer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        from ray.util.state import list_actors

        while not self._stop.wait(self.every):
            alive = [
                a
                for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
                if "RayTrainWorker" in a.class_name and a.pid
            ]
            if alive:
                victim = random.choice(alive)
                try:
                    os.kill(victim.pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                self.kills.append(time.time())
                print(f"  killed worker pid {victim.pid}", file=sys.stderr, flush=True)


def one_run(tmp: str, setup: str, r: int, epochs: int, every: float, snapshot_steps: int) -> dict:
    name = f"{setup}-{r}"
    cfg = parse_config(job(tmp, name, epochs, None if setup == "epochs" else snapshot_steps))
    print(f"round {r}: {setup}", file=sys.stderr, flush=True)
    if setup == "clean":
        outcome, kills = train(cfg, export=False), []
    else:
        with Killer(every) as killer:
            outcome = train(cfg, export=False)
        kills = killer.kills
    end = time.time()
    history = json.loads(Path(outcome.last_checkpoint, "model.json").read_text())["history"]
    firsts = {}  # each attempt's first epoch start (the history keeps the epochs that counted)
    for h in history:
        firsts.setdefault(h["attempt"], h["started_at"])
    snap = load_snapshot(outcome.path) if setup == "snapshots" else None
    first_steps = sorted(x["first_step_at"] for x in snap["recoveries"]) if snap else []
    run = {
        "span_s": end - history[0]["started_at"],
        "kills": len(kills),
        "attempts": max(h["attempt"] for h in history) + 1,
        "test_accuracy": outcome.metrics["test_accuracy"],
        "restart_s": _after(kills, sorted(firsts.values())),
        "recovery_s": _after(kills, first_steps) if snap else [],
    }
    print(f"  {json.dumps({k: v for k, v in run.items()})}", file=sys.stderr, flush=True)
    return run


def _after(kills: list[float], events: list[float]) -> list[float]:
    """For each kill, the time to the first event after it (kills without one are left out)."""
    out = []
    for k in kills:
        later = [e - k for e in events if e > k]
        if later:
            out.append(round(min(later), 2))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--every", type=float, default=60.0, help="seconds between worker kills")
    ap.add_argument("--snapshot-steps", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    start = quiet_start()
    connect(num_cpus=2)
    runs: dict[str, list[dict]] = {"clean": [], "snapshots": [], "epochs": []}
    with tempfile.TemporaryDirectory(prefix="mf-elastic-bench-") as tmp:
        for r, setup in alternating(list(runs), args.rounds):
            runs[setup].append(one_run(tmp, setup, r, args.epochs, args.every, args.snapshot_steps))
    machine = finish(start)
    summary = {"settings": vars(args), "machine": machine, "runs": runs}
    for setup in ("snapshots", "epochs"):
        pairs = list(zip(runs["clean"], runs[setup]))
        rec = [x for run in runs[setup] for x in run["recovery_s"]]
        restart = [x for run in runs[setup] for x in run["restart_s"]]
        summary[setup] = {
            "efficiency": round(statistics.median(c["span_s"] / f["span_s"] for c, f in pairs), 3),
            "kills": sum(run["kills"] for run in runs[setup]),
            "lost_s_per_kill": round(
                statistics.median((f["span_s"] - c["span_s"]) / max(1, f["kills"]) for c, f in pairs), 2
            ),
            "recovery_s_p50": round(statistics.median(rec), 2) if rec else None,
            "recovery_s_max": max(rec) if rec else None,
            "restart_s_p50": round(statistics.median(restart), 2) if restart else None,
        }
    for setup in ("snapshots", "epochs"):
        print(f"{setup}: {summary[setup]}", file=sys.stderr)
    print(json.dumps(summary) if args.json else json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
