"""Autoscaling to a latency objective (issue 28): the planner against Ray Serve's default policy on
one split-2 app, under an open-loop load with steps and a spike; then scale-to-zero cold starts.

    python bench/slo_load.py [--rounds 1] [--synthetic-ms 40] [--p99-ms 250] [--json]

- The app: a tiny CNN on digits cut in 2 stage services; each stage call also holds its replica
  `--synthetic-ms` (one call at a time per replica, as a device would): a slower, accelerator-bound
  model played on a 2-core machine, where real compute would saturate the CPUs long before the
  replicas. One replica's capacity is 1000 / synthetic_ms requests/s ("1x").
- The load: Poisson arrivals that never wait for answers (open loop; latency is timed from each
  request's scheduled arrival, so a stalled server cannot hide its queue), 1x -> 4x -> 1x -> a 6x
  spike -> 1x.
- planner: `slo: {p99_ms, max_replicas_total, variant}` (serving/slo_policy.py), the variant a tiny
  MLP (`--variant-synthetic-ms`). default: the same app and budget with Ray Serve's default policy
  per stage, tuned as its autoscaling guide advises for latency (target_ongoing_requests 1: one
  request in service per replica, upscale_delay_s 0, the same look-back and metrics push).
- Reported per policy: attainment (the share of requests answered within the objective; errors
  count as misses), replica-seconds of the stages and variant, requests by the version that answered,
  each step's recovery time (from the step until every later 1 s bucket of the phase has its p99
  within the objective), p50/p99. Then `--cold` cold starts of a min_replicas 0 app after it
  scaled to zero. `--json` prints one object last. The plot: docs/images/slo_load.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import alternating, finish, quiet_start  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PORT = 18600
NAME = "digits-cnn"
PROFILE = [("1x", 1.0, 20.0), ("4x", 4.0, 40.0), ("1x", 1.0, 25.0), ("spike 6x", 6.0, 5.0), ("1x", 1.0, 20.0)]


def make_store(root: Path) -> str:
    import torch

    from modelfoundry import store
    from modelfoundry.config import DataSection
    from modelfoundry.data import load_splits
    from modelfoundry.models import build_model, set_normalization
    from modelfoundry.store.checkpoint import write_checkpoint

    splits = load_splits(DataSection(dataset="digits"))
    s = str(root / "store")
    for family, name in (("cnn", NAME), ("mlp", "digits-mlp")):
        torch.manual_seed(0)
        m = build_model(family, "tiny", input_shape=splits.spec.input_shape, output_dim=splits.spec.output_dim)
        set_normalization(m, splits.stats())
        write_checkpoint(root / name, m, dataset=splits.spec.to_dict(), metrics={}, extra={"task": "classification"})
        store.export(str(root / name), s, name)
    return s


def app_args(store: str, policy: str, a: argparse.Namespace, min_replicas: int = 1) -> dict:
    base = {
        "model": NAME,
        "store": store,
        "split": [[0], [1, 2]],
        "synthetic_ms": a.synthetic_ms,
        "stages": {"num_cpus": 0.05, "max_ongoing_requests": 64},
    }
    if policy == "planner":
        slo = {"p99_ms": a.p99_ms, "max_replicas_total": a.budget, "variant": "digits-mlp"}
        slo |= {"variant_synthetic_ms": a.variant_synthetic_ms, "min_replicas": min_replicas, "idle_to_zero_s": 5.0}
        return {**base, "slo": slo}
    per_stage = a.budget // 2
    auto = {
        "min_replicas": 1,
        "max_replicas": per_stage,
        "target_ongoing_requests": 1,
        "upscale_delay_s": 0.0,
        "downscale_delay_s": 15.0,
        "look_back_period_s": 1.0,
        "metrics_interval_s": 0.5,
    }
    return {**base, "stages": {**base["stages"], "autoscaling_config": auto}}


def deploy(policy: str, args: dict) -> str:
    from ray import serve

    from modelfoundry.serving.apps import run_app
    from modelfoundry.serving.slo_app import deploy_slo

    for app in list(serve.status().applications):
        serve.delete(app)
    if policy == "planner":
        return deploy_slo(args, policy, port=PORT)
    return run_app(args, app_name=policy, port=PORT)


class Sampler:
    """Every second: the running replicas of the stages and variant, and the planner's share."""

    def __init__(self, app: str) -> None:
        self.app, self.rows, self.stop = app, [], False

    async def run(self, t0: float) -> None:
        from ray import serve

        from modelfoundry.serving.slo import board

        b = board(self.app, create=False)
        while not self.stop:  # off the loop: a blocked loop would delay the scheduled arrivals
            deps = (await asyncio.to_thread(serve.status)).applications[self.app].deployments
            counts = {
                n: sum(v for k, v in d.replica_states.items() if k == "RUNNING")
                for n, d in deps.items()
                if n != "Ingress"
            }
            share = (await b.read.remote()).get("variant_share", 0.0) if b else 0.0
            self.rows.append({"t": time.monotonic() - t0, "replicas": counts, "share": share})
            await asyncio.sleep(1.0)


