"""Model lifecycle: MLflow tracking of train / tune / compress runs (real MLflow, a sqlite store),
store aliases and lineage mirrored to the MLflow registry, canary traffic between versions changed
in place on a live Serve app, and the per-version metrics on Ray's Prometheus endpoint."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from modelfoundry import store
from modelfoundry.config import DataSection
from modelfoundry.data import load_splits
from modelfoundry.models import build_model, set_normalization
from modelfoundry.serving.runner import softmax
from modelfoundry.store.checkpoint import write_checkpoint

ROOT = Path(__file__).resolve().parents[1]
PORT = 18127
URL = f"http://127.0.0.1:{PORT}"
DIGITS = DataSection(dataset="digits")


def _publish(tmp: Path, store_dir: str, name: str, seed: int, splits) -> torch.nn.Module:
    """An untrained tiny MLP (its seed makes each version answer differently) as the next version."""
    torch.manual_seed(seed)
    model = build_model("mlp", "tiny", input_shape=splits.spec.input_shape, output_dim=splits.spec.output_dim)
    set_normalization(model, splits.stats())
    dataset = {**splits.spec.to_dict(), "config": DIGITS.model_dump(mode="json")}
    ckpt = tmp / f"{name}-{seed}"
    write_checkpoint(ckpt, model, dataset=dataset, metrics={"test_accuracy": 0.1}, extra={"task": "classification"})
    store.export(str(ckpt), store_dir, name)
    return model.eval()


def _closed_port() -> int:
    """A port nobody listens on (an unreachable tracking server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _job(tmp_path: Path, name: str, epochs: int):
    from modelfoundry.config import load_config

    job = {
        "name": name,
        "model": {"family": "mlp", "preset": "tiny"},
        "data": {"dataset": "digits"},
        "train": {
            "epochs": epochs,
            "num_workers": 1,
            "storage": str(tmp_path / "runs"),
            "model_store": str(tmp_path / "models"),
        },
    }
    (tmp_path / f"{name}.yaml").write_text(json.dumps(job))
    return job, load_config(tmp_path / f"{name}.yaml")


def _mlflow(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


# ---- aliases, lineage, the registry mirror (no Ray) ---------------------------------------------


def test_aliases_point_move_resolve_and_refuse_bad_input(tmp_path):
    splits = load_splits(DIGITS)
    s = str(tmp_path / "store")
    for seed in (0, 1):
        _publish(tmp_path, s, "m", seed, splits)
    assert store.parse_ref("m@champion") == ("m", "@champion") and store.parse_ref("m:2") == ("m", "2")
    assert store.set_alias(s, "m", "champion", 1)["previous"] is None
    assert store.resolve(s, "m", "@champion").version == 1
    move = store.set_alias(s, "m", "champion", "2")  # moved
    assert (move["version"], move["previous"]) == (2, 1)
    store.set_alias(s, "m", "challenger", "@champion")  # an alias copied from another
    assert store.aliases(s, "m") == {"champion": 2, "challenger": 2}
    store.set_alias(s, "m", "challenger", None)
    assert store.aliases(s, "m") == {"champion": 2}
    assert [(h["alias"], h["version"]) for h in store.alias_history(s, "m")] == [
        ("champion", 1),
        ("champion", 2),
        ("challenger", 2),
        ("challenger", None),
    ]
    before = store.aliases(s, "m")
    for bad, words in [
        (lambda: store.resolve(s, "m", "@nope"), "no alias 'nope'"),
        (lambda: store.set_alias(s, "m", "champion", 9), "no version 9"),
        (lambda: store.set_alias(s, "ghost", "champion", 1), "not in the store"),
        (lambda: store.set_alias(s, "m", "latest", 1), "alias 'latest'"),
        (lambda: store.set_alias(s, "m", "bad name", 1), "alias 'bad name'"),
        (lambda: store.set_alias(s, "m", "challenger", None), "no alias 'challenger'"),
    ]:
        with pytest.raises(ValueError, match=words):
            bad()
    assert store.aliases(s, "m") == before  # nothing changed by the refused moves


def test_aliases_on_a_uri_store(tmp_path):
    splits = load_splits(DIGITS)
    s = (tmp_path / "store").as_uri()  # file://...: the store's URI path, as for s3:// or gs://
    for seed in (0, 1):
        _publish(tmp_path, s, "m", seed, splits)
    store.set_alias(s, "m", "champion", 2)
    assert store.resolve(s, "m", "@champion").version == 2 and store.aliases(s, "m") == {"champion": 2}
    assert store.describe(s, "m@champion")["chain"][0]["aliases"] == ["champion"]


def test_models_alias_and_show_cli_mirror_to_mlflow_and_show_a_compressed_models_chain(tmp_path, capsys):
    from modelfoundry.cli import main

    splits = load_splits(DIGITS)
    s = str(tmp_path / "store")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    for seed in (0, 1):
        _publish(tmp_path, s, "m", seed, splits)
    cfg = tmp_path / "q.yaml"
    cfg.write_text("method: quantize\nquantize: {scheme: dynamic-int8}\n")
    assert main(["compress", "m:2", "--config", str(cfg), "--store", s, "--name", "m-int8", "--tracking-uri", uri]) == 0
    assert main(["models", "alias", "m", "1", "champion", "--store", s, "--tracking-uri", uri]) == 0
    assert main(["models", "alias", "m", "2", "challenger", "--store", s, "--tracking-uri", uri]) == 0
    assert main(["models", "alias", "m", "2", "champion", "--store", s, "--tracking-uri", uri]) == 0  # moved
    client = _mlflow(uri)
    for alias, version in store.aliases(s, "m").items():  # both views agree
        assert client.get_model_version_by_alias("m", alias).tags["foundry.version"] == str(version)
    assert main(["models", "alias", "m", "--delete", "challenger", "--store", s, "--tracking-uri", uri]) == 0
    assert set(client.get_registered_model("m").aliases) == {"champion"}
    capsys.readouterr()
    assert main(["models", "show", "m-int8", "--store", s, "--json"]) == 0
    chain = json.loads(capsys.readouterr().out)["chain"]
    assert [(c["name"], c["version"]) for c in chain] == [("m-int8", 1), ("m", 2)]
    assert chain[0]["lineage"]["parent"] == {"name": "m", "version": 2, "path": chain[1]["path"]}
    assert chain[0]["lineage"]["dataset"] == "digits" and chain[1]["aliases"] == ["champion"]
    run = client.get_run(chain[0]["lineage"]["tracking_run_id"])  # the compress run, tracked
    assert run.data.params["method"] == "quantize" and "test_accuracy" in run.data.metrics
    # bad input: a clear error, exit 2, nothing moved
    for argv, words in [
        (["models", "alias", "m", "7", "champion"], "no version 7"),
        (["models", "alias", "m", "1"], "give VERSION and ALIAS"),
        (["models", "show", "m@ghost"], "no alias 'ghost'"),
    ]:
        assert main([*argv, "--store", s]) == 2
        assert words in capsys.readouterr().err
    assert store.aliases(s, "m") == {"champion": 2}
    # serve by alias: NAME@ALIAS resolves to the alias's version; a missing alias fails before Ray
    assert store.resolve(s, "m", "@champion").version == 2
    assert main(["serve", "m@ghost", "--store", s]) == 2
    assert "no alias 'ghost'" in capsys.readouterr().err


def test_unreachable_mlflow_warns_once_and_tracking_stops():
    from modelfoundry.tracking import Tracker

    tracker = Tracker(f"http://127.0.0.1:{_closed_port()}", "exp")
    with pytest.warns(RuntimeWarning, match="the run goes on without tracking"):
        assert tracker.start("r", {"a": 1}) is None
    assert not tracker.enabled
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning: later calls do nothing
        tracker.log_metrics({"x": 1.0}, 1)
        tracker.end()


def test_canary_args_refuse_bad_traffic():
    from modelfoundry.cli import parse_traffic
    from modelfoundry.serving.apps import parse_args
    from modelfoundry.serving.rollout import weights_from

    assert parse_traffic("champion=90, challenger=10") == {"champion": 90, "challenger": 10}
    assert weights_from({"challenger": 25}, ["champion", "challenger"]) == {"champion": 75, "challenger": 25}
    for bad, words in [
        ({"traffic": {"a": 50, "b": 40}}, "sum to 100"),
        ({"traffic": {"a": 101}}, "0-100"),
        ({"traffic": {"a b": 100}}, "must be an alias"),
        ({"traffic": {"a": 100}, "split": "auto"}, "monolithic"),
        ({"sticky_header": "x-user"}, "canary"),
        ({"traffic": {"a": 100}, "version": "@a"}, "not in version"),
    ]:
        with pytest.raises(ValueError, match=words):
            parse_args(dict(model="m", **bad))
    for given, words in [({"x": 10}, "names"), ({"champion": 60, "challenger": 50}, "sum to 100|exceed")]:
        with pytest.raises(ValueError, match=words):
            weights_from(given, ["champion", "challenger"])
    for text in ("champion", "champion=x", "a=1,a=2"):
        with pytest.raises(ValueError):
            parse_traffic(text)


# ---- tracked runs on Ray ------------------------------------------------------------------------


def test_train_and_sweep_runs_are_in_mlflow_with_lineage(ray_cluster, tmp_path):
    from modelfoundry.training import train
    from modelfoundry.tuning import parse_sweep, run_sweep

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    job, cfg = _job(tmp_path, "tracked", 2)
    outcome = train(cfg, tracking_uri=uri)
    client = _mlflow(uri)
    run = client.get_run(outcome.tracking_run_id)
    assert run.info.status == "FINISHED" and run.data.params["train.epochs"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "test_accuracy")] == [1, 2]
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "model")} | {
        a.path for a in client.list_artifacts(run.info.run_id, "plots")
    }
    assert {"model/model.pt", "model/model.json", "plots/learning_curves.png"} <= arts
    mv = client.search_model_versions("name='tracked'")
    assert [(v.tags["foundry.version"], v.run_id) for v in mv] == [("1", run.info.run_id)]
    lineage = store.entry(store.StoreVersion(str(tmp_path / "models"), "tracked", 1))["lineage"]
    assert lineage["tracking_run_id"] == run.info.run_id and lineage["run"]["path"] == outcome.path
    assert lineage["split_seed"] == 0 and lineage["config"]["train"]["epochs"] == 2

    sweep = {
        "name": "tracked-sweep",
        "job": {**job, "name": "tracked-sweep"},
        "search": {"train.lr": {"grid": [0.01, 0.001]}},
        "tune": {"num_samples": 1, "scheduler": "fifo", "max_concurrent_trials": 1, "cpus_per_worker": 0.9},
    }
    before = os.environ.get("MLFLOW_TRACKING_URI")
    s = run_sweep(parse_sweep(sweep, "test", tmp_path), tracking_uri=uri).summary()
    assert os.environ.get("MLFLOW_TRACKING_URI") == before  # Ray's MLflow setup exports it: restored
    parent = client.get_run(s["tracking_run_id"])
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert parent.info.status == "FINISHED" and len(children) == 2
    assert sorted(
        c.data.params["train/lr"] if "train/lr" in c.data.params else c.data.params["train.lr"] for c in children
    ) == ["0.001", "0.01"]
    for c in children:
        assert [m.step for m in client.get_metric_history(c.info.run_id, "test_accuracy")] == [1, 2]
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")} >= {"sweep/trials.csv"}
    lin = store.entry(store.StoreVersion(str(tmp_path / "models"), "tracked-sweep", 1))["lineage"]
    assert lin["sweep"]["name"] == "tracked-sweep" and lin["sweep"]["tracking_run_id"] == parent.info.run_id
    assert lin["trial"]["id"] == s["best_trial"]
    assert lin["trial"]["tracking_run_id"] in {c.info.run_id for c in children}


