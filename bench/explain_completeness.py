"""How complete Integrated Gradients is on the tiny digits/sunspots models: per model and step
count, the 95th percentile and the largest |sum(attributions) - (f(x) - f(baseline))| /
|f(x) - f(baseline)| over the first 64 held-out instances (zero baseline, target = the predicted
class or output 0), models trained 3 epochs in process as tests/test_explain.py trains them.

    python bench/explain_completeness.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "platform")]

from modelfoundry.config import DataSection  # noqa: E402
from modelfoundry.data import load_splits  # noqa: E402
from modelfoundry.serving.explain import integrated_gradients, parse_explain  # noqa: E402
from test_explain import _model  # noqa: E402  the test's own training, so the figures are the test's models

CASES = [("mlp", "digits", True), ("cnn", "digits", True), ("rnn", "digits", True), ("rnn", "sunspots", False)]


def main() -> None:
    out = {}
    for family, dataset, classes in CASES:
        splits = load_splits(DataSection(dataset=dataset))
        model = _model(family, splits, epochs=3)
        x = splits.x_test[:64]
        for steps in (50, 100):
            req = parse_explain({"instances": x.tolist(), "steps": steps}, splits.spec.input_shape, 10**6)
            got = integrated_gradients(model, req, classes)["explanations"]
            gaps = np.array([np.sum(e["attributions"]) - e["delta"] for e in got])  # f(x) - f(baseline)
            rel = np.abs([e["delta"] for e in got]) / np.maximum(np.abs(gaps), 1e-12)
            key = f"{family}-{dataset} {steps} steps"
            out[key] = {"p95": float(np.percentile(rel, 95)), "max": float(rel.max()), "instances": len(got)}
            print(f"{key}: p95 {100 * out[key]['p95']:.2f}%, max {100 * out[key]['max']:.2f}%", flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
