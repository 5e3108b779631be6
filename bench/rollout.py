"""A canary rollout under steady, bounded load on 127.0.0.1: weights 100/0 -> 90/10 -> 0/100 ->
rollback, as a user runs it (`foundry serve NAME --traffic champion=100,challenger=0` in one
process, `foundry rollout NAME ...` commands from another), side by side with the alternative of
putting the weights in the app's args and redeploying (what `serve deploy` of an edited config, or
a `serve.run` with new arguments, does: Serve rebuilds the app and replaces its replicas).

For every step it reports: failed requests (any non-200 or connection error) over the whole run,
the observed share of each version over >= --per-step requests sent after the command returned,
the command's own time (CLI start, Ray connect, apply, every replica at the new weights), and the
switch time: from the command's start to the last response that contradicts the new weights (a
version at weight 0 still answering), or to the first response of a version that went from 0 to
more. Rounds alternate the two methods (in place first in odd rounds, redeploy first in even).

    python bench/rollout.py [--rounds 2] [--per-step 1000] [--concurrency 8]

Two untrained tiny digits MLPs (seeds 0 and 1) are versions 1 and 2 of one model in a temp store:
the routing is measured, not the models. Results: bench/results/rollout.json, docs/results.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import finish, quiet_start  # bench/machine.py

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PORT = 18450
NAME = "rollout-bench"
STEPS = [  # (label, rollout arguments, expected weights {version: percent})
    ("90/10", ["--weight", "challenger=10"], {"1": 90, "2": 10}),
    ("0/100", ["--weight", "challenger=100"], {"1": 0, "2": 100}),
    ("rollback", ["--rollback"], {"1": 100, "2": 0}),
]
WEIGHTS = {"90/10": {"champion": 90, "challenger": 10}, "0/100": {"champion": 0, "challenger": 100}}


def make_store(root: Path) -> str:
    import torch

    from modelfoundry import store
    from modelfoundry.config import DataSection
    from modelfoundry.data import load_splits
    from modelfoundry.models import build_model, set_normalization
    from modelfoundry.store.checkpoint import write_checkpoint

    splits = load_splits(DataSection(dataset="digits"))
    s = str(root / "store")
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_model("mlp", "tiny", input_shape=splits.spec.input_shape, output_dim=splits.spec.output_dim)
        set_normalization(model, splits.stats())
        write_checkpoint(
            root / f"v{seed}", model, dataset=splits.spec.to_dict(), metrics={}, extra={"task": "classification"}
        )
        store.export(str(root / f"v{seed}"), s, NAME)
    store.set_alias(s, NAME, "champion", 1)
    store.set_alias(s, NAME, "challenger", 2)
    return s


class Load:
    """Closed-loop clients: each sends its next request when the last one is answered."""

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self.records: list[tuple[float, float, str | None, int]] = []  # sent, done, version, status
        self.stop = asyncio.Event()

    async def run(self) -> None:
        import aiohttp

        body = json.dumps({"instances": [[[[0.0] * 8] * 8]]}).encode()
        url = f"http://127.0.0.1:{PORT}/v1/models/{NAME}:predict"
        async with aiohttp.ClientSession(headers={"content-type": "application/json"}) as session:

            async def client() -> None:
                while not self.stop.is_set():
                    t0 = time.monotonic()
                    try:
                        async with session.post(url, data=body) as r:
                            data = await r.json() if r.status == 200 else {}
                            self.records.append((t0, time.monotonic(), data.get("model_version"), r.status))
                    except aiohttp.ClientError:
                        self.records.append((t0, time.monotonic(), None, 0))

            await asyncio.gather(*(client() for _ in range(self.concurrency)))

    async def after(self, t: float, n: int) -> list[tuple[float, float, str | None, int]]:
        while True:
            got = [r for r in self.records if r[0] > t]
            if len(got) >= n:
                return got[:n]
            await asyncio.sleep(0.05)


async def command(args: list[str]) -> tuple[float, float, str]:
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=ROOT
    )
    out, _ = await proc.communicate()
    text = out.decode()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{text[-2000:]}")
    return t0, time.monotonic(), text.strip().splitlines()[-1]


def switch_time(records, t0: float, before: dict[str, int], after: dict[str, int]) -> float:
    """Seconds from t0 until the answers follow the new weights: the first answer of a version that
    went from weight 0 to more, and the last answer of a version that went to 0 (the later of them)."""
    done = [r for r in records if r[1] >= t0 and r[3] == 200]
    marks = []
    for v in after:
        if before.get(v, 0) == 0 and after[v] > 0:
            marks.append(min((r[1] for r in done if r[2] == v), default=float("nan")))
        if before.get(v, 0) > 0 and after[v] == 0:
            marks.append(max((r[1] for r in done if r[2] == v), default=t0))
    return round(max(marks) - t0, 3) if marks else 0.0


async def run_method(method: str, load: Load, per_step: int) -> list[dict]:
    rows = []
    before = {"1": 100, "2": 0}
    for label, rollout_args, expected in STEPS:
        if method == "in-place":
            argv = [str(BIN / "foundry"), "rollout", NAME, *rollout_args]
        else:  # the weights in the app's args: a rebuild and new replicas
            weights = WEIGHTS.get(label, {"champion": 100, "challenger": 0})
            argv = [sys.executable, __file__, "--redeploy", json.dumps(weights)]
        t0, t1, said = await command(argv)
        window = await load.after(t1, per_step)
        counts = {v: sum(1 for r in window if r[2] == v) for v in expected}
        shares = {v: round(100 * c / len(window), 2) for v, c in counts.items()}
        applied = re.search(r"after ([0-9.]+)s", said)
        rows.append(
            {
                "method": method,
                "step": label,
                "expected": expected,
                "observed_share": shares,
                "max_share_error_points": max(abs(shares[v] - expected[v]) for v in expected),
                "requests_in_window": len(window),
                "command_s": round(t1 - t0, 2),
                "switch_s": switch_time(load.records, t0, before, expected),
                "apply_s": float(applied.group(1)) if applied else None,
                "said": said,
            }
        )
        before = expected
        print(
            f"  {method:9} {label:9} shares {shares} (want {expected}) command {t1 - t0:.2f}s "
            f"(apply {rows[-1]['apply_s']}s) switch {rows[-1]['switch_s']}s",
            flush=True,
        )
    return rows


def redeploy(weights: dict[str, int]) -> None:
    """The alternative: the new weights in the app's args (and user_config), applied as a new
    declarative config: the args change the app's code version, so Serve rebuilds it."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from modelfoundry.cluster import connect
    from modelfoundry.serving import declarative, rollout

    connect("auto", log_to_driver=False)
    config, _, _ = rollout.live_canary(NAME)
    config["args"]["traffic"] = weights
    for d in config.get("deployments") or []:
        if d.get("name") == rollout.INGRESS:
            d["user_config"] = {"traffic": weights}
    others = [a for a in declarative.declarative_apps() if a["name"] != NAME]
    t0 = time.perf_counter()
    declarative.deploy_all([*others, config])
    declarative.wait_ready(NAME)
    print(f"redeployed {weights}, every replica serving it after {time.perf_counter() - t0:.2f}s")


