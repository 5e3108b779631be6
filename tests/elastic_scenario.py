"""Run by test_multinode.py in its own process (it owns a multi-node cluster): elastic training,
`train.workers: {min: 1, max: 2}`, on a head (1 CPU, for the controller and Ray Data) plus one
worker node with one "trainer" slot. Once the run has checkpointed, a second worker node joins:
the run grows to 2 workers at Ray Train's next resize check. Once 3 epochs have run on 2, that node's
processes are SIGKILLed (its raylet among them): the run shrinks to 1 worker and goes on. One run,
one JSON line: its worker timeline, every epoch's worker count and attempt, and its accuracy."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import ray

from modelfoundry.config import parse_config
from modelfoundry.localcluster import LocalCluster
from modelfoundry.training import train

EPOCHS = 24


def job(tmp: str) -> dict:
    return {
        "name": "elastic",
        # the default MLP on MNIST: epochs of seconds, so the run outlasts a node joining and the
        # grow (the tiny preset's half-second epochs ended a run before a join took effect)
        "model": {"family": "mlp", "preset": "default"},
        "data": {"dataset": "mnist"},
        "train": {
            "epochs": EPOCHS,
            "batch_size": 64,
            "lr": 0.01,
            "workers": {"min": 1, "max": 2, "resize_interval_s": 2},
            "max_failures": 3,
            "checkpoint_every_steps": 50,  # a shrink resumes mid-epoch, at the step after the newest snapshot
            "storage": f"{tmp}/runs",
            "model_store": f"{tmp}/models",
            "placement_timeout_s": 15,  # a start on a node that just died gives up soon
            "worker_resources": {"trainer": 1},
        },
    }


def epochs_seen(run_root: Path) -> list[dict]:
    """The newest checkpoint's history (each epoch's worker count), or nothing yet."""
    best: list[dict] = []
    for meta in run_root.glob("run-*/checkpoint_*/model.json"):
        try:
            history = json.loads(meta.read_text()).get("history", [])
        except (OSError, ValueError):  # being written
            continue
        best = max(best, history, key=len)
    return best


def snapshot_inside_epoch(run_root: Path) -> bool:
    """A step snapshot written after the newest epoch checkpoint."""
    snaps = [p.stat().st_mtime for p in run_root.glob("run-*/step-snapshot.pt")]
    ckpts = [p.stat().st_mtime for p in run_root.glob("run-*/checkpoint_*/model.json")]
    return bool(snaps and ckpts) and max(snaps) > max(ckpts)


def wait_for(condition, what: str, timeout_s: float = 300, running: threading.Thread | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s} s for {what}")
        if running is not None and not running.is_alive() and not condition():
            raise TimeoutError(f"the run ended before {what}")
        time.sleep(0.2)


def main(tmp: str) -> None:
    lc = LocalCluster(head_cpus=1, worker_cpus=[1], worker_resources=[{"trainer": 1}]).start()
    try:
        ray.init(address=lc.address)
        try:
            out = scenario(lc, tmp)
        except TimeoutError as err:  # what was seen so far, for the test's message
            out = {"error": str(err), "epochs_seen": epochs_seen(Path(tmp, "runs", "elastic"))}
        print("RESULT " + json.dumps(out), flush=True)
    finally:  # the cluster's processes end with the scenario, whatever happened
        ray.shutdown()
        lc.shutdown()


def scenario(lc: LocalCluster, tmp: str) -> dict:
    out: dict = {"events": {}}
    result: dict = {}

    def run() -> None:
        try:
            result["outcome"] = train(parse_config(job(tmp)))
        except Exception as err:  # noqa: BLE001 - reported in the result line
            result["error"] = f"{type(err).__name__}: {err}"

    trainer = threading.Thread(target=run, daemon=True)
    t0 = time.time()
    trainer.start()
    root = Path(tmp, "runs", "elastic")
    wait_for(lambda: len(epochs_seen(root)) >= 1, "the first checkpoint")
    joined = lc.add_worker(1, {"trainer": 1})  # from the main thread, as Ray requires
    out["events"]["node_added_s"] = round(time.time() - t0, 1)
    on_two = lambda: sum(h.get("workers") == 2 for h in epochs_seen(root)) >= 3  # noqa: E731
    wait_for(on_two, "3 epochs on 2 workers", running=trainer)
    # killed inside an epoch, after its first step snapshot: the shrink must resume mid-epoch
    wait_for(lambda: snapshot_inside_epoch(root), "a step snapshot inside an epoch", running=trainer)
    lc.remove_worker(joined, graceful=False)
    out["events"]["node_killed_s"] = round(time.time() - t0, 1)
    trainer.join(timeout=900)
    if "error" in result or "outcome" not in result:
        out["error"] = result.get("error", "the run did not end")
    else:
        outcome = result["outcome"]
        meta = json.loads(Path(outcome.last_checkpoint, "model.json").read_text())
        out["history"] = [(h["epoch"], h["workers"], h["attempt"], round(h["train_loss"], 4)) for h in meta["history"]]
        out["workers"] = outcome.summary()["workers"]
        out["recoveries"] = outcome.summary().get("recoveries", [])
        after = [r["first_step_at"] - t0 for r in out["recoveries"]]
        out["events"]["first_steps_s"] = [round(t, 1) for t in after]  # each attempt's first step
        out["accuracy"] = outcome.metrics["test_accuracy"]
        out["plots"] = outcome.files  # learning_curves.png: the loss curves and the workers over time
    return out


if __name__ == "__main__":
    main(sys.argv[1])
