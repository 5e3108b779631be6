"""Serving throughput and latency against the tools users would pick instead, side by side in one
run, loopback only, bounded in time.

For the tiny digits CNN and the MNIST CNN (default preset), the same checkpoint served by:
  fastapi     a hand-written single-process FastAPI + torch server (bench/fastapi_baseline.py)
  litserve    LitServe 0.2 (bench/peers/litserve_server.py: API server + inference worker)
  bentoml     BentoML 1.4 (bench/peers/bentoml_service.py: one worker)
  classifier  the platform's app (monolithic: the model runs in the ingress replica)
  batched     the same with adaptive batching (max_batch_size 16, wait up to 2 ms with company)
  split-2     the model split into 2 stage services (2 network hops per request)
  floor-0/1   Ray Serve's own hop cost: trivial apps without and with one hop (bench/serve_floor.py)
every one with the platform's request validation. The peers run from the `.venv-peers`
environment (`make bench-peers`; they are absent from the project's, where BentoML's pins would
break Ray's dashboard), and are left out, with a note, when it is missing.

All servers are up together; each round measures every setup (order reversed every other round)
at concurrency 1 (one keep-alive connection, p50 latency) and 16 and 32 (req/s, p99; with wrk when
it is on PATH, `apt install wrk`, else an aiohttp client, which takes far more of the shared CPU).
Reported: medians over rounds, and ratios as the median of per-round ratios. The machine's load
before and after is recorded and a busy start flagged (bench/machine.py).

    python bench/serve_load.py [--seconds 3] [--rounds 3] [--models cnn-digits,cnn-mnist]
It trains its own models into a temp store (1 epoch each: quality is not what is measured). The
Ray cluster is the platform's default local one (modelfoundry.cluster.serve_env).

    python bench/serve_load.py --multiplex [--seconds 5] [--rounds 3]
Model multiplexing instead: 20 tiny digits CNNs (distinct weights) in one `kind: multiplex` app,
its models deployment on 2 replicas holding at most 4 models each (8 of the 20 resident), asked
with each request's model drawn uniformly, from a Zipf law (s = 1.1: a few models take most
requests) or always the same one; beside the one-model app (the model in 2 ingress replicas, no
multiplexing) as the baseline, and a hand-written single-process FastAPI server with an LRU of
8 models (bench/fastapi_multiplex.py: the same 8 resident, no Serve) under the same three model
choices. The model sequence is fixed per setup (seeded), cycled by the client.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import alternating, finish, median_ratio, quiet_start  # bench/machine.py (the script's folder)
from serve_floor import floor_apps

ROOT = Path(__file__).resolve().parents[1]
PEERS_PY = ROOT / ".venv-peers" / "bin" / "python"
PORT_SERVE = 18400
PORTS = {"fastapi": 18401, "litserve": 18402, "bentoml": 18403, "fastapi-lru": 18404, "cli": 18405}
LOADS = (16, 32)
APPS = {
    "classifier": {},
    "batched": {"batching": {"max_batch_size": 16, "batch_wait_timeout_s": 0.002}},
    "split-2": {"split": "auto"},
}


def c1_p50(url: str | list[str], body: bytes, seconds: float) -> float:
    """p50 latency (ms) of one keep-alive client sending one request at a time (to the URLs in
    turn when given several: one server, the paths differ)."""
    urls = [url] if isinstance(url, str) else url
    host, port = urls[0].split("/")[2].split(":")
    paths = ["/" + u.split("/", 3)[3] for u in urls]
    conn = http.client.HTTPConnection(host, int(port))
    lat = []
    deadline = time.perf_counter() + seconds
    while not lat or time.perf_counter() < deadline:  # at least one request
        t0 = time.perf_counter()
        conn.request("POST", paths[len(lat) % len(paths)], body, {"content-type": "application/json"})
        r = conn.getresponse()
        r.read()
        if r.status != 200:
            raise RuntimeError(f"{urls[0]} answered {r.status}")
        lat.append(time.perf_counter() - t0)
    conn.close()
    return 1000 * statistics.median(lat)


async def _load(url: str | list[str], body: bytes, concurrency: int, seconds: float) -> dict:
    import aiohttp

    urls = [url] if isinstance(url, str) else url
    sent = 0

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers={"content-type": "application/json"}) as session:

        async def worker():
            nonlocal errors, sent
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                sent += 1
                async with session.post(urls[sent % len(urls)], data=body) as r:
                    await r.read()
                    errors += r.status != 200
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    lat = sorted(latencies)
    return {"rps": len(lat) / wall, "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))], "errors": errors}


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open(os.getenv("BODY_FILE"), "r"); wrk.body = f:read("*a"); f:close()
local paths, i = {}, 0
for line in io.lines(os.getenv("PATHS_FILE")) do paths[#paths + 1] = line end
request = function() i = i % #paths + 1; return wrk.format(nil, paths[i]) end
"""