async def open_loop(url: str, body: bytes, capacity: float, sampler: Sampler, seed: int) -> list[dict]:
    import aiohttp

    rng = random.Random(seed)
    out: list[dict] = []
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=30)) as sess:

        async def one(scheduled: float, phase: int) -> None:
            rec = {"t": scheduled - t0, "phase": phase, "ms": None, "version": "error"}
            try:
                async with sess.post(
                    f"{url}/v1/models/{NAME}:predict", data=body, headers={"content-type": "application/json"}
                ) as r:
                    await r.read()
                    if r.status == 200:
                        rec["ms"] = (time.monotonic() - scheduled) * 1000
                        rec["version"] = r.headers.get("x-model-version", "model")
            except (TimeoutError, aiohttp.ClientError):
                pass
            out.append(rec)

        t0 = time.monotonic()
        sampling = asyncio.create_task(sampler.run(t0))
        tasks, at = [], t0
        for phase, (_, mult, seconds) in enumerate(PROFILE):
            end = at + seconds
            while True:
                at += rng.expovariate(capacity * mult)
                if at >= end:
                    at = end
                    break
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                tasks.append(asyncio.create_task(one(at, phase)))
        await asyncio.gather(*tasks)
        sampler.stop = True
        await sampling
    return out


def summarize(recs: list[dict], samples: list[dict], objective: float) -> dict:
    ok = [r for r in recs if r["ms"] is not None and r["ms"] <= objective]
    lat = np.array([r["ms"] if r["ms"] is not None else np.inf for r in recs])
    versions: dict[str, int] = {}
    for r in recs:
        versions[r["version"]] = versions.get(r["version"], 0) + 1
    starts = np.cumsum([0.0] + [p[2] for p in PROFILE])
    recovery = {}
    for i, (label, _, _) in enumerate(PROFILE):
        if i == 0:
            continue
        phase = [r for r in recs if r["phase"] == i]
        buckets = {}
        for r in phase:
            buckets.setdefault(int(r["t"] - starts[i]), []).append(r["ms"] if r["ms"] is not None else np.inf)
        bad = [b for b, v in buckets.items() if np.percentile(v, 99) > objective]
        recovery[f"{i}:{label}"] = 0.0 if not bad else (max(bad) + 1.0 if max(bad) + 1 < PROFILE[i][2] else None)
    by_phase = {}
    for i, (label, _, _) in enumerate(PROFILE):
        phase = [r for r in recs if r["phase"] == i]
        met = sum(1 for r in phase if r["ms"] is not None and r["ms"] <= objective)
        by_phase[f"{i}:{label}"] = round(met / max(1, len(phase)), 4)
    return {
        "requests": len(recs),
        "attainment_by_phase": by_phase,
        "attainment": round(len(ok) / max(1, len(recs)), 4),
        "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1),
        "errors": versions.get("error", 0),
        "by_version": versions,
        "replica_seconds": round(sum(sum(s["replicas"].values()) for s in samples), 1),
        "recovery_s": recovery,
        "timeline": timeline(recs, samples),
    }


def timeline(recs: list[dict], samples: list[dict]) -> list[dict]:
    """Per second: requests, their p99 (ms; an error counts as 1e5), replicas running, variant share."""
    out = []
    for s in samples:
        sec = int(s["t"])
        v = [r["ms"] if r["ms"] is not None else 1e5 for r in recs if int(r["t"]) == sec]
        p99 = round(float(np.percentile(v, 99)), 1) if v else None
        out.append({"t": sec, "n": len(v), "p99_ms": p99, "replicas": s["replicas"], "share": s["share"]})
    return out


def over_rounds(runs: list[dict]) -> dict:
    """A policy's figures: the median over rounds of each number (each round's in `rounds`)."""
    med = statistics.median
    out = {k: med(r[k] for r in runs) for k in ("attainment", "replica_seconds", "p50_ms", "p99_ms", "errors")}
    out["attainment_by_phase"] = {
        p: med(r["attainment_by_phase"][p] for r in runs) for p in runs[0]["attainment_by_phase"]
    }
    versions = {v for r in runs for v in r["by_version"]}
    out["by_version"] = {v: sum(r["by_version"].get(v, 0) for r in runs) for v in sorted(versions)}
    out["requests"] = sum(r["requests"] for r in runs)
    out["rounds"] = runs
    return out


