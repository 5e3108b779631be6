"""The main job (`make run`): train a model, export it to the store, serve it with Ray Serve on
the local cluster, send the held-out split over real HTTP, report the accuracy it got back, and
shut the service down."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from modelfoundry.config import JobConfig
from modelfoundry.data import load_splits
from modelfoundry.tasks import task_spec


def query_held_out(url: str, name: str, x: np.ndarray, batch: int = 64) -> np.ndarray:
    """Predicted classes (or values) for x, asked of the service in requests of `batch` inputs
    (the standard library's HTTP client: the main job needs nothing the test extra installs)."""
    import json
    import urllib.request

    out: list[Any] = []
    for i in range(0, len(x), batch):
        req = urllib.request.Request(
            f"{url}/v1/models/{name}:predict",
            data=json.dumps({"instances": x[i : i + batch].tolist()}).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as r:  # raises HTTPError on a 4xx/5xx
            out += [p["class"] if isinstance(p, dict) else p for p in json.loads(r.read())["predictions"]]
    return np.asarray(out)


def train_serve_query(cfg: JobConfig, port: int = 8000) -> dict[str, Any]:
    from ray import serve

    from modelfoundry.serving.apps import run_app
    from modelfoundry.training import train

    outcome = train(cfg)
    entry = outcome.model
    assert entry is not None
    t0 = time.perf_counter()
    app = {"model": entry["name"], "version": entry["version"], "store": cfg.train.model_store}
    url = run_app(app, app_name=entry["name"], port=port)
    print(
        f"[{cfg.name}] serving {entry['name']} v{entry['version']} at {url}/v1/models/{entry['name']}:predict "
        f"(ready in {time.perf_counter() - t0:.1f}s)",
        flush=True,
    )
    try:
        splits = load_splits(cfg.data)
        pred = query_held_out(url, entry["name"], splits.x_test)
        if task_spec(splits.spec.task).classifies:
            served = {"served_accuracy": float(np.mean(pred == splits.y_test))}
        else:
            served = {"served_mae": float(np.mean(np.abs(pred - splits.y_test)))}
        print(f"[{cfg.name}] {len(pred)} held-out inputs over HTTP: {served}", flush=True)
    finally:
        # this app only (on a shared cluster others keep running); Serve itself goes with the local
        # cluster. serve.shutdown() here made Ray print "Task ServeController.graceful_shutdown
        # failed" at every clean exit: the controller is killed while its own shutdown task runs
        serve.delete(entry["name"])
        print(f"[{cfg.name}] service shut down", flush=True)
    return {**outcome.summary(), **served, "url": url, "served_examples": len(pred)}