def _wrk(url: str | list[str], body: bytes, concurrency: int, seconds: float) -> dict:
    """wrk (C, one thread): far less of the shared 2 cores than a Python client. Several URLs
    (one server): each connection takes the next path of the list in turn."""
    urls = [url] if isinstance(url, str) else url
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "body.json").write_bytes(body)
        Path(tmp, "paths.txt").write_text("".join("/" + u.split("/", 3)[3] + "\n" for u in urls))
        Path(tmp, "post.lua").write_text(WRK_SCRIPT)
        cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--timeout", "10s", "--latency"]
        out = subprocess.run(
            [*cmd, "-s", f"{tmp}/post.lua", urls[0]],
            env={**os.environ, "BODY_FILE": f"{tmp}/body.json", "PATHS_FILE": f"{tmp}/paths.txt"},
            capture_output=True,
            text=True,
            timeout=seconds + 60,
        ).stdout
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not (p99 and rps):
        raise RuntimeError(f"wrk got no result from {url}:\n{out}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)  # connect N, read N, write N, timeout N
    return {
        "rps": float(rps.group(1)),
        "p99_ms": float(p99.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[p99.group(2)],
        "errors": (int(errors.group(1)) if errors else 0)
        + sum(map(int, re.findall(r"\d+", sock.group(1) if sock else ""))),
    }


def measure(url: str | list[str], body: bytes, seconds: float, client: str, loads: tuple[int, ...] = LOADS) -> dict:
    out = {"c1_p50_ms": c1_p50(url, body, seconds)}
    for c in loads:
        r = _wrk(url, body, c, seconds) if client == "wrk" else asyncio.run(_load(url, body, c, seconds))
        if r["errors"]:
            raise RuntimeError(f"{url if isinstance(url, str) else url[0]}: {r['errors']} failed requests at c{c}")
        out[f"c{c}_rps"], out[f"c{c}_p99_ms"] = r["rps"], r["p99_ms"]
    return out


def wait_ready(url: str, body: bytes, proc: subprocess.Popen | None, what: str) -> None:
    deadline = time.monotonic() + 180
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before answering")
        try:
            c1_p50(url, body, 0.0)  # one request
            return
        except (OSError, RuntimeError, http.client.HTTPException) as err:
            last = err
            time.sleep(0.5)
    raise RuntimeError(f"{what} did not answer {url} with 200 within 180 s; last: {last!r}")


def start_servers(model: str, path: str, store: str | None = None) -> dict[str, subprocess.Popen]:
    """The peers (and, given the store, `cli`: the same app as `classifier` started the way a user
    does, `foundry serve MODEL` as a subprocess with its own local Ray cluster)."""
    env = {
        **os.environ,
        "MODEL_PATH": path,
        "MODEL_NAME": model,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "platform")]),
    }
    cmds = {
        "fastapi": [sys.executable, "-m", "uvicorn", "bench.fastapi_baseline:app", "--port", str(PORTS["fastapi"])]
        + ["--log-level", "warning"],
    }
    if PEERS_PY.exists():
        cmds["litserve"] = [str(PEERS_PY), "bench/peers/litserve_server.py"]
        cmds["bentoml"] = [str(PEERS_PY), "-m", "bentoml", "serve", "bench.peers.bentoml_service:Classifier"]
        cmds["bentoml"] += ["--host", "127.0.0.1", "--port", str(PORTS["bentoml"])]
    else:
        print(f"NOTE: {PEERS_PY} is missing (`make bench-peers`): LitServe and BentoML left out", flush=True)
    if store:
        foundry = str(Path(sys.executable).with_name("foundry"))
        cmds["cli"] = [foundry, "serve", model, "--store", store, "--port", str(PORTS["cli"])]
    procs = {}
    for name, cmd in cmds.items():
        with open(Path(tempfile.gettempdir()) / f"serve_load-{name}.log", "w") as log:  # the child keeps its copy
            procs[name] = subprocess.Popen(
                cmd,
                env={**env, "PORT": str(PORTS[name])},
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() ends it with its workers
            )
    return procs


