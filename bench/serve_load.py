"""Serving throughput and latency, side by side in one run, loopback only, bounded in time.

For the tiny digits CNN and the MNIST CNN: (a) a hand-written single-process FastAPI + torch
server, (b) the classifier app, (c) the classifier with @serve.batch, (d) the classifier split
into 2 stage services, (e) an ensemble of 3 models. Each at concurrency 1, 16 and 32 with an
aiohttp client (one instance per request) for --seconds each.

    python bench/serve_load.py [--seconds 5]
Needs models in the store: it trains tiny ones itself into a temp store (1 epoch each).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

PORT_SERVE, PORT_BASE = 18400, 18401
CONCURRENCY = (1, 16, 32)


async def load(url: str, body: bytes, concurrency: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    async with aiohttp.ClientSession(headers={"content-type": "application/json"}) as session:

        async def worker():
            nonlocal errors
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                async with session.post(url, data=body) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    lat = sorted(latencies)
    return {
        "rps": len(lat) / wall,
        "p50_ms": 1000 * lat[len(lat) // 2],
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))],
        "errors": errors,
        "n": len(lat),
    }


def measure(url: str, body: bytes, seconds: float) -> dict:
    asyncio.run(load(url, body, 4, 1.0))  # warm-up
    return {c: asyncio.run(load(url, body, c, seconds)) for c in CONCURRENCY}


def publish(store: str, tmp: str) -> None:
    """Tiny trained models for the bench (1 epoch: quality is not what is measured)."""
    from modelfoundry.config import load_config
    from modelfoundry.training import train

    for cfg_path, _name, extra in [
        ("jobs/configs/cnn_digits.yaml", "cnn-digits", {}),
        ("jobs/configs/mlp_digits.yaml", "mlp-digits", {}),
        ("jobs/configs/rnn_digits.yaml", "rnn-digits", {}),
        ("jobs/configs/cnn_mnist.yaml", "cnn-mnist", {"data.limit": 2000}),
    ]:
        cfg = load_config(
            cfg_path,
            {
                "train.epochs": 1,
                "train.num_workers": 1,
                "train.storage": f"{tmp}/runs",
                "train.model_store": store,
                **extra,
            },
        )
        train(cfg)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    from ray import serve

    from modelfoundry.cluster import connect
    from modelfoundry.config import DataSection
    from modelfoundry.data import load_splits
    from modelfoundry.serving.apps import build_app
    from modelfoundry.store import resolve

    connect()
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = f"{tmp}/models"
        publish(store, tmp)
        serve.start(http_options={"host": "127.0.0.1", "port": PORT_SERVE})
        for model, dataset in (("cnn-digits", "digits"), ("cnn-mnist", "mnist")):
            x = load_splits(DataSection(dataset=dataset, limit=10)).x_test[:1]
            body = json.dumps({"instances": x.tolist()}).encode()
            env = {**os.environ, "MODEL_PATH": resolve(store, model), "OMP_NUM_THREADS": "1"}
            base = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "bench.fastapi_baseline:app",
                    "--port",
                    str(PORT_BASE),
                    "--log-level",
                    "warning",
                ],
                env=env,
            )
            try:
                time.sleep(6)
                results[f"{model} (a) fastapi"] = measure(
                    f"http://127.0.0.1:{PORT_BASE}/v1/models/{model}:predict", body, args.seconds
                )
            finally:
                base.terminate()
                base.wait()
            variants = {
                "(b) classifier": {"model": model},
                "(c) batched": {"model": model, "batching": {"max_batch_size": 16, "batch_wait_timeout_s": 0.002}},
                "(d) split-2": {"model": model, "split": "auto"},
            }
            if model == "cnn-digits":
                variants["(e) ensemble"] = {
                    "kind": "ensemble",
                    "models": ["mlp-digits", "cnn-digits", "rnn-digits"],
                    "name": model,
                }
            for label, app_args in variants.items():
                serve.run(build_app({"store": store, **app_args}), name="bench", route_prefix="/")
                results[f"{model} {label}"] = measure(
                    f"http://127.0.0.1:{PORT_SERVE}/v1/models/{model}:predict", body, args.seconds
                )
                serve.delete("bench")
        serve.shutdown()
    print(f"\n{'setup':32} " + " ".join(f"{'c' + str(c) + ' req/s':>10} {'p50':>6} {'p99':>6}" for c in CONCURRENCY))
    for label, r in results.items():
        base = results[label.split(" ")[0] + " (a) fastapi"]
        cells = " ".join(f"{r[c]['rps']:10.0f} {r[c]['p50_ms']:6.1f} {r[c]['p99_ms']:6.1f}" for c in CONCURRENCY)
        ratio = statistics.mean(r[c]["rps"] / base[c]["rps"] for c in (16, 32))
        print(f"{label:32} {cells}   {ratio:.2f}x (a) at c16/c32")
    Path("bench/results").mkdir(parents=True, exist_ok=True)
    Path("bench/results/serve_load.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
