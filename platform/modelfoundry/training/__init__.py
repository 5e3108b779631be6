"""Ray Train: the per-worker loop (loop.py) and the driver that runs it (trainer.py)."""

from modelfoundry.training.tasks import TASK_METRIC, task_of
from modelfoundry.training.trainer import CapacityError, TrainOutcome, train

__all__ = ["TASK_METRIC", "CapacityError", "TrainOutcome", "task_of", "train"]
