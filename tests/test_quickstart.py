"""The main job end to end: train -> export -> serve -> held-out digits over HTTP -> shut down."""

import pytest

from modelfoundry.config import parse_config
from modelfoundry.quickstart import train_serve_query


def test_train_serve_query_reports_the_accuracy_it_got_over_http(ray_cluster, tmp_path):
    cfg = parse_config(
        {
            "name": "quick",
            "model": {"family": "cnn", "preset": "tiny"},
            "data": {"dataset": "digits"},
            "train": {
                "epochs": 3,
                "lr": 0.01,
                "num_workers": 2,
                "storage": str(tmp_path / "runs"),
                "model_store": str(tmp_path / "models"),
            },
        }
    )
    from ray import serve

    try:
        s = train_serve_query(cfg, port=18250)
        assert "quick" not in serve.status().applications  # the job removed its own app
    finally:
        serve.shutdown()  # Serve itself is the cluster's (here the test session's): not the job's to stop
    assert s["served_examples"] == 450
    # the service returns exactly what the checkpoint scored on the held-out split
    assert s["served_accuracy"] == pytest.approx(s["metrics"]["test_accuracy"], abs=1e-9)
    assert s["served_accuracy"] > 0.6