def test_a_run_finishes_and_exports_when_mlflow_is_unreachable(ray_cluster, tmp_path, capsys):
    from modelfoundry.training import train

    _, cfg = _job(tmp_path, "untracked", 1)
    with pytest.warns(RuntimeWarning, match="goes on without tracking"):
        outcome = train(cfg, tracking_uri=f"http://127.0.0.1:{_closed_port()}")
    assert outcome.model["version"] == 1 and outcome.tracking_run_id is None
    assert "the run goes on untracked" in capsys.readouterr().out


# ---- canary rollout and per-version metrics on a live Serve app --------------------------------


@pytest.fixture(scope="module")
def canary(ray_cluster, tmp_path_factory):
    import yaml
    from ray import serve

    from modelfoundry.serving.config_file import run_serve_config

    tmp = tmp_path_factory.mktemp("canary")
    splits = load_splits(DIGITS)
    s = str(tmp / "store")
    name = f"canary-{int(time.time())}"  # unique: the metrics of other runs never mix in
    models = {str(v): _publish(tmp, s, name, seed, splits) for v, seed in ((1, 0), (2, 1))}
    store.set_alias(s, name, "champion", 1)
    store.set_alias(s, name, "challenger", 2)
    # the shipped serve_apps/canary.yaml, pointed at this store, started as `foundry serve` starts it
    cfg = yaml.safe_load((ROOT / "serve_apps" / "canary.yaml").read_text())
    app = cfg["applications"][0]
    app["name"] = name
    app["args"].update(model=name, store=s, traffic={"champion": 100, "challenger": 0}, sticky_header="x-user")
    app["args"]["ingress"]["num_replicas"] = 1
    (tmp / "canary.yaml").write_text(yaml.safe_dump(cfg))
    assert run_serve_config(str(tmp / "canary.yaml"), port=PORT) == [URL]
    yield {"name": name, "store": s, "models": models, "x": splits.x_test[:2]}
    serve.delete(name)
    serve.shutdown()


