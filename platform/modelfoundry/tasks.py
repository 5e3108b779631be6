"""Tasks as data: one `TaskSpec` per task a model can learn (what a FamilySpec or a dataset names):
its loss and metric sums, how the sums become metrics, the metric that ranks checkpoints and trials
and its direction, what a sweep shows per trial, and what serving answers. Everything else asks
the registry (`task_spec`) instead of comparing task names."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch.nn import functional as F

from modelfoundry.models import Task, family_spec
from modelfoundry.models.transformer import language_model_loss
from modelfoundry.models.vae import vae_loss

Sums = dict[str, "torch.Tensor | int"]
# what serving answers for a task's model: class ids with probabilities, values in the target's
# units, images (reconstructions), or text (generated tokens)
Output = Literal["classes", "values", "images", "text"]


@dataclass(frozen=True)
class TaskSpec:
    name: Task
    metric: str  # ranks checkpoints and trials
    metrics: dict[str, Literal["max", "min"]]  # what a run reports (a sweep shows them), and each one's direction
    # (model, x, y, the target's std) -> (mean loss to backpropagate, metric sums for this batch)
    loss: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, Sums]]
    summarize: Callable[[dict[str, float], str], dict[str, float]]  # (summed sums, prefix) -> metrics
    output: Output  # what serving answers
    compressible: bool = True  # compression/ measures it (size, latency, held-out metrics)

    @property
    def mode(self) -> Literal["max", "min"]:
        """The ranking metric's better direction."""
        return self.metrics[self.metric]

    @property
    def classifies(self) -> bool:
        return self.output == "classes"

    @property
    def explainable(self) -> bool:
        """Whether :explain attributes its output to the input (a class score or a value)."""
        return self.output in ("classes", "values")

    @property
    def tensor_verb(self) -> str | None:
        """The verb an OIP v2 infer runs (tensor in, tensor out); None: the task has none."""
        return {"classes": "predict", "values": "predict", "images": "reconstruct"}.get(self.output)


def task_of(family: str, dataset_task: str) -> Task:
    """The family's own task (the VAE's, the language model's), else the dataset's."""
    return family_spec(family).task_for(dataset_task)


def _classification_loss(model, x: torch.Tensor, y: torch.Tensor, y_std: float) -> tuple[torch.Tensor, Sums]:
    n = x.shape[0]
    logits = model(x)
    loss = F.cross_entropy(logits.float(), y)
    return loss, {"loss": loss.detach() * n, "correct": (logits.argmax(1) == y).sum(), "n": n}


def _regression_loss(model, x: torch.Tensor, y: torch.Tensor, y_std: float) -> tuple[torch.Tensor, Sums]:
    n = x.shape[0]
    pred = model(x).float().squeeze(-1)
    loss = F.mse_loss(pred / y_std, y / y_std)  # in units of the target's std
    return loss, {"loss": loss.detach() * n, "abs_err": (pred.detach() - y).abs().sum(), "n": n}


def _language_model_loss(model, x: torch.Tensor, y: torch.Tensor, y_std: float) -> tuple[torch.Tensor, Sums]:
    loss_sum = language_model_loss(model(x), y)
    tokens = y.numel()
    return loss_sum / tokens, {"loss": loss_sum.detach(), "tokens": tokens, "n": x.shape[0]}


def _generative_loss(model, x: torch.Tensor, y: torch.Tensor, y_std: float) -> tuple[torch.Tensor, Sums]:
    n = x.shape[0]
    logits, mu, logvar = model(x, return_latent=True)
    recon, kl = vae_loss(logits, x, mu, logvar)
    loss = (recon + kl).mean()
    return loss, {"loss": loss.detach() * n, "recon": recon.detach().sum(), "kl": kl.detach().sum(), "n": n}


def batch_loss(task: Task, model, x: torch.Tensor, y: torch.Tensor, y_std: float) -> tuple[torch.Tensor, Sums]:
    """(mean loss to backpropagate, metric sums for this batch). The sums stay tensors on the
    batch's device: reading them (`.item()`) every step would stall a GPU on a host sync; the loop
    reads them once per epoch (`all_reduce`)."""
    return task_spec(task).loss(model, x, y, y_std)


def distill_loss(
    student, teacher, x: torch.Tensor, y: torch.Tensor, temperature: float, alpha: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor | int]]:
    """Knowledge distillation (Hinton et al. 2015): alpha x the KL divergence between the teacher's
    and the student's softened class distributions (scaled by T^2 so its gradients keep their size
    as T changes) + (1 - alpha) x cross-entropy on the labels. The teacher runs frozen."""
    n = x.shape[0]
    logits = student(x).float()
    with torch.no_grad():
        target = teacher(x).float()
    t = temperature
    soft = F.kl_div(F.log_softmax(logits / t, 1), F.log_softmax(target / t, 1), log_target=True, reduction="batchmean")
    hard = F.cross_entropy(logits, y)
    loss = alpha * t * t * soft + (1 - alpha) * hard
    return loss, {"loss": loss.detach() * n, "correct": (logits.argmax(1) == y).sum(), "n": n}


def summarize(task: Task, sums: dict[str, float], prefix: str) -> dict[str, float]:
    return task_spec(task).summarize(sums, prefix)


def _mean(sums: dict[str, float], prefix: str, **names: str) -> dict[str, float]:
    n = max(sums.get("n", 0), 1)
    return {f"{prefix}_loss": sums["loss"] / n, **{f"{prefix}_{k}": sums[v] / n for k, v in names.items()}}


def _generative_summary(sums: dict[str, float], prefix: str) -> dict[str, float]:
    out = _mean(sums, prefix, recon="recon", kl="kl")
    out[f"{prefix}_neg_elbo"] = out[f"{prefix}_recon"] + out[f"{prefix}_kl"]
    return out


def _language_model_summary(sums: dict[str, float], prefix: str) -> dict[str, float]:
    nats = sums["loss"] / max(sums.get("tokens", 0), 1)  # per token, in nats and in bits
    return {f"{prefix}_loss": nats, f"{prefix}_bpc": nats / math.log(2)}


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec(
            "classification",
            "test_accuracy",
            {"test_accuracy": "max", "test_loss": "min", "train_accuracy": "max", "train_loss": "min"},
            _classification_loss,
            lambda sums, prefix: _mean(sums, prefix, accuracy="correct"),
            "classes",
        ),
        TaskSpec(
            "regression",
            "test_mae",
            {"test_mae": "min", "test_loss": "min", "train_mae": "min", "train_loss": "min"},
            _regression_loss,
            lambda sums, prefix: _mean(sums, prefix, mae="abs_err"),
            "values",
        ),
        TaskSpec(
            "generative",
            "test_neg_elbo",
            {"test_neg_elbo": "min", "test_recon": "min", "test_kl": "min", "test_loss": "min", "train_loss": "min"},
            _generative_loss,
            _generative_summary,
            "images",
        ),
        TaskSpec(
            "language-model",
            "test_bpc",  # bits per character on the held-out text
            {"test_bpc": "min", "test_loss": "min", "train_bpc": "min", "train_loss": "min"},
            _language_model_loss,
            _language_model_summary,
            "text",
            compressible=False,
        ),
    )
}


def task_spec(task: str) -> TaskSpec:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; one of {sorted(TASKS)}")
    return TASKS[task]