def stop(procs: dict[str, subprocess.Popen]) -> None:
    """Each server with the processes it spawned (LitServe's and BentoML's workers): its own
    process group, started by start_servers, so nothing else is touched."""
    for name, p in procs.items():  # `foundry serve` shuts its Ray cluster down on Ctrl-C
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGINT) if name == "cli" else os.killpg(p.pid, signal.SIGTERM)
    for p in procs.values():
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)  # workers that outlived their parent
        p.wait()


@contextlib.contextmanager
def serving_bench(models: list[str]):
    """The platform's local cluster, `models` trained into a temp store, then (after waiting for a
    quiet machine: what follows is the measurement) Serve on 127.0.0.1:PORT_SERVE. Yields (store,
    the machine record of quiet_start)."""
    from ray import serve

    from modelfoundry.cluster import connect
    from modelfoundry.serving.apps import QUIET_LOGS

    connect()
    with tempfile.TemporaryDirectory() as tmp:
        store = f"{tmp}/models"
        publish(store, tmp, models)
        start = quiet_start()
        serve.start(http_options={"host": "127.0.0.1", "port": PORT_SERVE}, logging_config=QUIET_LOGS)
        yield store, start


def publish(store: str, tmp: str, models: list[str]) -> None:
    """Trained models for the bench (1 epoch: quality is not what is measured)."""
    from modelfoundry.config import load_config
    from modelfoundry.training import train

    configs = {
        "cnn-digits": ("jobs/configs/cnn_digits.yaml", {"model.preset": "tiny"}),
        "cnn-mnist": ("jobs/configs/cnn_mnist.yaml", {"data.limit": 2000}),
    }
    for model in models:
        cfg_path, extra = configs[model]
        overrides = {"train.epochs": 1, "train.num_workers": 1, "train.storage": f"{tmp}/runs", **extra}
        train(load_config(cfg_path, {**overrides, "train.model_store": store}))


def loads(name: str) -> tuple[int, ...]:
    return () if name.startswith("floor") else LOADS  # the floor apps: the c1 hop cost only