def _ask(client: httpx.Client, c: dict, n: int, seen: Counter, user: str | None = None) -> Counter:
    got: Counter = Counter()
    body = {"instances": c["x"].tolist()}
    for _ in range(n):
        r = client.post(f"/v1/models/{c['name']}:predict", json=body, headers={"x-user": user} if user else {})
        assert r.status_code == 200, r.text
        data = r.json()
        version = data["model_version"]
        assert r.headers["x-model-version"] == version
        with torch.no_grad():  # the answer is the named version's
            expected = softmax(c["models"][version](torch.from_numpy(c["x"])).numpy())
        np.testing.assert_allclose([p["probabilities"] for p in data["predictions"]], expected, atol=1e-5)
        got[version] += 1
    seen.update(got)
    return got


def _replicas(name: str) -> set[str]:
    from ray.serve.context import _get_global_client

    app = _get_global_client().get_serve_details()["applications"][name]
    return {r["replica_id"] for r in app["deployments"]["Ingress"]["replicas"]}


def test_canary_weights_change_in_place_promote_and_rollback(canary):
    from modelfoundry.serving import rollout

    name, seen = canary["name"], Counter()
    client = httpx.Client(base_url=URL, timeout=60)
    assert _ask(client, canary, 50, seen) == {"1": 50}
    replicas = _replicas(name)

    # requests in flight while the weights change: none may fail
    failures, stop = [], threading.Event()

    def load() -> None:
        with httpx.Client(base_url=URL, timeout=60) as c:
            while not stop.is_set():
                r = c.post(f"/v1/models/{name}:predict", json={"instances": canary["x"].tolist()})
                if r.status_code != 200:
                    failures.append(r.status_code)
                else:
                    seen[r.json()["model_version"]] += 1

    import ray

    def foundry_rollout(*argv: str) -> subprocess.CompletedProcess:
        """`foundry rollout` as a user runs it, from another process, reaching this cluster."""
        gcs = ray.get_runtime_context().gcs_address
        cmd = [str(Path(sys.executable).parent / "foundry"), "rollout", name, *argv, "--address", gcs]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=600)

    t = threading.Thread(target=load)
    t.start()
    try:
        done = foundry_rollout("--weight", "challenger=10")
    finally:
        stop.set()
        t.join()
    assert done.returncode == 0 and "(in place, every replica serving it after" in done.stdout, done.stderr[-2000:]
    assert "'champion': 90" in done.stdout and "'challenger': 10" in done.stdout
    assert failures == [] and _replicas(name) == replicas  # in place: the same replicas
    bad = foundry_rollout("--weight", "nope=10")
    assert bad.returncode == 2 and "--weight names ['nope']" in bad.stderr
    share = _ask(client, canary, 1000, seen)["2"] / 10
    assert abs(share - 10) < 5, share  # 5 standard deviations of 1,000 draws at 10%
    # sticky: a user keeps their version
    for user in ("alice", "bob", "carol"):
        got = _ask(client, canary, 5, seen, user)
        assert len(got) == 1, (user, got)

    # bad input: a clear error, the live weights unchanged
    for bad, words in [({"nope": 10}, "names"), ({"champion": 50, "challenger": 60}, "sum to 100|exceed")]:
        with pytest.raises(ValueError, match=words):
            rollout.set_traffic(name, bad)
    with pytest.raises(ValueError, match="no canary app"):
        rollout.set_traffic("ghost", {"challenger": 10})
    assert rollout.live_canary(name)[2] == {"champion": 90, "challenger": 10}

    out = rollout.promote(name)
    assert (
        out["weights"] == {"champion": 0, "challenger": 100} and store.aliases(canary["store"], name)["champion"] == 2
    )
    assert _ask(client, canary, 30, seen) == {"2": 30}
    out = rollout.rollback(name)
    assert out["weights"] == {"champion": 100, "challenger": 0} and out["alias"]["version"] == 1
    assert store.aliases(canary["store"], name)["champion"] == 1
    assert _ask(client, canary, 30, seen) == {"1": 30}
    assert _replicas(name) == replicas

    # the per-version request counts on Ray's Prometheus endpoint match what the clients saw

    port = next(n["MetricsExportPort"] for n in ray.nodes() if n["Alive"])
    pattern = re.compile(
        r'^ray_modelfoundry_requests_total\{[^}]*model="' + re.escape(name) + r'"[^}]*\} ([0-9.e+]+)$', re.M
    )
    deadline = time.monotonic() + 180  # Ray exports every few seconds: wait for the counts to arrive
    while True:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
        counts: Counter = Counter()
        for m in pattern.finditer(text):
            labels = m.group(0)
            version = re.search(r'version="([^"]+)"', labels).group(1)
            if 'status="200"' in labels and 'verb="predict"' in labels:
                counts[version] += int(float(m.group(1)))
        if counts == seen or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert counts == seen
    assert "ray_modelfoundry_request_latency_ms_bucket{" in text

    # every metric the Grafana dashboard queries is one the platform exports
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "modelfoundry-serving.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    names = {re.sub(r"_(bucket|sum|count)$", "", n) for e in exprs for n in re.findall(r"ray_modelfoundry_\w+", e)}
    assert names >= {"ray_modelfoundry_requests_total", "ray_modelfoundry_request_latency_ms"}
    # stage latency: split apps only; slo_*: split apps with a latency objective (tests/test_slo_serving.py)
    for metric in {n for n in names if not n.startswith("ray_modelfoundry_slo_")} - {
        "ray_modelfoundry_stage_latency_ms"
    }:
        assert f"{metric}" in text, metric