async def main_async(args) -> dict:
    machine = quiet_start()
    tmp = Path(tempfile.mkdtemp(prefix="mf-rollout-"))
    s = make_store(tmp)
    serve = subprocess.Popen(
        [
            str(BIN / "foundry"),
            "serve",
            NAME,
            "--store",
            s,
            "--traffic",
            "champion=100,challenger=0",
            "--port",
            str(PORT),
            "--for",
            "3600",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    rows: list[dict] = []
    try:
        for line in serve.stdout:
            if "serving at" in line:
                break
        else:
            raise RuntimeError("foundry serve ended before serving")
        load = Load(args.concurrency)
        task = asyncio.create_task(load.run())
        baseline = await load.after(time.monotonic(), args.per_step)
        base = {v: sum(1 for r in baseline if r[2] == v) for v in ("1", "2")}
        print(f"  start     100/0     shares {base}", flush=True)
        for i in range(args.rounds):
            order = ["in-place", "redeploy"] if i % 2 == 0 else ["redeploy", "in-place"]
            for method in order:
                rows += await run_method(method, load, args.per_step)
        load.stop.set()
        await task
        failed = [r for r in load.records if r[3] != 200]
    finally:
        os.killpg(serve.pid, signal.SIGINT)  # the process group we started
        try:
            serve.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
    by_method: dict[str, dict] = {}
    for r in rows:
        m = by_method.setdefault(
            r["method"], {"max_share_error_points": 0, "command_s": [], "apply_s": [], "switch_s": []}
        )
        m["max_share_error_points"] = max(m["max_share_error_points"], r["max_share_error_points"])
        m["command_s"].append(r["command_s"])
        m["switch_s"].append(r["switch_s"])
        if r["apply_s"] is not None:
            m["apply_s"].append(r["apply_s"])
    return {
        "requests": len(load.records),
        "failed": len(failed),
        "failed_statuses": sorted({r[3] for r in failed}),
        "concurrency": args.concurrency,
        "per_step": args.per_step,
        "rounds": args.rounds,
        "steps": rows,
        "by_method": by_method,
        "machine": finish(machine),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--per-step", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--redeploy", help=argparse.SUPPRESS)  # the alternative's command (internal)
    args = p.parse_args()
    if args.redeploy:
        redeploy(json.loads(args.redeploy))
        return
    out = asyncio.run(main_async(args))
    print(f"\n{out['requests']} requests, {out['failed']} failed {out['failed_statuses']}")
    for method, m in out["by_method"].items():
        print(
            f"  {method:9} max share error {m['max_share_error_points']:.2f} points; command s {m['command_s']}; "
            f"apply s {m['apply_s']}; switch s {m['switch_s']}"
        )
    dest = ROOT / "bench" / "results" / "rollout.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=1))
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
