"""The loop's epoch metrics for every task: per-batch sums kept on the device, read once per epoch
(tasks.py batch_loss + loop.add_into/all_reduce + summarize), equal the same metrics
computed over the whole split at once."""

import pytest
import torch
from torch.nn import functional as F

from modelfoundry.config import DataSection
from modelfoundry.data import load_splits
from modelfoundry.models import build_model, set_normalization
from modelfoundry.models.vae import vae_loss
from modelfoundry.tasks import batch_loss, summarize
from modelfoundry.training.loop import add_into, all_reduce


def _epoch(task, model, x, y, y_std, batch=37):
    sums = {}
    with torch.no_grad():
        for i in range(0, len(x), batch):
            add_into(sums, batch_loss(task, model, x[i : i + batch], y[i : i + batch], y_std)[1])
    return summarize(task, all_reduce(sums, torch.device("cpu")), "test")


@pytest.mark.parametrize(
    "task, family, dataset",
    [("classification", "cnn", "digits"), ("regression", "rnn", "sunspots"), ("generative", "vae", "digits")],
)
def test_epoch_metrics_from_batch_sums_equal_whole_split_metrics(task, family, dataset):
    torch.manual_seed(0)
    s = load_splits(DataSection(dataset=dataset))
    x, y = torch.from_numpy(s.x_test[:200]), torch.from_numpy(s.y_test[:200])
    extra = {} if task == "generative" else {"output_dim": s.spec.output_dim}
    model = build_model(family, "tiny", input_shape=s.spec.input_shape, **extra).eval()
    set_normalization(model, s.stats())
    y_std = s.stats().get("y_std", 1.0)
    got = _epoch(task, model, x, y, y_std)
    assert all(isinstance(v, float) for v in got.values())
    with torch.no_grad():
        if task == "classification":
            logits = model(x)
            want = {"test_loss": F.cross_entropy(logits, y), "test_accuracy": (logits.argmax(1) == y).float().mean()}
        elif task == "regression":
            pred = model(x).squeeze(-1)
            want = {"test_loss": F.mse_loss(pred / y_std, y / y_std), "test_mae": (pred - y).abs().mean()}
        else:
            logits, mu, logvar = model(x, return_latent=True)
            recon, kl = vae_loss(logits, x, mu, logvar)
            want = {"test_recon": recon.mean(), "test_kl": kl.mean(), "test_neg_elbo": (recon + kl).mean()}
    for k, v in want.items():
        assert got[k] == pytest.approx(float(v), rel=1e-4), k
