"""Run by test_multinode.py in its own process (it owns a multi-node cluster): a head plus 2
worker nodes labelled zone_a / zone_b by custom resources. A digits CNN split into 2 stage
services, stage-0 placed on zone_a and stage-1 on zone_b, answers real held-out digits over HTTP
through the head's ingress. Prints one JSON line: where each stage ran and the answers."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import ray
import torch

from modelfoundry.config import DataSection
from modelfoundry.data import load_splits
from modelfoundry.localcluster import LocalCluster
from modelfoundry.models import build_model, set_normalization
from modelfoundry.store import export
from modelfoundry.store.checkpoint import write_checkpoint


def exposed_listeners() -> list[str]:
    """Listening sockets of this cluster's processes beyond loopback, but Serve's replica gRPC
    (hard-coded to [::] in Ray 2.60, token-checked; docs/security.md)."""
    import ipaddress

    import psutil

    me = psutil.Process()
    tree = {p.pid: p for p in [me, *me.children(recursive=True)]}
    out = []
    for c in psutil.net_connections("inet"):
        if c.status != psutil.CONN_LISTEN or c.pid not in tree:
            continue
        if ipaddress.ip_address(c.laddr.ip.removeprefix("::ffff:")).is_loopback:
            continue
        name = tree[c.pid].name()
        if not name.startswith("ray::ServeReplica"):
            out.append(f"{name} {c.laddr.ip}:{c.laddr.port}")
    return out


def no_token_client(address: str, tmp: Path) -> str:
    """What a driver without the cluster token gets: its output's last line."""
    env = {**os.environ, "HOME": str(tmp / "no-token-home"), "RAY_AUTH_MODE": "token"}
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    code = f"import ray; ray.init(address={address!r}); print('CONNECTED')"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    return "CONNECTED" if "CONNECTED" in out.stdout else (out.stderr.strip().splitlines() or ["no output"])[-1]


def main(tmp: Path, port: int) -> None:
    splits = load_splits(DataSection(dataset="digits"))
    torch.manual_seed(0)
    model = build_model("cnn", "tiny", input_shape=splits.spec.input_shape, output_dim=10)
    set_normalization(model, splits.stats())
    write_checkpoint(tmp / "ckpt", model, dataset=splits.spec.to_dict(), metrics={}, extra={"task": "classification"})
    export(str(tmp / "ckpt"), str(tmp / "store"), "cnn-zones")
    x = splits.x_test[:16]
    with torch.no_grad():
        expected = torch.softmax(model.eval()(torch.from_numpy(x)), 1).tolist()

    cluster = LocalCluster(head_cpus=1, worker_cpus=[1, 1], worker_resources=[{"zone_a": 1}, {"zone_b": 1}]).start()
    try:
        ray.init(address=cluster.address)
        from ray import serve
        from ray.util.state import list_actors

        from modelfoundry.serving.apps import run_app

        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        url = run_app(
            {
                "model": "cnn-zones",
                "store": str(tmp / "store"),
                "split": [[0], [1, 2]],
                "stages": {"num_cpus": 0.1},
                "stage_placement": [{"zone_a": 0.1}, {"zone_b": 0.1}],
            },
            port=port,
        )
        r = httpx.post(f"{url}/v1/models/cnn-zones:predict", json={"instances": x.tolist()}, timeout=60)
        got = [p["probabilities"] for p in r.json()["predictions"]]
        zone_of = {
            n["NodeID"]: next((z for z in ("zone_a", "zone_b") if z in n["Resources"]), "head") for n in ray.nodes()
        }
        stages = {
            a.class_name.rsplit(":", 1)[-1]: zone_of.get(a.node_id)
            for a in list_actors(address=cluster.address, filters=[("state", "=", "ALIVE")], limit=1000)
            if a.class_name.startswith("ServeReplica:") and "stage-" in a.class_name
        }
        security = {
            "auth_mode": os.environ.get("RAY_AUTH_MODE"),
            "usage_stats": os.environ.get("RAY_USAGE_STATS_ENABLED"),
            "token_mode": oct(stat.S_IMODE(os.stat(cluster.token_file).st_mode)),
            "token_dir_mode": oct(stat.S_IMODE(os.stat(os.path.dirname(cluster.token_file)).st_mode)),
            "node_ips": sorted({n["NodeManagerAddress"] for n in ray.nodes()}),
            "exposed": exposed_listeners(),
            "no_token_client": no_token_client(cluster.address, tmp),
        }
        print(
            "RESULT "
            + json.dumps({"status": r.status_code, "got": got, "expected": expected, "stages": stages, **security})
        )
        serve.shutdown()
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
