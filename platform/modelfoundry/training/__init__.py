"""Ray Train: the per-worker loop (loop.py) and the driver that runs it (trainer.py)."""

from modelfoundry.tasks import task_of
from modelfoundry.training.capacity import CapacityError
from modelfoundry.training.trainer import train

__all__ = ["CapacityError", "task_of", "train"]
