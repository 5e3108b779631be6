"""What each task optimises and reports: the loss, the metric sums, and the metric Tune/keep-best use."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from modelfoundry.models import Task, family_spec
from modelfoundry.models.transformer import language_model_loss
from modelfoundry.models.vae import vae_loss

# the metric that ranks checkpoints and trials, and its direction
TASK_METRIC: dict[str, tuple[str, str]] = {
    "classification": ("test_accuracy", "max"),
    "regression": ("test_mae", "min"),
    "generative": ("test_neg_elbo", "min"),
    "language-model": ("test_bpc", "min"),  # bits per character on the held-out text
}
# what sweeps show per trial, by task
TASK_METRICS: dict[str, list[str]] = {
    "classification": ["test_accuracy", "test_loss", "train_accuracy", "train_loss"],
    "regression": ["test_mae", "test_loss", "train_mae", "train_loss"],
    "generative": ["test_neg_elbo", "test_recon", "test_kl", "test_loss", "train_loss"],
    "language-model": ["test_bpc", "test_loss", "train_bpc", "train_loss"],
}


def task_of(family: str, dataset_task: str) -> Task:
    """The family's own task (the VAE's, the language model's), else the dataset's."""
    return family_spec(family).task_for(dataset_task)


def batch_loss(
    task: Task, model, x: torch.Tensor, y: torch.Tensor, y_std: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor | int]]:
    """(mean loss to backpropagate, metric sums for this batch). The sums stay tensors on the
    batch's device: reading them (`.item()`) every step would stall a GPU on a host sync; the loop
    reads them once per epoch (`all_reduce`)."""
    n = x.shape[0]
    if task == "classification":
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        return loss, {"loss": loss.detach() * n, "correct": (logits.argmax(1) == y).sum(), "n": n}
    if task == "regression":
        pred = model(x).float().squeeze(-1)
        loss = F.mse_loss(pred / y_std, y / y_std)  # in units of the target's std
        return loss, {"loss": loss.detach() * n, "abs_err": (pred.detach() - y).abs().sum(), "n": n}
    if task == "language-model":
        loss_sum = language_model_loss(model(x), y)
        tokens = y.numel()
        return loss_sum / tokens, {"loss": loss_sum.detach(), "tokens": tokens, "n": n}
    logits, mu, logvar = model(x, return_latent=True)
    recon, kl = vae_loss(logits, x, mu, logvar)
    loss = (recon + kl).mean()
    return loss, {"loss": loss.detach() * n, "recon": recon.detach().sum(), "kl": kl.detach().sum(), "n": n}


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
    n = max(sums.get("n", 0), 1)
    if task == "language-model":  # per token, in nats and in bits
        nats = sums["loss"] / max(sums.get("tokens", 0), 1)
        return {f"{prefix}_loss": nats, f"{prefix}_bpc": nats / math.log(2)}
    out = {f"{prefix}_loss": sums["loss"] / n}
    if task == "classification":
        out[f"{prefix}_accuracy"] = sums["correct"] / n
    elif task == "regression":
        out[f"{prefix}_mae"] = sums["abs_err"] / n
    else:
        out[f"{prefix}_recon"] = sums["recon"] / n
        out[f"{prefix}_kl"] = sums["kl"] / n
        out[f"{prefix}_neg_elbo"] = (sums["recon"] + sums["kl"]) / n
    return out
