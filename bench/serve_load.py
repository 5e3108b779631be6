"""Serving throughput and latency, side by side in one run, loopback only, bounded in time.

For the tiny digits CNN and the MNIST CNN: (a) a hand-written single-process FastAPI + torch
server, (b) the classifier app, (c) the classifier with @serve.batch, (d) the classifier split
into 2 stage services, (e) an ensemble of 3 models. Each at concurrency 1, 16 and 32, one
instance per request, for --seconds each. The client is wrk (C, `apt install wrk`) when it is on
PATH, else an aiohttp client; on 2 cores the client shares the CPU with the servers, and a Python
client takes much more of it.

    python bench/serve_load.py [--seconds 5] [--client wrk|aiohttp]
It trains its own models into a temp store (1 epoch each, tiny preset on digits: quality is not
what is measured). The Ray cluster is the platform's default local one (Serve's HAProxy ingress
and throughput settings on: modelfoundry.cluster.serve_env).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PORT_SERVE, PORT_BASE = 18400, 18401
CONCURRENCY = (1, 16, 32)
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open(os.getenv("BODY_FILE"), "r"); wrk.body = f:read("*a"); f:close()
"""
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * UNITS[unit]


def load_wrk(url: str, body: bytes, concurrency: int, seconds: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "body.json").write_bytes(body)
        Path(tmp, "post.lua").write_text(WRK_SCRIPT)
        out = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{concurrency}",
                f"-d{seconds}s",
                "--timeout",
                "10s",
                "--latency",
                "-s",
                f"{tmp}/post.lua",
                url,
            ],
            env={**os.environ, "BODY_FILE": f"{tmp}/body.json"},
            capture_output=True,
            text=True,
            timeout=seconds + 30,
        ).stdout
    lat = dict(re.findall(r"^\s+(50|99)(?:\.0+)?%\s+(\S+)\s*$", out, re.M))
    if "50" not in lat or "99" not in lat:  # nothing (or too little) answered in time
        raise RuntimeError(f"wrk got no latency distribution from {url}:\n{out}")
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": _ms(lat["50"]),
        "p99_ms": _ms(lat["99"]),
        "errors": int(errors.group(1)) if errors else 0,
        "socket_errors": sock.group(1) if sock else "",
        "n": total,
    }


async def load_aiohttp(url: str, body: bytes, concurrency: int, seconds: float) -> dict:
    import aiohttp

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


def measure(url: str, body: bytes, seconds: float, client: str) -> dict:
    if client == "wrk":
        load_wrk(url, body, 4, 1)  # warm-up
        out = {}
        for c in CONCURRENCY:
            out[c] = load_wrk(url, body, c, seconds)
            print(f"  c{c}: {out[c]}", flush=True)
        return out
    asyncio.run(load_aiohttp(url, body, 4, 1.0))
    return {c: asyncio.run(load_aiohttp(url, body, c, seconds)) for c in CONCURRENCY}


def publish(store: str, tmp: str) -> None:
    """Tiny trained models for the bench (1 epoch: quality is not what is measured)."""
    from modelfoundry.config import load_config
    from modelfoundry.training import train

    tiny = {"model.preset": "tiny"}
    for cfg_path, extra in [
        ("jobs/configs/cnn_digits.yaml", tiny),
        ("jobs/configs/mlp_digits.yaml", tiny),
        ("jobs/configs/rnn_digits.yaml", tiny),
        ("jobs/configs/cnn_mnist.yaml", {"data.limit": 2000}),
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
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--client", choices=["wrk", "aiohttp"], default="wrk" if shutil.which("wrk") else "aiohttp")
    args = ap.parse_args()
    print(f"client: {args.client}")
    from ray import serve

    from modelfoundry.cluster import connect
    from modelfoundry.config import DataSection
    from modelfoundry.data import load_splits
    from modelfoundry.serving.apps import QUIET_LOGS, build_app
    from modelfoundry.store import resolve

    connect()
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = f"{tmp}/models"
        publish(store, tmp)
        serve.start(http_options={"host": "127.0.0.1", "port": PORT_SERVE}, logging_config=QUIET_LOGS)
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
                    f"http://127.0.0.1:{PORT_BASE}/v1/models/{model}:predict", body, args.seconds, args.client
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
                serve.run(
                    build_app({"store": store, **app_args}), name="bench", route_prefix="/", logging_config=QUIET_LOGS
                )
                results[f"{model} {label}"] = measure(
                    f"http://127.0.0.1:{PORT_SERVE}/v1/models/{model}:predict", body, args.seconds, args.client
                )
                serve.delete("bench")
        serve.shutdown()
    print(f"\n{'setup':32} " + " ".join(f"{'c' + str(c) + ' req/s':>10} {'p50':>6} {'p99':>6}" for c in CONCURRENCY))
    for label, r in results.items():
        base = results[label.split(" ")[0] + " (a) fastapi"]
        cells = " ".join(f"{r[c]['rps']:10.0f} {r[c]['p50_ms']:6.1f} {r[c]['p99_ms']:6.1f}" for c in CONCURRENCY)
        ratio = statistics.mean(r[c]["rps"] / base[c]["rps"] for c in (16, 32))
        print(f"{label:32} {cells}   {ratio:.2f}x (a) at c16/c32, {r[32]['rps'] / base[32]['rps']:.2f}x at c32")
    for model in ("cnn-digits", "cnn-mnist"):
        mono, split = results[f"{model} (b) classifier"][1], results[f"{model} (d) split-2"][1]
        print(f"{model}: the added stage hop costs {split['p50_ms'] - mono['p50_ms']:.2f} ms at p50 (c1)")
    Path("bench/results").mkdir(parents=True, exist_ok=True)
    Path("bench/results/serve_load.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
