"""Streaming generation side by side in one run, loopback only, bounded in count.

Setups, all serving the same checkpoint (a random-weight transformer of --preset, `tiny` by
default: 2 blocks x 32 wide, 64 positions, pydocs' vocabulary; or --model from --store; speed
does not depend on the weights):
  (a) fastapi   a hand-written FastAPI + uvicorn + torch process (bench/fastapi_generate.py): the
                same validation, each request decoded on its own (per-request decoding)
  (b) litserve  LitServe's continuous-batching loop (bench/peers/litserve_generate.py, from
                .venv-peers: `make bench-peers`), the same batched step written for it
  (c) mono      the platform's app, the model in the ingress replica, continuous batching
  (d) split-2   the platform's app split into 2 stage services, a micro-batch per stage in flight
  (e) split-2 mb1  the same with one micro-batch (no pipelining), to show what pipelining buys
Each round runs every setup (in a rotating order) at concurrency 1, 8 and 32: the streams arrive
within 50 ms and each streams --tokens greedy tokens. Per setup and concurrency: aggregate
tokens/s, time to first token (TTFT) p50/p99 and inter-token latency (ITL) p50/p99 over every
stream's tokens, measured by the client; the medians of the rounds, and the ratios to (a) and to
the setup's own c1, and the 1-minute load average after each run. Optionally then training throughput, DDP vs FSDP (2 workers, gloo on CPU).

    python bench/generate.py [--rounds 3] [--tokens 48] [--preset tiny] [--json] [--train-rounds 0]

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

PORT_SERVE, PORT_BASE, PORT_PEER = 18450, 18451, 18452
PEERS_PY = Path(__file__).resolve().parent.parent / ".venv-peers" / "bin" / "python"
PROMPT = "The with statement is used to wrap the execution of a block "
CONCURRENCY = (1, 8, 32)


async def one_stream(client, url: str, tokens: int, delay: float = 0.0) -> dict:
    await asyncio.sleep(delay)
    t0 = time.perf_counter()
    stamps = []
    async with client.stream("POST", url, json={"prompt": PROMPT, "max_new_tokens": tokens}) as r:
        assert r.status_code == 200, await r.aread()
        async for raw in r.aiter_lines():
            if not raw:
                continue
            msg = json.loads(raw)
            if "token" in msg:
                stamps.append(time.perf_counter())
            elif "error" in msg:
                raise RuntimeError(msg["error"])
    assert len(stamps) == tokens, len(stamps)
    return {"ttft_ms": (stamps[0] - t0) * 1e3, "itl_ms": [(b - a) * 1e3 for a, b in zip(stamps, stamps[1:])]}


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


async def run_setup(url: str, concurrency: int, tokens: int) -> dict:
    """`concurrency` streams arriving within the first 50 ms (random order of arrival)."""
    import random

    import httpx

    rng = random.Random(concurrency)
    limits = httpx.Limits(max_connections=concurrency + 1)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        await one_stream(client, url, 4)  # warm
        t0 = time.perf_counter()
        delays = [rng.random() * 0.05 for _ in range(concurrency)]
        results = await asyncio.gather(*(one_stream(client, url, tokens, d) for d in delays))
        wall = time.perf_counter() - t0
    ttft = [r["ttft_ms"] for r in results]
    itl = [x for r in results for x in r["itl_ms"]]
    return {
        "aggregate_tok_s": concurrency * tokens / wall,
        "ttft_p50_ms": pct(ttft, 50),
        "ttft_p99_ms": pct(ttft, 99),
        "itl_p50_ms": pct(itl, 50),
        "itl_p99_ms": pct(itl, 99),
    }


def publish(store: str, tmp: str, model: str | None, source_store: str | None, preset: str) -> str:
    from modelfoundry.config import DataSection
    from modelfoundry.data import load_splits
    from modelfoundry.models import build_model
    from modelfoundry.store import export, resolve
    from modelfoundry.store.checkpoint import write_checkpoint

    if model:
        return resolve(source_store or "models", model, "latest").uri
    splits = load_splits(DataSection(dataset="pydocs", window=128))
    m = build_model("transformer", preset, vocab_size=splits.spec.num_classes)
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


class Peer:
    """The LitServe peer, started for its own turn only: LitServe 0.2.19's worker loop spins a core
    while idle (litserve/loops/base.py: `while True: await self.run(...); await asyncio.sleep(0)`),
    which would load the machine under every other setup. Stopped with its process group (its
    workers are multiprocessing children)."""

    def __init__(self, env: dict, health: str) -> None:
        self.env, self.health, self.proc = env, health, None

    def __enter__(self):
        cmd = [str(PEERS_PY), "bench/peers/litserve_generate.py"]
        self.proc = subprocess.Popen(cmd, env=self.env, start_new_session=True)
        wait_http(self.health)
        return self

    def __exit__(self, *exc) -> None:
        stop_group(self.proc)


def stop_group(proc: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def serving(args, results: dict) -> None:
    import contextlib

    from ray import serve

    from modelfoundry.serving.apps import QUIET_LOGS, build_app

    with tempfile.TemporaryDirectory() as tmp:
        path = publish(f"{tmp}/models", tmp, args.model, args.store, args.preset)
        store, name = str(Path(path).parent.parent), Path(path).parent.name
        env = {**os.environ, "MODEL_PATH": path, "MODEL_NAME": name, "OMP_NUM_THREADS": "1", "PORT": str(PORT_PEER)}
        base = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "bench.fastapi_generate:app", "--host", "127.0.0.1"]
            + ["--port", str(PORT_BASE), "--log-level", "warning"],
            env=env,
            start_new_session=True,
        )
        urls = {"(a) fastapi": f"http://127.0.0.1:{PORT_BASE}/v1/models/{name}:generate"}
        turn = {}  # what a setup needs running during its own turn only (default: nothing)
        if PEERS_PY.exists():
            urls["(b) litserve"] = f"http://127.0.0.1:{PORT_PEER}/v1/models/{name}:generate"
            turn["(b) litserve"] = lambda: Peer(env, f"http://127.0.0.1:{PORT_PEER}/health")
        else:
            print(f"NOTE: {PEERS_PY} is missing (`make bench-peers`): the LitServe peer is left out", file=sys.stderr)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": PORT_SERVE}, logging_config=QUIET_LOGS)
            apps = {
                "(c) mono": {},
                "(d) split-2": {"split": "auto"},
                "(e) split-2 mb1": {"split": "auto", "micro_batches": 1},
            }
            for i, (label, extra) in enumerate(apps.items()):
                serve.run(
                    build_app({"store": store, "model": name, **extra}),
                    name=f"app{i}",
                    route_prefix=f"/app{i}",
                    logging_config=QUIET_LOGS,
                )
                urls[label] = f"http://127.0.0.1:{PORT_SERVE}/app{i}/v1/models/{name}:generate"
            wait_http(f"http://127.0.0.1:{PORT_BASE}/docs")
            for label, url in urls.items():
                if label in apps:
                    wait_http(url.rsplit("/v1/", 1)[0] + "/healthz")
            order = list(urls)
            for r in range(args.rounds):
                for label in order[r % len(order) :] + order[: r % len(order)]:  # rotate who goes first
                    with turn.get(label, contextlib.nullcontext)():
                        for c in CONCURRENCY:
                            out = asyncio.run(run_setup(urls[label], c, args.tokens))
                            out["load1"] = os.getloadavg()[0]
                            results["serving"].setdefault(label, {}).setdefault(str(c), []).append(out)
                            print(
                                f"round {r + 1} {label} c{c}: {json.dumps({k: round(v, 2) for k, v in out.items()})}",
                                file=sys.stderr,
                            )
        finally:
            stop_group(base)
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
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--preset", default="tiny", help="the transformer preset of the random-weight model")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON object on stdout")
    ap.add_argument("--train-rounds", type=int, default=0, help="DDP vs FSDP training rounds after serving")
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
    table = []
    for label in s:
        for c in map(str, CONCURRENCY):
            rounds = s[label][c]
            row = {"setup": label, "c": int(c)}
            for key in rounds[0]:
                row[key] = statistics.median(x[key] for x in rounds)
            row["vs_per_request"] = statistics.median(
                x["aggregate_tok_s"] / b["aggregate_tok_s"] for x, b in zip(rounds, s["(a) fastapi"][c])
            )
            row["vs_own_c1"] = row["aggregate_tok_s"] / statistics.median(x["aggregate_tok_s"] for x in s[label]["1"])
            table.append(row)
    results["table"] = table
    head = (
        f"{'setup':16} {'c':>2} {'tok/s':>7} {'TTFT p50':>8} {'p99':>7} {'ITL p50':>7} {'p99':>7} {'vs (a)':>6} "
        f"{'vs c1':>6} {'load1':>5}"
    )
    print(head, file=sys.stderr)
    for row in table:
        print(
            f"{row['setup']:16} {row['c']:>2} {row['aggregate_tok_s']:7.0f} {row['ttft_p50_ms']:8.1f} "
            f"{row['ttft_p99_ms']:7.1f} {row['itl_p50_ms']:7.2f} {row['itl_p99_ms']:7.2f} "
            f"{row['vs_per_request']:5.2f}x {row['vs_own_c1']:5.2f}x {row['load1']:5.2f}",
            file=sys.stderr,
        )
    if results["training"]:
        t = results["training"]
        ratio = statistics.median(f / d for f, d in zip(t["fsdp"], t["ddp"]))
        print(
            f"training samples/s: ddp {t['ddp']}, fsdp {t['fsdp']}; fsdp/ddp {ratio:.2f}x (median of rounds)",
            file=sys.stderr,
        )
    Path("bench/results").mkdir(parents=True, exist_ok=True)
    Path("bench/results/generate.json").write_text(json.dumps(results, indent=2))
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
