"""The serving core before and after a change, side by side: bench/serve_load.py run from two
source trees (this checkout and a base revision, exported with `git archive`), in alternating
rounds (ABBA), each round a fresh local Ray cluster serving the tiny digits CNN three ways
(monolithic `classifier`, adaptive `batched`, `split-2` stage services) next to the hand-written
FastAPI server. Reported: per setup, c1 p50 latency and c16/c32 req/s, medians over rounds, and
the after/before ratio as the median of per-round ratios, with the FastAPI server's ratio beside
it (it is the same code in both trees: its ratio is the noise of the machine).

    python bench/serve_core.py --base 25ceade [--rounds 4] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from machine import alternating, finish, median_ratio, quiet_start  # bench/machine.py

ROOT = Path(__file__).resolve().parents[1]
SETUPS = ("fastapi", "classifier", "batched", "split-2")
KEYS = ("c1_p50_ms", "c16_rps", "c32_rps")


def export_tree(rev: str, where: Path) -> Path:
    where.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    # serve_load.py before 2026-12-07 gave its FastAPI server PYTHONPATH=<tree> alone, so that server
    # imported the installed library, not the tree's: give it the tree's library, as it does now
    script = where / "bench/serve_load.py"
    text = script.read_text()
    script.write_text(text.replace('"PYTHONPATH": str(ROOT)}', '"PYTHONPATH": f"{ROOT}:{ROOT}/platform"}'))
    return where


def one_round(tree: Path, seconds: float) -> dict[str, dict[str, float]]:
    """serve_load.py from `tree`, its library on PYTHONPATH (ahead of the installed one)."""
    env = {**os.environ, "PYTHONPATH": str(tree / "platform")}
    cmd = [sys.executable, "bench/serve_load.py", "--rounds", "1", "--seconds", str(seconds), "--models", "cnn-digits"]
    out = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=900)
    if out.returncode:
        raise RuntimeError(f"serve_load.py in {tree} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    setups = json.loads((tree / "bench/results/serve_load.json").read_text())["cnn-digits"]["setups"]
    return {s: {k: setups[s][k] for k in KEYS} for s in SETUPS}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="the revision to compare with (e.g. the commit before a change)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mf-serve-core-") as tmp:
        trees = {
            "before": export_tree(args.base, Path(tmp, "before")),
            "after": export_tree("HEAD", Path(tmp, "after")),
        }
        start = quiet_start()
        rounds: list[dict] = [{} for _ in range(args.rounds)]
        for r, version in alternating(list(trees), args.rounds):
            rounds[r][version] = one_round(trees[version], args.seconds)
            cells = "  ".join(f"{s} {v['c32_rps']:.0f}/s" for s, v in rounds[r][version].items())
            print(f"round {r} {version:6} {cells}", flush=True)
        machine = finish(start)
    table = {}
    for s in SETUPS:
        row = {}
        for v in trees:
            row[v] = {k: statistics.median(rd[v][s][k] for rd in rounds) for k in KEYS}
        row["after_vs_before"] = {
            k: median_ratio([rd["after"][s][k] for rd in rounds], [rd["before"][s][k] for rd in rounds]) for k in KEYS
        }
        table[s] = row
    print(f"\n{'setup':11} {'c1 p50 ms':>19} {'c16 req/s':>19} {'c32 req/s':>19}   after/before (p50, c16, c32)")
    for s, row in table.items():
        b, a, x = row["before"], row["after"], row["after_vs_before"]
        print(
            f"{s:11} {b['c1_p50_ms']:8.2f} -> {a['c1_p50_ms']:6.2f} {b['c16_rps']:8.0f} -> {a['c16_rps']:6.0f} "
            f"{b['c32_rps']:8.0f} -> {a['c32_rps']:6.0f}   {x['c1_p50_ms']:.2f} {x['c16_rps']:.2f} {x['c32_rps']:.2f}"
        )
    out = {"base": args.base, "rounds": rounds, "table": table, "machine": machine, "args": vars(args)}
    Path(ROOT / "bench/results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench/results/serve_core.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
