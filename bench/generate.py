"""Streaming generation side by side in one run, loopback only, bounded in count.

Setups, all serving the same checkpoint (the transformer `default` preset, 4 blocks x 128 wide,
128 positions, pydocs' vocabulary; weights from --model or random: speed does not depend on them):
  (a) fastapi   a hand-written FastAPI + uvicorn + torch process (bench/fastapi_generate.py): the
                same KV-cache generation and validation, what a user would write instead
  (b) mono      the platform's app, the model in the ingress replica
  (c) split-2   the platform's app split into 2 stage services (one hop per stage per token)
Each round runs every setup (in a rotating order) at concurrency 1 and 8: each request streams
--tokens greedy tokens; time to first token (TTFT) and tokens/s are measured by the client from
the stream. Ratios are the median of per-round ratios. Then training throughput, DDP vs FSDP
(2 workers, gloo on CPU), in alternating runs.

    python bench/generate.py [--rounds 3] [--tokens 64] [--train-rounds 2] [--model NAME --store DIR]

The load average and CPU count are recorded before and after; a start above 1.0 is flagged.
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

from machine import finish, quiet_start  # bench/machine.py (the script's folder is on sys.path)

PORT_SERVE, PORT_BASE = 18450, 18451
PROMPT = "The with statement is used to wrap the execution of a block "
CONCURRENCY = (1, 8)


async def one_stream(client, url: str, tokens: int) -> dict:
    t0 = time.perf_counter()
    first = None
    n = 0
    async with client.stream("POST", url, json={"prompt": PROMPT, "max_new_tokens": tokens}) as r:
        assert r.status_code == 200, await r.aread()
        async for raw in r.aiter_lines():
            if not raw:
                continue
            msg = json.loads(raw)
            if "token" in msg:
                n += 1
                first = first or time.perf_counter()
            elif "error" in msg:
                raise RuntimeError(msg["error"])
    end = time.perf_counter()
    assert n == tokens, n
    return {"ttft_ms": (first - t0) * 1e3, "decode_tok_s": (n - 1) / max(end - first, 1e-9), "end": end, "t0": t0}


async def run_setup(url: str, concurrency: int, tokens: int) -> dict:
    import httpx

    async with httpx.AsyncClient(timeout=300) as client:
        await one_stream(client, url, 4)  # warm
        t0 = time.perf_counter()
        results = await asyncio.gather(*(one_stream(client, url, tokens) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {
        "ttft_ms": statistics.median(r["ttft_ms"] for r in results),
        "decode_tok_s": statistics.median(r["decode_tok_s"] for r in results),
        "aggregate_tok_s": concurrency * tokens / wall,
    }


def publish(store: str, tmp: str, model: str | None, source_store: str | None) -> str:
    from modelfoundry.config import DataSection
    from modelfoundry.data import load_splits
    from modelfoundry.models import build_model
    from modelfoundry.store import export, resolve
    from modelfoundry.store.checkpoint import write_checkpoint

    if model:
        return resolve(source_store or "models", model, "latest").uri
    splits = load_splits(DataSection(dataset="pydocs", window=128))
    m = build_model("transformer", "default", vocab_size=splits.spec.num_classes)
    write_checkpoint(f"{tmp}/lm", m, dataset=splits.spec.to_dict(), metrics={}, extra={"task": "language-model"})
    return export(f"{tmp}/lm", store, "lm")["path"]


def wait_http(url: str, deadline_s: float = 120) -> None:
    import httpx

    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer in {deadline_s} s")


def serving(args, results: dict) -> None:
    from ray import serve

    from modelfoundry.serving.apps import QUIET_LOGS, build_app

    with tempfile.TemporaryDirectory() as tmp:
        path = publish(f"{tmp}/models", tmp, args.model, args.store)
        store, name = str(Path(path).parent.parent), Path(path).parent.name
        env = {**os.environ, "MODEL_PATH": path, "OMP_NUM_THREADS": "1"}
        base = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "bench.fastapi_generate:app", "--port", str(PORT_BASE)]
            + ["--log-level", "warning"],
            env=env,
        )
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": PORT_SERVE}, logging_config=QUIET_LOGS)
            for app, extra in (("mono", {}), ("split", {"split": "auto"})):
                serve.run(
                    build_app({"store": store, "model": name, **extra}),
                    name=app,
                    route_prefix=f"/{app}",
                    logging_config=QUIET_LOGS,
                )
            wait_http(f"http://127.0.0.1:{PORT_BASE}/docs")
            urls = {
                "(a) fastapi": f"http://127.0.0.1:{PORT_BASE}/v1/models/{name}:generate",
                "(b) mono": f"http://127.0.0.1:{PORT_SERVE}/mono/v1/models/{name}:generate",
                "(c) split-2": f"http://127.0.0.1:{PORT_SERVE}/split/v1/models/{name}:generate",
            }
            order = list(urls)
            for r in range(args.rounds):
                for label in order[r % 3 :] + order[: r % 3]:  # rotate who goes first
                    for c in CONCURRENCY:
                        out = asyncio.run(run_setup(urls[label], c, args.tokens))
                        results["serving"].setdefault(label, {}).setdefault(str(c), []).append(out)
                        print(f"round {r + 1} {label} c{c}: {json.dumps({k: round(v, 2) for k, v in out.items()})}")
        finally:
            base.terminate()
            base.wait()
            serve.shutdown()


def training(args, results: dict) -> None:
    from modelfoundry.config import parse_config
    from modelfoundry.training import train

    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.train_rounds):
            for strategy in ("ddp", "fsdp") if r % 2 == 0 else ("fsdp", "ddp"):
                cfg = parse_config(
                    {
                        "name": f"bench-{strategy}",
                        "model": {"family": "transformer", "preset": "default"},
                        "data": {"dataset": "pydocs", "limit": args.train_limit},
                        "train": {
                            "epochs": 2,
                            "batch_size": 32,
                            "num_workers": 2,
                            "strategy": strategy,
                            "storage": f"{tmp}/runs",
                            "model_store": f"{tmp}/models",
                        },
                    }
                )
                out = train(cfg, export=False)
                meta = json.loads((Path(out.last_checkpoint) / "model.json").read_text())
                sps = meta["history"][-1]["samples_per_s"]  # the 2nd epoch: past the first-step warm-up
                results["training"].setdefault(strategy, []).append(sps)
                print(f"train round {r + 1} {strategy}: {sps:.1f} samples/s (epoch 2)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--train-rounds", type=int, default=2)
    ap.add_argument("--train-limit", type=int, default=1024)
    ap.add_argument("--model", help="a stored language model to serve (default: random weights)")
    ap.add_argument("--store", help="the model store holding --model")
    args = ap.parse_args()
    from modelfoundry.cluster import connect

    start = quiet_start()
    results: dict = {
        "serving": {},
        "training": {},
        "args": vars(args),
    }
    connect()
    serving(args, results)
    if args.train_rounds:
        training(args, results)
    results["machine"] = finish(start)

    s = results["serving"]
    print(f"{'setup':14} {'c':>2} {'TTFT ms':>8} {'decode tok/s':>12} {'aggregate tok/s':>15} {'vs (a)':>7}")
    for label in s:
        for c in map(str, CONCURRENCY):
            rounds = s[label][c]
            ratio = statistics.median(
                x["aggregate_tok_s"] / b["aggregate_tok_s"] for x, b in zip(rounds, s["(a) fastapi"][c])
            )
            print(
                f"{label:14} {c:>2} {statistics.median(x['ttft_ms'] for x in rounds):8.1f} "
                f"{statistics.median(x['decode_tok_s'] for x in rounds):12.1f} "
                f"{statistics.median(x['aggregate_tok_s'] for x in rounds):15.1f} {ratio:6.2f}x"
            )
    mono, split = s["(b) mono"]["1"], s["(c) split-2"]["1"]
    per_token = statistics.median(1e3 / x["decode_tok_s"] - 1e3 / m["decode_tok_s"] for x, m in zip(split, mono))
    print(f"split-2 adds {per_token:.2f} ms per token at c1 (2 stage hops; median of rounds)")
    results["split_ms_per_token"] = per_token
    if results["training"]:
        t = results["training"]
        ratio = statistics.median(f / d for f, d in zip(t["fsdp"], t["ddp"]))
        print(f"training samples/s: ddp {t['ddp']}, fsdp {t['fsdp']}; fsdp/ddp {ratio:.2f}x (median of rounds)")
    Path("bench/results").mkdir(parents=True, exist_ok=True)
    Path("bench/results/generate.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
