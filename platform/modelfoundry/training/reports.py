"""Ray Train's per-epoch reports, brought to the process that called fit(): the driver's console
display (`foundry train`, console.EpochProgress) and Ray Tune (each epoch a trial's TorchTrainer
reports reaches Tune as a result with its checkpoint, so Tune's schedulers see each epoch, ASHA
stops trials early, PBT can exploit a trial from another's checkpoint, and a resumed sweep restarts
unfinished trials from their last checkpoint).

A Train callback (it runs in the Train controller, another process) puts each report on a Ray
queue; `fit_reporting` fits the trainer in a thread and hands each item to `on_report` from the
calling thread (where Tune's session lives). Ray's TuneReportCallback relays metrics only.
"""

from __future__ import annotations

import queue as pyqueue
import threading
from collections.abc import Callable
from typing import Any

from ray.train.v2.api.callback import UserCallback
from ray.util.queue import Empty, Queue

from modelfoundry.storage import checkpoint_location

CHECKPOINT_PATH_KEY = "checkpoint_path"


class ReportRelay(UserCallback):
    def __init__(self) -> None:
        # on this process's node: a queue placed on a node that is then lost takes the reports
        # with it and fails the fit that a Train restart would have carried on (node loss)
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.queue = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        item = dict(metrics[0])  # rank 0's metrics (every rank reports the all-reduced values)
        item[CHECKPOINT_PATH_KEY] = checkpoint_location(checkpoint) if checkpoint else None
        self.queue.put(item)


def fit_reporting(trainer: Any, relay: ReportRelay, on_report: Callable[[dict[str, Any]], None]) -> Any:
    """trainer.fit() with on_report(item) called here for every report (its checkpoint's path
    under CHECKPOINT_PATH_KEY); returns fit()'s result, or re-raises the run's error."""
    outcome: pyqueue.Queue = pyqueue.Queue()

    def fit() -> None:
        try:
            outcome.put((True, trainer.fit()))
        except BaseException as err:  # handed to the calling thread, which raises it
            outcome.put((False, err))

    thread = threading.Thread(target=fit, name="fit", daemon=True)
    thread.start()

    def relay_one(timeout: float) -> bool:
        try:
            item = relay.queue.get(timeout=timeout)
        except Empty:
            return False
        on_report(item)
        return True

    while thread.is_alive():
        relay_one(0.5)
    while relay_one(0.1):  # what was reported just before fit() returned
        pass
    relay.queue.shutdown()
    ok, value = outcome.get()
    if not ok:
        raise value
    return value


def fit_and_relay(trainer: Any, relay: ReportRelay) -> None:
    """A Tune trial's trainer.fit(), every report passed on to Tune with its checkpoint."""
    from ray import tune

    def report(item: dict[str, Any]) -> None:
        path = item.get(CHECKPOINT_PATH_KEY)
        tune.report(item, checkpoint=tune.Checkpoint(path) if path else None)

    fit_reporting(trainer, relay, report)