def summarize(rounds: list[dict[str, dict]]) -> dict:
    setups = [s for s in rounds[0] if not s.startswith("floor")]
    per = {s: [r[s] for r in rounds] for s in setups}
    out: dict = {"setups": {}}
    for s in setups:
        out["setups"][s] = {k: statistics.median(x[k] for x in per[s]) for k in per[s][0]}
        if s != "fastapi":
            out["setups"][s]["vs_fastapi"] = {
                f"c{c}": median_ratio([x[f"c{c}_rps"] for x in per[s]], [x[f"c{c}_rps"] for x in per["fastapi"]])
                for c in LOADS
            }
    peers = [p for p in ("litserve", "bentoml") if p in setups]
    if peers:  # per round, the better peer at that load
        for s in ("classifier", "batched", "split-2"):
            out["setups"][s]["vs_best_peer"] = {
                f"c{c}": median_ratio(
                    [x[f"c{c}_rps"] for x in per[s]],
                    [max(r[p][f"c{c}_rps"] for p in peers) for r in rounds],
                )
                for c in LOADS
            }
    mono, split = per["classifier"], per["split-2"]
    out["hop_ms_c1"] = statistics.median((b["c1_p50_ms"] - a["c1_p50_ms"]) / 2 for a, b in zip(mono, split))
    f0, f1 = [r["floor-0"]["c1_p50_ms"] for r in rounds], [r["floor-1"]["c1_p50_ms"] for r in rounds]
    out["floor_ms_c1"] = {"floor-0": statistics.median(f0), "floor-1": statistics.median(f1)}
    out["floor_hop_ms_c1"] = statistics.median(b - a for a, b in zip(f0, f1))
    out["split_vs_mono_c16"] = median_ratio([x["c16_rps"] for x in split], [x["c16_rps"] for x in mono])
    if "cli" in setups:  # the same app started by `foundry serve` (its own cluster) vs in this process
        cli = per["cli"]
        out["cli_minus_classifier_c1_ms"] = statistics.median(
            b["c1_p50_ms"] - a["c1_p50_ms"] for a, b in zip(mono, cli)
        )
        out["cli_vs_classifier_c16"] = median_ratio([x["c16_rps"] for x in cli], [x["c16_rps"] for x in mono])
    out["rounds"] = rounds
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", default="cnn-digits,cnn-mnist")
    ap.add_argument("--client", choices=["wrk", "aiohttp"], default="wrk" if shutil.which("wrk") else "aiohttp")
    ap.add_argument("--multiplex", action="store_true", help="the model-multiplexing bench instead (see above)")
    ap.add_argument("--cli", action="store_true", help="add `cli`: the classifier app started by `foundry serve`")
    args = ap.parse_args()
    if args.multiplex:
        return multiplex_main(args)
    models = args.models.split(",")
    from ray import serve

    from modelfoundry.config import DataSection
    from modelfoundry.data import load_splits
    from modelfoundry.serving.apps import QUIET_LOGS, build_app
    from modelfoundry.store import resolve

    results: dict = {"args": vars(args)}
    with serving_bench(models) as (store, start):
        for model in models:
            dataset = {"cnn-digits": "digits", "cnn-mnist": "mnist"}[model]
            body = json.dumps({"instances": load_splits(DataSection(dataset=dataset, limit=10)).x_test[:1].tolist()})
            body = body.encode()
            procs = start_servers(model, resolve(store, model).uri, store if args.cli else None)
            urls = {name: f"http://127.0.0.1:{PORTS[name]}/v1/models/{model}:predict" for name in procs}
            apps: dict = {}
            try:
                apps.update({name: build_app({"store": store, "model": model, **a}) for name, a in APPS.items()})
                apps.update(floor_apps())
                for name, app in apps.items():
                    serve.run(app, name=name, route_prefix=f"/{name}", logging_config=QUIET_LOGS)
                    urls[name] = f"http://127.0.0.1:{PORT_SERVE}/{name}/v1/models/{model}:predict"
                for name, url in urls.items():
                    wait_ready(url, body, procs.get(name), name)
                    measure(url, body, 1.0, args.client, loads(name))  # warm-up
                rounds: list[dict] = [{} for _ in range(args.rounds)]
                for r, name in alternating(list(urls), args.rounds):
                    rounds[r][name] = measure(urls[name], body, args.seconds, args.client, loads(name))
                    cells = " ".join(f"{k} {v:.2f}" for k, v in rounds[r][name].items())
                    print(f"{model} round {r} {name:10} {cells}", flush=True)
                rounds = [{name: rd[name] for name in urls} for rd in rounds]
                results[model] = summarize(rounds)
            finally:
                stop(procs)
                for name in apps:  # built ones; deleting one never deployed is a no-op
                    serve.delete(name)
        serve.shutdown()
    results["machine"] = finish(start)
    report(results, models)
    Path("bench/results").mkdir(parents=True, exist_ok=True)
    Path("bench/results/serve_load.json").write_text(json.dumps(results, indent=2))


MX_MODELS, MX_REPLICAS, MX_PER_REPLICA, MX_ZIPF_S = 20, 2, 4, 1.1


