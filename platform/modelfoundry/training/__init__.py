"""Ray Train: the per-worker loop (loop.py) and the driver that runs it (trainer.py)."""

from modelfoundry.tasks import task_of
from modelfoundry.training.trainer import CapacityError, TrainOutcome, train

__all__ = ["CapacityError", "TrainOutcome", "task_of", "train"]
