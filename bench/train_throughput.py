"""Training throughput of the MNIST CNN, side by side in one run:

  plain      one process, in-memory tensors, a plain PyTorch loop, 1 torch thread (what a 1-CPU
             Ray worker gets)
  ddp-2      native torch DDP (gloo), 2 processes spawned like torchrun (OMP_NUM_THREADS=1),
             DistributedSampler
  ray-1/2    Ray Train TorchTrainer (this platform) with 1 and 2 workers, each worker's shard
             held in memory (data.in_memory: auto)
  ray-2-str  the same with 2 workers, the shard streamed from Ray Data every epoch

plain and ddp-2 run first before the Ray cluster starts; then, with the (idle) cluster up (on 2
cores its own processes take CPU from any training), rounds of ddp-2, ray-2, plain, ray-1
alternate for --rounds rounds: this shared machine's speed drifts by tens of percent within
minutes. The parity figures are the medians of the per-round ratios.

The idle cluster's CPU use (all its processes, over 10 s) is printed too.

Steady-state samples/s = training samples / training time, over the epochs after the first.
Per-epoch overhead (Ray Train) = (time between epoch starts - the epoch's own train+eval time)
/ time between epoch starts: the cost of report + checkpoint + the controller's poll.

    python bench/train_throughput.py [--limit 12000] [--epochs 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn import functional as F

from machine import finish, quiet_start  # bench/machine.py (the script's folder is on sys.path)
from modelfoundry.config import DataSection, load_config
from modelfoundry.data import load_splits
from modelfoundry.models import build_model, set_normalization

BATCH = 128


def _model(splits):
    torch.manual_seed(0)
    m = build_model("cnn", "default", input_shape=splits.spec.input_shape, output_dim=10)
    set_normalization(m, splits.stats())
    return m


def _epochs(model, x, y, epochs, rank=0, world=1) -> list[float]:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rates = []
    for epoch in range(epochs):
        g = torch.Generator().manual_seed(epoch)
        order = torch.randperm(len(x), generator=g)[rank::world]  # what DistributedSampler does
        t0 = time.perf_counter()
        for i in range(0, len(order), BATCH):
            idx = order[i : i + BATCH]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        rates.append(len(order) * world / (time.perf_counter() - t0))
    return rates


def plain(splits, epochs) -> list[float]:
    torch.set_num_threads(1)
    return _epochs(_model(splits), torch.from_numpy(splits.x_train), torch.from_numpy(splits.y_train), epochs)


def _ddp_worker(rank, world, port, limit, epochs, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    splits = load_splits(DataSection(dataset="mnist", limit=limit))
    model = torch.nn.parallel.DistributedDataParallel(_model(splits))
    rates = _epochs(model, torch.from_numpy(splits.x_train), torch.from_numpy(splits.y_train), epochs, rank, world)
    if rank == 0:
        Path(out).write_text(json.dumps(rates))
    dist.destroy_process_group()


def ddp(limit, epochs, world=2) -> list[float]:
    # what torchrun does for more than one process per node: OMP_NUM_THREADS=1, set before the
    # workers import torch (as Ray does for a 1-CPU worker)
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            mp.spawn(_ddp_worker, args=(world, 29517, limit, epochs, f.name), nprocs=world)
            return json.loads(Path(f.name).read_text())
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved


def idle_cluster_cpu(seconds: float = 10.0) -> float:
    """CPU cores the idle local cluster's processes use (children of this driver: GCS, raylet,
    dashboard, agents, idle workers)."""
    import psutil

    procs = psutil.Process().children(recursive=True)

    def total() -> float:
        t = 0.0
        for p in procs:
            try:
                c = p.cpu_times()
                t += c.user + c.system
            except psutil.NoSuchProcess:
                pass
        return t

    before = total()
    time.sleep(seconds)
    return (total() - before) / seconds


def ray_train(workers, limit, epochs, tmp, in_memory="auto") -> tuple[list[float], list[float]]:
    from modelfoundry.training import train

    cfg = load_config(
        "jobs/configs/cnn_mnist.yaml",
        {
            "data.limit": limit,
            "train.epochs": epochs,
            "train.num_workers": workers,
            "train.lr_schedule": "none",
            "train.storage": f"{tmp}/runs",
            "train.model_store": f"{tmp}/models",
            "name": f"bench-{workers}",
            "data.in_memory": in_memory,
        },
    )
    outcome = train(cfg, export=False)
    meta = json.loads(Path(outcome.checkpoint, "model.json").read_text())
    h = meta["history"]
    rates = [e["samples_per_s"] for e in h]
    overhead = [
        max(0.0, (b["started_at"] - a["started_at"] - a["epoch_time_s"]) / (b["started_at"] - a["started_at"]))
        for a, b in zip(h, h[1:])
    ]
    return rates, overhead


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=12000, help="MNIST training examples per epoch")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of ddp-2, ray-2, plain, ray-1 with the cluster up (parity figures: medians of per-round ratios)",
    )
    args = ap.parse_args()
    start = quiet_start()
    splits = load_splits(DataSection(dataset="mnist", limit=args.limit))
    rows = {"plain": plain(splits, args.epochs), "ddp-2": ddp(args.limit, args.epochs)}
    from modelfoundry.cluster import connect

    connect()
    time.sleep(5)  # let the cluster settle before measuring it
    idle = idle_cluster_cpu()
    overheads, pairs = {}, {"2": [], "1": []}

    def ratio(a: str, b: str) -> float:
        return statistics.mean(rows[a][1:]) / statistics.mean(rows[b][1:])

    with tempfile.TemporaryDirectory() as tmp:
        for r in range(1, args.rounds + 1):
            rows[f"ddp-2+ray#{r}"] = ddp(args.limit, args.epochs)
            rows[f"ray-2#{r}"], overheads[f"ray-2#{r}"] = ray_train(2, args.limit, args.epochs, tmp)
            rows[f"plain+ray#{r}"] = plain(splits, args.epochs)
            rows[f"ray-1#{r}"], overheads[f"ray-1#{r}"] = ray_train(1, args.limit, args.epochs, tmp)
            pairs["2"].append(ratio(f"ray-2#{r}", f"ddp-2+ray#{r}"))
            pairs["1"].append(ratio(f"ray-1#{r}", f"plain+ray#{r}"))
        # the same with the shard streamed from Ray Data every epoch (data.in_memory: false)
        rows["ray-2-str"], overheads["ray-2-str"] = ray_train(2, args.limit, args.epochs, tmp, in_memory=False)
    steady = {k: statistics.mean(v[1:]) for k, v in rows.items()}
    ref = statistics.mean(steady[f"ddp-2+ray#{r}"] for r in range(1, args.rounds + 1))
    print(
        f"\nMNIST CNN, {args.limit} examples/epoch, batch {BATCH}/worker, {args.epochs} epochs (steady = after the first)"
    )
    print(f"idle local Ray cluster: {idle:.2f} CPU cores of {os.cpu_count()}")
    print(f"{'setup':11} {'samples/s':>10} {'vs ddp-2+ray (mean)':>20} {'per-epoch overhead':>19}")
    for k, v in steady.items():
        ov = f"{100 * statistics.mean(overheads[k]):.1f}%" if k in overheads else ""
        print(f"{k:11} {v:10.0f} {v / ref:20.2f} {ov:>19}")
    for n, baseline in (("2", "native DDP-2"), ("1", "plain loop (1 thread)")):
        print(
            f"TorchTrainer-{n} / {baseline} per round: {', '.join(f'{p:.2f}' for p in pairs[n])}; "
            f"median {statistics.median(pairs[n]):.2f}x"
        )
    result = {
        "limit": args.limit,
        "epochs": args.epochs,
        "samples_per_s": rows,
        "steady": steady,
        "overhead": overheads,
        "ray2_vs_ddp2_per_round": pairs["2"],
        "ray2_vs_ddp2_median": statistics.median(pairs["2"]),
        "ray1_vs_plain_per_round": pairs["1"],
        "ray1_vs_plain_median": statistics.median(pairs["1"]),
        "idle_cluster_cpu_cores": idle,
        "machine": finish(start),
    }
    Path("bench/results").mkdir(parents=True, exist_ok=True)
    Path("bench/results/train_throughput.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
