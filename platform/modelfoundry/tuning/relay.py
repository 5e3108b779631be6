"""Train -> Tune relay: every epoch a trial's TorchTrainer reports reaches Tune as a result with
its checkpoint, so Tune's schedulers see each epoch (ASHA stops trials early), PBT can exploit a
trial from another trial's checkpoint, and a resumed sweep restarts unfinished trials from their
last checkpoint.

Ray's TuneReportCallback relays metrics only. Here a Train callback (it runs in the Train
controller) puts each report on a Ray queue; the Tune function fits the trainer in a thread and
turns each item into `tune.report(metrics, checkpoint=...)` from its own thread, where Tune's
session lives.
"""

from __future__ import annotations

import queue as pyqueue
import threading
from typing import Any

from ray.train.v2.api.callback import UserCallback
from ray.util.queue import Empty, Queue

CHECKPOINT_PATH_KEY = "checkpoint_path"


class ReportRelay(UserCallback):
    def __init__(self) -> None:
        self.queue = Queue(actor_options={"num_cpus": 0})

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        item = dict(metrics[0])  # rank 0's metrics (every rank reports the all-reduced values)
        item[CHECKPOINT_PATH_KEY] = checkpoint.path if checkpoint else None
        self.queue.put(item)


def fit_and_relay(trainer: Any, relay: ReportRelay) -> None:
    """trainer.fit() with every report passed on to Tune; re-raises the run's error."""
    from ray import tune

    failure: pyqueue.Queue = pyqueue.Queue()

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as err:  # handed to the Tune thread, which fails the trial with it
            failure.put(err)

    thread = threading.Thread(target=fit, name="trial-fit", daemon=True)
    thread.start()

    def relay_one(timeout: float) -> bool:
        try:
            item = relay.queue.get(timeout=timeout)
        except Empty:
            return False
        path = item.get(CHECKPOINT_PATH_KEY)
        tune.report(item, checkpoint=tune.Checkpoint(path) if path else None)
        return True

    while thread.is_alive():
        relay_one(0.5)
    while relay_one(0.1):  # what was reported just before fit() returned
        pass
    relay.queue.shutdown()
    if not failure.empty():
        raise failure.get()
