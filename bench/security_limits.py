"""The figures behind docs/security.md's round-2 table, on a local Ray cluster over HTTP on
127.0.0.1 (the platform's fast path: HAProxy in front of Serve):

- amplification: what a request with 3,000 copies of one OIP v2 output name gets back now, and
  the largest reply an app allows against its request (VAE reconstruction, 4,096 instances);
- /healthz latency alone and while four clients fetch that largest reply, in alternating rounds;
- a normal keep-alive client's latency alone and beside 500 slow connections (a byte a second),
  in alternating rounds, and how long the proxy takes to close the slow ones;
- the ingress replica's RSS over 1,000 unknown multiplexed model names.

    python bench/security_limits.py [--rounds 2] [--json bench/results/security_limits.json]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import socket
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from machine import alternating, finish, quiet_start  # bench/machine.py

PORT = 18231
URL = f"http://127.0.0.1:{PORT}"


def publish(store: str, tmp: Path) -> None:
    import torch

    from modelfoundry.config import DataSection
    from modelfoundry.data import load_splits
    from modelfoundry.models import build_model, set_normalization
    from modelfoundry.store import export
    from modelfoundry.store.checkpoint import write_checkpoint

    digits = load_splits(DataSection(dataset="digits"))
    for name, family, task in (("mlp-d", "mlp", "classification"), ("vae-d", "vae", "generative")):
        torch.manual_seed(0)
        extra = {} if family == "vae" else {"output_dim": 10}
        model = build_model(family, "tiny", input_shape=digits.spec.input_shape, **extra)
        set_normalization(model, digits.stats())
        write_checkpoint(tmp / name, model, dataset=digits.spec.to_dict(), metrics={}, extra={"task": task})
        export(str(tmp / name), store, name)


def deploy(store: str, **args) -> None:
    from ray import serve

    from modelfoundry.serving.apps import build_app

    serve.run(build_app({"store": store, **args}), name="b", route_prefix="/")


def pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(xs, q)) * 1000, 2)


def amplification(c: httpx.Client) -> dict:
    small = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [4, 64], "data": [0.5] * 256}]}
    body = json.dumps({**small, "outputs": [{"name": "reconstruction"}] * 3000}).encode()
    t0 = time.perf_counter()
    r = c.post("/v2/models/vae-d/infer", content=body, headers={"content-type": "application/json"})
    dup = {"status": r.status_code, "request_bytes": len(body), "reply_bytes": len(r.content),
           "ms": round((time.perf_counter() - t0) * 1000, 1)}  # fmt: skip
    req, headers = largest()
    r = c.post("/v2/models/vae-d/infer", content=req, headers=headers)
    return {
        "3000_duplicate_outputs": dup,
        "largest_allowed": {
            "status": r.status_code,
            "request_bytes": len(req),
            "reply_bytes": len(r.content),
            "ratio": round(len(r.content) / len(req), 2),
        },  # fmt: skip
    }


def largest() -> tuple[bytes, dict]:
    x = np.random.default_rng(0).random((4096, 64), dtype=np.float32)
    head = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [4096, 64],
                                   "parameters": {"binary_data_size": x.nbytes}}]}).encode()  # fmt: skip
    return head + x.tobytes(), {"Inference-Header-Content-Length": str(len(head))}


def healthz(c: httpx.Client, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        c.get("/healthz").raise_for_status()
        out.append(time.perf_counter() - t0)
    return out


def heavy_clients(stop, made, clients: int = 4) -> None:
    """In a process of its own (the client's GIL stays out of the latency measured): `clients`
    threads fetching the largest reply until `stop` is set; `made` counts the replies."""
    req, headers = largest()

    def one() -> None:
        with httpx.Client(base_url=URL, timeout=120) as h:
            while not stop.is_set():
                h.post("/v2/models/vae-d/infer", content=req, headers=headers).raise_for_status()
                with made.get_lock():
                    made.value += 1

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(one) for _ in range(clients)]:
            f.result()


def healthz_under_large_replies(c: httpx.Client, n: int) -> tuple[list[float], int]:
    ctx = multiprocessing.get_context("spawn")
    stop, made = ctx.Event(), ctx.Value("i", 0)
    proc = ctx.Process(target=heavy_clients, args=(stop, made))
    proc.start()
    while made.value < 4:  # the replies are being produced
        time.sleep(0.01)
    lat = healthz(c, n)
    stop.set()
    proc.join()
    return lat, made.value


def predict_latency(c: httpx.Client, n: int) -> list[float]:
    body = {"instances": np.zeros((1, 64)).tolist()}
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        c.post("/v1/models/mlp-d:predict", json=body).raise_for_status()
        out.append(time.perf_counter() - t0)
    return out


def with_slow_clients(c: httpx.Client, n: int, slow: int = 500) -> tuple[list[float], float]:
    """The normal client's latencies beside `slow` connections dripping a header byte a second,
    and the seconds until the proxy has closed them all."""
    socks = []
    for _ in range(slow):
        s = socket.create_connection(("127.0.0.1", PORT), timeout=10)
        s.sendall(b"POST /v1/models/mlp-d:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        s.setblocking(False)
        socks.append(s)
    t_open = time.monotonic()
    stop, closed = threading.Event(), set()

    def drip() -> None:
        while not stop.is_set() and len(closed) < len(socks):
            for i, s in enumerate(socks):
                if i in closed:
                    continue
                try:
                    s.send(b"x")
                    if s.recv(64) is not None:  # a 408 or EOF
                        closed.add(i)
                except BlockingIOError:
                    pass
                except OSError:
                    closed.add(i)
            stop.wait(1.0)

    t = threading.Thread(target=drip)
    t.start()
    lat = predict_latency(c, n)
    deadline = time.monotonic() + 120
    while len(closed) < len(socks) and time.monotonic() < deadline:
        time.sleep(0.2)
    all_closed = time.monotonic() - t_open
    stop.set()
    t.join()
    for s in socks:
        s.close()
    return lat, round(all_closed, 1) if len(closed) == len(socks) else float("nan")


def unknown_names_rss(store: str, c: httpx.Client) -> dict:
    import psutil
    from ray.serve.context import _get_global_client

    deploy(store, kind="multiplex", models=["mlp-d"])
    app = _get_global_client().get_serve_details()["applications"]["b"]
    proc = psutil.Process(app["deployments"]["Ingress"]["replicas"][0]["pid"])
    body = {"instances": np.zeros((1, 64)).tolist()}
    for i in range(200):
        c.post(f"/v1/models/warm-{i}:predict", json=body)
    before = proc.memory_info().rss
    codes = [c.post(f"/v1/models/nope-{i}:predict", json=body).status_code for i in range(1000)]
    after = proc.memory_info().rss
    return {"statuses": sorted(set(codes)), "rss_before_mib": round(before / 2**20, 1),
            "rss_after_mib": round(after / 2**20, 1), "grown_mib": round((after - before) / 2**20, 2)}  # fmt: skip


def side_by_side(setups: dict, rounds: int) -> tuple[dict, list]:
    """Each setup (a function returning (latencies, extra)) once per round, in alternating order:
    the latency percentiles per setup, and every extra value."""
    lat: dict[str, list[float]] = {name: [] for name in setups}
    extras = []
    for _, name in alternating(list(setups), rounds):
        got, extra = setups[name]()
        lat[name] += got
        extras.append(extra)
    return {k: {"p50": pct(v, 50), "p99": pct(v, 99), "max": pct(v, 100)} for k, v in lat.items()}, extras


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--json", default="bench/results/security_limits.json")
    args = p.parse_args()
    machine = quiet_start()
    from ray import serve

    from modelfoundry.cluster import connect

    connect(num_cpus=2)
    tmp = Path(tempfile.mkdtemp(prefix="mf-bench-security-"))
    store = str(tmp / "store")
    publish(store, tmp)
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    out: dict = {"machine": machine}
    c = httpx.Client(base_url=URL, timeout=120)

    deploy(store, model="vae-d", max_instances=4096, max_body_bytes=2_000_000, max_response_bytes=8_000_000)
    out["amplification"] = amplification(c)
    health, made = side_by_side(
        {"alone": lambda: (healthz(c, args.requests), 0),
         "4 clients fetching the largest reply": lambda: healthz_under_large_replies(c, args.requests)},
        args.rounds,
    )  # fmt: skip
    out["healthz_ms"] = health
    out["largest_replies_made"] = sum(made)

    deploy(store, model="mlp-d")
    predict_latency(c, 100)  # warm-up: the replica's first requests
    normal, closes = side_by_side(
        {"alone": lambda: (predict_latency(c, args.requests), None),
         "beside 500 slow connections": lambda: with_slow_clients(c, args.requests)},
        args.rounds,
    )  # fmt: skip
    out["predict_ms"] = normal
    out["slow_connections_all_closed_after_s"] = [x for x in closes if x is not None]
    out["unknown_multiplexed_names"] = unknown_names_rss(store, c)
    serve.shutdown()
    out["machine_after"] = finish(machine)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(json.dumps({k: v for k, v in out.items() if not k.startswith("machine")}, indent=2))


if __name__ == "__main__":
    main()
