"""What every data source returns: `Splits` (float32 features, labels or targets, a held-out test
split that never touches training) described by a `DatasetSpec`. The sources (data/sources.py,
data/text.py) import these; nothing here imports a source."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from modelfoundry.tasks import task_spec


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    task: Literal["classification", "regression", "language-model"]
    input_shape: tuple[int, ...]
    num_classes: int | None  # classification: classes; language model: vocabulary size
    kind: Literal["image", "series", "table", "text"]
    tokenizer: dict | None = None  # text: {"kind": "char", "vocab": "..."} (stored in checkpoints)

    @property
    def output_dim(self) -> int:
        return self.num_classes if task_spec(self.task).classifies else 1

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "task": self.task,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "kind": self.kind,
            **({"tokenizer": self.tokenizer} if self.tokenizer else {}),
        }


@dataclass(frozen=True)
class Splits:
    spec: DatasetSpec
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    extras: dict = field(default_factory=dict)  # e.g. the persistence baseline for series

    def stats(self) -> dict[str, float]:
        """Normalisation statistics, from the training split only."""
        out = {"x_mean": float(self.x_train.mean()), "x_std": float(self.x_train.std()) or 1.0}
        if task_spec(self.spec.task).output == "values":
            out |= {"y_mean": float(self.y_train.mean()), "y_std": float(self.y_train.std()) or 1.0}
        else:
            out |= {"y_mean": 0.0, "y_std": 1.0}
        return out
