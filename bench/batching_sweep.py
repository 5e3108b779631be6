"""Adaptive batching swept: max_batch_size x batch_wait_timeout_s on the digits and the MNIST CNN,
at concurrency 1 (p50 latency), 16 and 32 (req/s, p99), beside the same app without batching, in
one run (every app up together, setups alternating over rounds, medians reported). The app, the
client (wrk, or aiohttp without it) and the models are bench/serve_load.py's.

    python bench/batching_sweep.py [--seconds 3] [--rounds 2] [--sizes 8,16,32] [--waits 0,0.002,0.005]

What a default must do: never cost a lone request (c1 p50 within noise of unbatched) and give the
most req/s at c16/c32 without a p99 blow-up. The JSON lands in bench/results/batching_sweep.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

from machine import alternating, finish  # bench/machine.py
from serve_load import PORT_SERVE, measure, serving_bench, wait_ready


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--models", default="cnn-digits,cnn-mnist")
    ap.add_argument("--sizes", default="8,16,32")
    ap.add_argument("--waits", default="0,0.002,0.005")
    ap.add_argument("--client", choices=["wrk", "aiohttp"], default="wrk" if shutil.which("wrk") else "aiohttp")
    args = ap.parse_args()
    from ray import serve

    from modelfoundry.config import DataSection
    from modelfoundry.data import load_splits
    from modelfoundry.serving.apps import QUIET_LOGS, build_app

    # every app up together: each ingress reserves 0.1 CPU (the default 0.25 x 10 apps is more
    # than this 2-CPU cluster has); an idle app takes no CPU, the one measured takes what it needs
    few = {"ingress": {"num_cpus": 0.1}}
    grid = {"unbatched": few}
    for size in (int(s) for s in args.sizes.split(",")):
        for wait in (float(w) for w in args.waits.split(",")):
            batching = {"max_batch_size": size, "batch_wait_timeout_s": wait}
            grid[f"b{size}-w{wait * 1000:g}ms"] = {**few, "batching": batching}
    models = args.models.split(",")
    results: dict = {"args": vars(args)}
    with serving_bench(models) as (store, start):
        for model in models:
            dataset = {"cnn-digits": "digits", "cnn-mnist": "mnist"}[model]
            x = load_splits(DataSection(dataset=dataset, limit=10)).x_test[:1].tolist()
            body = json.dumps({"instances": x}).encode()
            urls = {}
            try:
                for name, extra in grid.items():
                    app = build_app({"store": store, "model": model, **extra})
                    serve.run(app, name=name, route_prefix=f"/{name}", logging_config=QUIET_LOGS)
                    urls[name] = f"http://127.0.0.1:{PORT_SERVE}/{name}/v1/models/{model}:predict"
                for name, url in urls.items():
                    wait_ready(url, body, None, name)
                    measure(url, body, 1.0, args.client)  # warm-up
                rounds: list[dict] = [{} for _ in range(args.rounds)]
                for r, name in alternating(list(urls), args.rounds):
                    rounds[r][name] = measure(urls[name], body, args.seconds, args.client)
                    print(
                        f"{model} round {r} {name:14} " + " ".join(f"{k} {v:.2f}" for k, v in rounds[r][name].items())
                    )
                results[model] = {
                    name: {k: statistics.median(rd[name][k] for rd in rounds) for k in rounds[0][name]} for name in urls
                }
            finally:
                for name in urls:
                    serve.delete(name)
        serve.shutdown()
    results["machine"] = finish(start)
    print(f"\n{'model setup':28} {'c1 p50 ms':>9} {'c16 req/s':>9} {'c16 p99':>8} {'c32 req/s':>9} {'c32 p99':>8}")
    for model in models:
        for name, s in results[model].items():
            print(
                f"{model + ' ' + name:28} {s['c1_p50_ms']:9.2f} {s['c16_rps']:9.0f} {s['c16_p99_ms']:8.1f} "
                f"{s['c32_rps']:9.0f} {s['c32_p99_ms']:8.1f}"
            )
    Path("bench/results").mkdir(parents=True, exist_ok=True)
    Path("bench/results/batching_sweep.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
