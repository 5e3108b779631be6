"""`:explain` against `:predict` on the digits CNN, monolithic and split-2, at concurrency 1 and 8
(real HTTP on 127.0.0.1, a local Ray cluster, cells in alternating rounds), and what batching the
Integrated-Gradients steps buys (in process: all steps in one forward/backward pass, Captum's
default here, against one pass per step).

    python bench/explain.py [--rounds 2] [--seconds 3] [--steps 100] [--json]

Writes bench/results/explain.json; docs/results.md ("Explanations") has the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from machine import alternating, finish, median_ratio, quiet_start  # bench/machine.py

ROOT = Path(__file__).resolve().parents[1]
PORT = 18301
SETUPS = ("monolithic", "split-2")
CELLS = [(setup, verb, c) for setup in SETUPS for verb in ("predict", "explain") for c in (1, 8)]


def tiny_cnn(splits):
    """The tiny digits CNN, seeded and untrained: IG's cost does not depend on the weights."""
    from modelfoundry.models import build_model, set_normalization

    torch.manual_seed(0)
    model = build_model("cnn", "tiny", input_shape=splits.spec.input_shape, output_dim=splits.spec.output_dim)
    set_normalization(model, splits.stats())
    return model.eval()


async def load(url: str, body: dict, concurrency: int, seconds: float) -> dict[str, float]:
    """Closed loop: `concurrency` clients, each sending its next request when the last answered."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=concurrency)) as client:

        async def one_client() -> None:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                r = await client.post(url, json=body)
                if r.status_code != 200:
                    raise RuntimeError(f"{url}: {r.status_code} {r.text[:300]}")
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    latencies.sort()
    return {
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p95_ms": 1000 * latencies[int(0.95 * (len(latencies) - 1))],
        "rps": len(latencies) / wall,
    }


def step_batching(model, x: np.ndarray, steps: int, repeats: int = 5) -> dict[str, float]:
    """IG on one instance with all steps in one pass (internal_batch_size=None) and one per step."""
    from captum.attr import IntegratedGradients

    ig, xt = IntegratedGradients(model), torch.from_numpy(x[:1])
    out = {}
    for label, batch in (("one_pass_ms", None), ("pass_per_step_ms", 1)):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            ig.attribute(xt, target=0, n_steps=steps, internal_batch_size=batch)
            times.append(1000 * (time.perf_counter() - t0))
        out[label] = statistics.median(times)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "platform"))
    from ray import serve

    from modelfoundry.cluster import connect
    from modelfoundry.config import DataSection
    from modelfoundry.data import load_splits
    from modelfoundry.serving.apps import build_app
    from modelfoundry.store import export
    from modelfoundry.store.checkpoint import write_checkpoint

    start = quiet_start()
    splits = load_splits(DataSection(dataset="digits"))
    model = tiny_cnn(splits)
    x = splits.x_test[:1]
    bodies = {"predict": {"instances": x.tolist()}, "explain": {"instances": x.tolist(), "steps": args.steps}}
    results: dict[str, list[dict]] = {f"{s} {v} c{c}": [] for s, v, c in CELLS}
    with tempfile.TemporaryDirectory(prefix="mf-bench-explain-") as tmp:
        write_checkpoint(
            Path(tmp) / "cnn", model, dataset=splits.spec.to_dict(), metrics={}, extra={"task": "classification"}
        )
        store = f"{tmp}/store"
        export(f"{tmp}/cnn", store, "cnn-digits")
        connect(num_cpus=2)
        serve.start(http_options={"host": "127.0.0.1", "port": PORT})
        for setup, split in (("monolithic", None), ("split-2", "auto")):
            serve.run(
                build_app({"store": store, "model": "cnn-digits", "split": split}), name=setup, route_prefix=f"/{setup}"
            )
        for r, cell in alternating([f"{s} {v} c{c}" for s, v, c in CELLS], args.rounds):
            setup, verb, c = cell.split()
            url = f"http://127.0.0.1:{PORT}/{setup}/v1/models/cnn-digits:{verb}"
            asyncio.run(load(url, bodies[verb], 1, 0.5))  # warm
            got = asyncio.run(load(url, bodies[verb], int(c[1:]), args.seconds))
            results[cell].append(got)
            print(
                f"round {r} {cell}: p50 {got['p50_ms']:.1f} ms, p95 {got['p95_ms']:.1f} ms, {got['rps']:.1f} req/s",
                flush=True,
            )
        serve.shutdown()
    table = {cell: {k: statistics.median(x[k] for x in rows) for k in rows[0]} for cell, rows in results.items()}
    cost = {
        f"{s} c{c}": median_ratio(
            [x["p50_ms"] for x in results[f"{s} explain c{c}"]], [x["p50_ms"] for x in results[f"{s} predict c{c}"]]
        )
        for s in SETUPS
        for c in (1, 8)
    }
    record = {
        "model": "cnn-digits (tiny)",
        "steps": args.steps,
        "instances_per_request": 1,
        "cells": table,
        "explain_over_predict_p50": cost,
        "step_batching": step_batching(model, x, args.steps),
        "machine": finish(start),
        "command": "python bench/explain.py " + " ".join(sys.argv[1:]),
    }
    out = ROOT / "bench" / "results" / "explain.json"
    out.write_text(json.dumps(record, indent=2))
    print(
        json.dumps(
            record if args.json else {"explain_over_predict_p50": cost, "step_batching": record["step_batching"]}
        )
    )


if __name__ == "__main__":
    main()