def publish_many(store: str, tmp: str, n: int) -> list[str]:
    """n tiny digits CNNs with distinct random weights (what is measured is the serving of many
    models, not their quality), written straight to the store."""
    import torch

    from modelfoundry.config import DataSection
    from modelfoundry.data import load_splits
    from modelfoundry.models import build_model, set_normalization
    from modelfoundry.store import export
    from modelfoundry.store.checkpoint import write_checkpoint

    digits = load_splits(DataSection(dataset="digits"))
    names = []
    for i in range(n):
        torch.manual_seed(i)
        model = build_model("cnn", "tiny", input_shape=digits.spec.input_shape, output_dim=digits.spec.output_dim)
        set_normalization(model, digits.stats())
        write_checkpoint(
            f"{tmp}/m{i}", model, dataset=digits.spec.to_dict(), metrics={}, extra={"task": "classification"}
        )
        names.append(export(f"{tmp}/m{i}", store, f"digits-{i:02d}")["name"])
    return names


def model_sequence(kind: str, n: int, length: int = 4000, seed: int = 0) -> list[int]:
    """Which of n models each request asks for: uniform, Zipf (rank r drawn with weight r^-s) or one."""
    import random

    rng = random.Random(seed)
    if kind == "one":
        return [0] * length
    weights = [1.0] * n if kind == "uniform" else [1.0 / (r + 1) ** MX_ZIPF_S for r in range(n)]
    return rng.choices(range(n), weights=weights, k=length)


def multiplex_main(args: argparse.Namespace) -> None:
    from ray import serve

    from modelfoundry.cluster import connect
    from modelfoundry.config import DataSection
    from modelfoundry.data import load_splits
    from modelfoundry.serving.apps import QUIET_LOGS, build_app

    connect()
    results: dict = {"args": vars(args), "models": MX_MODELS, "replicas": MX_REPLICAS, "per_replica": MX_PER_REPLICA}
    body = json.dumps({"instances": load_splits(DataSection(dataset="digits")).x_test[:1].tolist()}).encode()
    base = f"http://127.0.0.1:{PORT_SERVE}"
    with tempfile.TemporaryDirectory() as tmp:
        store = f"{tmp}/models"
        names = publish_many(store, tmp, MX_MODELS)
        start = quiet_start()
        serve.start(http_options={"host": "127.0.0.1", "port": PORT_SERVE}, logging_config=QUIET_LOGS)
        procs: dict[str, subprocess.Popen] = {}
        try:
            mx = {"store": store, "kind": "multiplex", "models": names, "max_models_per_replica": MX_PER_REPLICA}
            mx["stages"] = {"num_replicas": MX_REPLICAS}
            one = {"store": store, "model": names[0], "ingress": {"num_replicas": MX_REPLICAS}}
            serve.run(build_app(mx), name="mx", route_prefix="/mx", logging_config=QUIET_LOGS)
            serve.run(build_app(one), name="one", route_prefix="/one", logging_config=QUIET_LOGS)
            shares = {}
            urls = {"one-model app": [f"{base}/one/v1/models/{names[0]}:predict"]}
            fastapi = f"http://127.0.0.1:{PORTS['fastapi-lru']}"
            for kind in ("one", "zipf", "uniform"):
                seq = model_sequence(kind, MX_MODELS)
                urls[f"multiplex {kind}"] = [f"{base}/mx/v1/models/{names[i]}:predict" for i in seq]
                urls[f"fastapi-lru {kind}"] = [f"{fastapi}/v1/models/{names[i]}:predict" for i in seq]
                top = sorted((seq.count(i) for i in set(seq)), reverse=True)
                shares[f"multiplex {kind}"] = shares[f"fastapi-lru {kind}"] = sum(
                    top[: MX_REPLICAS * MX_PER_REPLICA]
                ) / len(seq)
            env = {**os.environ, "STORE": store, "MODELS": ",".join(names), "OMP_NUM_THREADS": "1"}
            env.update(
                {
                    "MAX_MODELS": str(MX_REPLICAS * MX_PER_REPLICA),
                    "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "platform")]),
                }
            )
            log = open(Path(tempfile.gettempdir()) / "serve_load-fastapi-lru.log", "w")  # noqa: SIM115
            procs["fastapi-lru"] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "bench.fastapi_multiplex:app",
                    "--port",
                    str(PORTS["fastapi-lru"]),
                ]
                + ["--log-level", "warning"],
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            log.close()  # the child keeps its copy
            for name, url in urls.items():
                wait_ready(url[0], body, procs["fastapi-lru"] if name.startswith("fastapi") else None, name)
                measure(url, body, 1.0, args.client, (16,))  # warm-up (and the models' first loads)
            rounds: list[dict] = [{} for _ in range(args.rounds)]
            for r, name in alternating(list(urls), args.rounds):
                rounds[r][name] = measure(urls[name], body, args.seconds, args.client, (16,))
                cells = " ".join(f"{k} {v:.2f}" for k, v in rounds[r][name].items())
                print(f"round {r} {name:18} {cells}", flush=True)
            rounds = [{name: rd[name] for name in urls} for rd in rounds]
            base_name = "one-model app"
            results["setups"] = {
                name: {
                    **{k: statistics.median(rd[name][k] for rd in rounds) for k in rounds[0][name]},
                    "vs_one_model_app_c16": median_ratio(
                        [rd[name]["c16_rps"] for rd in rounds], [rd[base_name]["c16_rps"] for rd in rounds]
                    ),
                    "requests_to_top8_models": shares.get(name, 1.0),
                }
                for name in urls
            }
            results["rounds"] = rounds
        finally:
            stop(procs)
            for name in ("mx", "one"):
                serve.delete(name)
            serve.shutdown()
    results["machine"] = finish(start)
    print(f"\n{'setup':18} {'c1 p50 ms':>9} {'c16 req/s':>9} {'c16 p99':>8} {'vs one-model':>12} {'top-8 share':>11}")
    for name, s in results["setups"].items():
        print(
            f"{name:18} {s['c1_p50_ms']:9.2f} {s['c16_rps']:9.0f} {s['c16_p99_ms']:8.1f} "
            f"{s['vs_one_model_app_c16']:11.2f}x {s['requests_to_top8_models']:11.2f}"
        )
    Path("bench/results").mkdir(parents=True, exist_ok=True)
    Path("bench/results/serve_multiplex.json").write_text(json.dumps(results, indent=2))


