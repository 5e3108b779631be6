"""Run by test_multinode.py in its own process (it owns a multi-node cluster): a head (1 CPU, for
Ray Data's coordinators) plus 2 worker nodes with 2 CPUs and 2 "trainer" slots each; the 2
training workers need a trainer slot each and are spread across the worker nodes.

Phase 1: one worker node is removed mid-run -> the run restarts on the surviving node from the
last checkpoint and finishes.  Phase 2: with the last node removed mid-run there is no capacity
left -> the run fails within a bounded time with a clear error. Prints one JSON line."""

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


def job(tmp: str, name: str, epochs: int, timeout: float, strategy: str = "PACK") -> dict:
    return {
        "name": name,
        "model": {"family": "mlp", "preset": "tiny"},
        "data": {"dataset": "digits"},
        "train": {
            "epochs": epochs,
            "batch_size": 16,
            "lr": 0.01,
            "num_workers": 2,
            "max_failures": 2,
            "storage": f"{tmp}/runs",
            "model_store": f"{tmp}/models",
            "placement_timeout_s": timeout,
            "placement_strategy": strategy,
            "worker_resources": {"trainer": 1},
        },
    }


def remove_after_checkpoints(lc: LocalCluster, index: int, run_root: Path, n: int, log: dict, key: str) -> None:
    deadline = time.time() + 300
    while time.time() < deadline:
        if len(list(run_root.glob("run-*/checkpoint_*"))) >= n:
            lc.remove_worker(index)
            log[key] = time.time()
            return
        time.sleep(0.2)


def main(tmp: str) -> None:
    lc = LocalCluster(head_cpus=1, worker_cpus=[2, 2], worker_resources=[{"trainer": 2}] * 2).start()
    ray.init(address=lc.address)
    out: dict = {}
    t = threading.Thread(
        target=remove_after_checkpoints, args=(lc, 1, Path(tmp, "runs", "node-loss"), 3, out, "killed")
    )
    t.start()
    outcome = train(parse_config(job(tmp, "node-loss", 12, 60, "SPREAD")))
    t.join()
    meta = json.loads(Path(outcome.last_checkpoint, "model.json").read_text())
    out["history"] = [(h["epoch"], h["attempt"]) for h in meta["history"]]
    out["accuracy"] = outcome.metrics["test_accuracy"]

    t = threading.Thread(
        target=remove_after_checkpoints, args=(lc, 0, Path(tmp, "runs", "no-capacity"), 2, out, "killed2")
    )
    t.start()
    try:
        train(parse_config(job(tmp, "no-capacity", 200, 10)))
        out["no_capacity_error"] = None
    except Exception as err:  # noqa: BLE001 - the error is the result
        out["no_capacity_error"] = f"{type(err).__name__}: {err}"
        out["failed_after_s"] = time.time() - out.get("killed2", time.time())
    t.join()
    print("RESULT " + json.dumps(out), flush=True)
    ray.shutdown()
    lc.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
