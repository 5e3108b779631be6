""":explain (serving/explain.py): Integrated Gradients with Captum, whole and through stages that
each answer only a vector-Jacobian product; completeness; bad parameters. Over HTTP on a live
Serve app, monolithic and split: tests/test_serving.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modelfoundry.config import DataSection
from modelfoundry.data import load_splits
from modelfoundry.models import build_model, set_normalization
from modelfoundry.models.stages import group_module, model_stages
from modelfoundry.serving.explain import integrated_gradients, parse_explain, stage_chain, vjp
from modelfoundry.serving.requests import RequestError
from modelfoundry.tasks import batch_loss

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data():
    return {"digits": load_splits(DataSection(dataset="digits")), "sun": load_splits(DataSection(dataset="sunspots"))}


def _model(family: str, splits, epochs: int = 0):
    """A tiny model of the family, trained `epochs` in this process (an untrained one's outputs
    barely move between input and baseline: nothing to attribute)."""
    torch.manual_seed(0)
    model = build_model(family, "tiny", input_shape=splits.spec.input_shape, output_dim=splits.spec.output_dim)
    set_normalization(model, splits.stats())
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y, y_std = torch.from_numpy(splits.x_train), torch.from_numpy(splits.y_train), float(splits.stats()["y_std"])
    for _ in range(epochs):
        for i in torch.randperm(len(x)).split(32):
            loss, _ = batch_loss(splits.spec.task, model, x[i], y[i], y_std)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def _chain(model, groups):
    """The model as stage functions that answer forward and VJP only, as Stage services do."""
    stages = [group_module(model, g).eval() for g in groups]

    def call(m):
        return lambda a: m(torch.from_numpy(np.asarray(a, dtype=np.float32))).detach().numpy()

    return stage_chain([(call(m), lambda a, g, m=m: vjp(m, a, g, CPU)) for m in stages])


CASES = [("mlp", "digits", True), ("cnn", "digits", True), ("rnn", "digits", True), ("rnn", "sun", False)]


@pytest.mark.slow  # trains four models for 3 epochs each, in this process: the full tier
@pytest.mark.parametrize("family,dataset,classes", CASES, ids=[f"{f}-{d}" for f, d, _ in CASES])
def test_attributions_are_complete_and_equal_through_stages(data, family, dataset, classes):
    splits = data[dataset]
    model = _model(family, splits, epochs=3)
    x = splits.x_test[:32]
    req = parse_explain({"instances": x.tolist()}, splits.spec.input_shape, 32 * 100)
    assert req.steps == 100 and req.targets is None and not req.baseline.any()
    whole = integrated_gradients(model, req, classes)["explanations"]
    n_stages = len(model_stages(model))
    split = integrated_gradients(_chain(model, [[0], list(range(1, n_stages))]), req, classes)["explanations"]
    with torch.no_grad():
        out = model(torch.from_numpy(x)).reshape(32, -1)
        base = model(torch.zeros_like(torch.from_numpy(x))).reshape(32, -1)
    errors = []
    for i, (w, s) in enumerate(zip(whole, split)):
        assert w["target"] == s["target"] == (int(out[i].argmax()) if classes else 0)
        a = np.asarray(w["attributions"])
        assert a.shape == x.shape[1:]
        np.testing.assert_allclose(np.asarray(s["attributions"]), a, atol=1e-4)
        gap = float(out[i, w["target"]] - base[i, w["target"]])
        assert w["delta"] == pytest.approx(a.sum() - gap, abs=1e-4)  # Captum's convergence delta
        errors.append(abs(a.sum() - gap) / abs(gap))
    # completeness: the attributions add up to f(x) - f(baseline) for the target within 1% for 95%
    # of the instances at the default steps (ReLU kinks: a few are further off; delta says so)
    assert np.percentile(errors, 95) <= 0.01 and max(errors) <= 0.02, sorted(errors)[-3:]


def test_target_baseline_and_steps_are_used(data):
    splits = data["digits"]
    model = _model("mlp", splits)
    x = splits.x_test[:2]
    one = splits.x_test[5].tolist()
    req = parse_explain({"instances": x.tolist(), "target": [3, 7], "baseline": one, "steps": 8}, (1, 8, 8), 256)
    got = integrated_gradients(model, req, True)["explanations"]
    assert [e["target"] for e in got] == [3, 7]
    # a baseline equal to the input attributes nothing
    req = parse_explain({"instances": [one], "target": 2, "baseline": one}, (1, 8, 8), 256)
    assert not np.asarray(integrated_gradients(model, req, True)["explanations"][0]["attributions"]).any()


BAD = [
    ({"instances": [[0.0] * 64], "steps": 0}, 400, "steps must be an integer from 1 to 1024"),
    ({"instances": [[0.0] * 64], "steps": 5000}, 400, "steps must be an integer"),
    ({"instances": [[0.0] * 64], "steps": "50"}, 400, "steps must be an integer"),
    ({"instances": [[0.0] * 64], "steps": True}, 400, "steps must be an integer"),
    ({"instances": [[0.0] * 64] * 3}, 413, "3 instances x 100 steps is 300 rows to run; the limit is 256"),
    ({"instances": [[0.0] * 64], "target": "3"}, 400, "target must be an integer or a list of 1 integers"),
    ({"instances": [[0.0] * 64] * 2, "target": [1]}, 400, "a list of 2 integers"),
    ({"instances": [[0.0] * 64], "baseline": [0.0] * 10}, 400, "baseline: each input must have shape [1, 8, 8]"),
    ({"instances": [[0.0] * 64], "baseline": "zeros"}, 400, "baseline must be a number or one instance"),
    ({"instances": [[0.0] * 64], "baseline": 1e39}, 400, "baseline holds NaN or infinite values"),
    ({"instances": [[0.0] * 64], "baseline": [["x"] * 64]}, 400, "baseline: 'baseline' must hold numbers only"),
    ({"instances": [[0.0] * 64], "method": "saliency"}, 400, "unknown field(s) ['method']"),
    ({"instances": []}, 400, "is empty"),
]


@pytest.mark.parametrize("body,status,message", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_explain_requests_name_what_is_wrong(body, status, message):
    with pytest.raises(RequestError) as err:
        parse_explain(body, (1, 8, 8), 256)
    assert err.value.status == status and message in err.value.message, err.value.message


def test_a_target_out_of_range_is_a_400(data):
    model = _model("mlp", data["digits"])
    req = parse_explain({"instances": [[0.0] * 64], "target": 10}, (1, 8, 8), 256)
    with pytest.raises(RequestError, match=r"target 10 is out of range: the model has 10 outputs \(0..9\)"):
        integrated_gradients(model, req, True)


def test_explain_is_offered_only_where_gradients_exist():
    """A quantized version (int8 kernels have no gradients), token inputs, a generative model or a
    family without predict get no :explain verb (a 404 'unknown verb' then)."""
    from modelfoundry.serving.spec import can_explain
    from modelfoundry.store import CheckpointMeta

    def meta(**kw):
        return CheckpointMeta(
            **{"family": "mlp", "config": {}, "input_spec": {"shape": [1, 8, 8]}, "sha256": "0", **kw}
        )

    assert can_explain(meta(), "classification", ("predict",))
    assert can_explain(meta(), "regression", ("predict",))
    assert not can_explain(meta(quantization={"scheme": "dynamic-int8"}), "classification", ("predict",))
    assert not can_explain(meta(input_spec={"shape": [64], "dtype": "int64"}), "classification", ("predict",))
    assert not can_explain(meta(), "generative", ("predict",))
    assert not can_explain(meta(), "classification", ("encode", "decode"))