def report(results: dict, models: list[str]) -> None:
    head = f"{'setup':22} {'c1 p50 ms':>9} {'c16 req/s':>9} {'c32 req/s':>9} {'c32 p99':>8}  vs fastapi c16/c32  vs best peer"
    print("\n" + head)
    for model in models:
        for name, s in results[model]["setups"].items():
            vs = s.get("vs_fastapi", {})
            peer = s.get("vs_best_peer", {})
            print(
                f"{model + ' ' + name:22} {s['c1_p50_ms']:9.2f} {s['c16_rps']:9.0f} {s['c32_rps']:9.0f} "
                f"{s['c32_p99_ms']:8.1f}  "
                + (f"{vs['c16']:.2f}x / {vs['c32']:.2f}x" if vs else "1.00x / 1.00x")
                + (f"   {peer['c16']:.2f}x / {peer['c32']:.2f}x" if peer else "")
            )
        m = results[model]
        print(
            f"{model}: split adds {m['hop_ms_c1']:.2f} ms per hop at c1 (p50, median of rounds); Ray Serve's "
            f"own hop (trivial apps, same run) {m['floor_hop_ms_c1']:.2f} ms; "
            f"split-2 c16 = {m['split_vs_mono_c16']:.2f}x the classifier's"
        )
        if "cli_vs_classifier_c16" in m:
            print(
                f"{model}: `foundry serve` vs the in-process app: c1 p50 {m['cli_minus_classifier_c1_ms']:+.2f} ms, "
                f"c16 {m['cli_vs_classifier_c16']:.2f}x"
            )


if __name__ == "__main__":
    main()