def cold_starts(store: str, a: argparse.Namespace, body: bytes) -> list[float]:
    """First-request latency of a min_replicas 0 planner app, after it scaled to zero, `a.cold` times."""
    import urllib.request

    from ray import serve

    url = deploy("planner", app_args(store, "planner", a, min_replicas=0))
    out = []
    for i in range(a.cold):
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until every deployment of the app is at zero
            deps = serve.status().applications["planner"].deployments
            if all(sum(d.replica_states.values()) == 0 for d in deps.values()):
                break
            time.sleep(0.5)
        else:
            print("the app did not scale to zero in 120 s", file=sys.stderr)
            break
        req = urllib.request.Request(
            f"{url}/v1/models/{NAME}:predict", data=body, headers={"content-type": "application/json"}
        )
        t = time.monotonic()
        with urllib.request.urlopen(req, timeout=120) as r:
            r.read()
        out.append(time.monotonic() - t)
        print(f"cold start {i + 1}: {out[-1]:.2f} s", file=sys.stderr, flush=True)
    return out


def plot(runs: dict[str, tuple[list[dict], list[dict]]], objective: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    for policy, (recs, samples) in runs.items():
        t_end = int(max(r["t"] for r in recs)) + 1
        p99 = []
        for sec in range(t_end):
            v = [r["ms"] if r["ms"] is not None else 1e5 for r in recs if int(r["t"]) == sec]
            p99.append(np.percentile(v, 99) if v else np.nan)
        axes[0].plot(range(t_end), p99, label=policy)
        axes[1].plot([s["t"] for s in samples], [sum(s["replicas"].values()) for s in samples], label=policy)
        if policy == "planner":
            axes[2].plot([s["t"] for s in samples], [100 * s["share"] for s in samples], label="variant share")
    axes[0].axhline(objective, color="k", ls="--", lw=0.8, label="objective")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("p99 per second (ms)")
    axes[1].set_ylabel("replicas (stages + variant)")
    axes[2].set_ylabel("planner: variant share (%)")
    axes[2].set_xlabel("seconds")
    starts = np.cumsum([0.0] + [p[2] for p in PROFILE])
    for ax in axes:
        for s in starts:
            ax.axvline(s, color="grey", lw=0.5)
        ax.legend(loc="upper right", fontsize=8)
    axes[0].set_title("split-2 app, open-loop steps 1x-4x-1x-6x spike-1x: planner vs Ray Serve default")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--synthetic-ms", type=float, default=100.0)
    p.add_argument("--variant-synthetic-ms", type=float, default=20.0)
    p.add_argument("--p99-ms", type=float, default=500.0)
    p.add_argument("--budget", type=int, default=8, help="replicas of the stages (and variant) in all")
    p.add_argument("--cold", type=int, default=5, help="cold starts to time (0: none)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()

    machine = quiet_start()
    from modelfoundry.cluster import connect
    from modelfoundry.config import DataSection
    from modelfoundry.data import load_splits

    tmp = Path(tempfile.mkdtemp(prefix="mf-slo-"))
    store = make_store(tmp)
    body = json.dumps({"instances": load_splits(DataSection(dataset="digits")).x_test[:1].tolist()}).encode()
    print(connect(None), file=sys.stderr, flush=True)
    capacity = 1000.0 / a.synthetic_ms
    results: dict[str, list[dict]] = {"planner": [], "default": []}
    last: dict[str, tuple] = {}
    for rnd, policy in alternating(["planner", "default"], a.rounds):
        url = deploy(policy, app_args(store, policy, a))
        sampler = Sampler(policy)
        recs = asyncio.run(open_loop(url, body, capacity, sampler, seed=rnd))
        summary = summarize(recs, sampler.rows, a.p99_ms)
        print(f"round {rnd} {policy}: {json.dumps(summary)}", file=sys.stderr, flush=True)
        results[policy].append(summary)
        last[policy] = (recs, sampler.rows)
    cold = cold_starts(store, a, body) if a.cold else []
    out: dict = {policy: over_rounds(runs) for policy, runs in results.items()}
    out |= {
        "cold_start_p50_s": round(float(np.percentile(cold, 50)), 3) if cold else None,
        "cold_start_p95_s": round(float(np.percentile(cold, 95)), 3) if cold else None,
        "cold_starts_s": [round(c, 3) for c in cold],
        "synthetic_ms": a.synthetic_ms,
        "variant_synthetic_ms": a.variant_synthetic_ms,
        "objective_p99_ms": a.p99_ms,
        "budget": a.budget,
        "capacity_1x": capacity,
        "profile": PROFILE,
    }
    plot(last, a.p99_ms, ROOT / "docs" / "images" / "slo_load.png")
    out["machine"] = finish(machine)
    out["load_average"] = out["machine"]["after"]["load"][0]
    dest = ROOT / "bench" / "results" / "slo_load.json"
    dest.parent.mkdir(exist_ok=True)
    dest.write_text(json.dumps(out, indent=2))
    # stdout: without the per-second timelines (they stay in the file and the plot)
    brief = dict(out)
    for policy in ("planner", "default"):
        brief[policy] = {
            **out[policy],
            "rounds": [{k: v for k, v in r.items() if k != "timeline"} for r in out[policy]["rounds"]],
        }
    print(json.dumps(brief) if a.json else json.dumps(brief, indent=2))


if __name__ == "__main__":
    main()
