"""Latency objectives on a live split app (issue 28), on the session's local Ray cluster: an
impossible objective refused at start with the measured stage times; under a load its budget
cannot hold, a share of requests answered by the cheaper variant (named in a header and the reply)
and the full model back when the load falls; the plan readable by the operator; scale to zero and
the first request after it answered."""

from __future__ import annotations

import re
import threading
import time
import urllib.request

import httpx
import pytest
import torch

from modelfoundry import store
from modelfoundry.config import DataSection
from modelfoundry.data import load_splits
from modelfoundry.models import build_model, set_normalization
from modelfoundry.store.checkpoint import write_checkpoint

PORT = 18710
URL = f"http://127.0.0.1:{PORT}"
MODEL, FAST = "slo-cnn", "slo-fast"


@pytest.fixture(scope="module")
def slo_store(ray_cluster, tmp_path_factory):
    from ray import serve

    tmp = tmp_path_factory.mktemp("slo")
    splits = load_splits(DataSection(dataset="digits"))
    s = str(tmp / "store")
    for family, name in (("cnn", MODEL), ("mlp", FAST)):
        torch.manual_seed(0)
        m = build_model(family, "tiny", input_shape=splits.spec.input_shape, output_dim=splits.spec.output_dim)
        set_normalization(m, splits.stats())
        write_checkpoint(tmp / name, m, dataset=splits.spec.to_dict(), metrics={}, extra={"task": "classification"})
        store.export(str(tmp / name), s, name)
    yield {"store": s, "body": {"instances": splits.x_test[:1].tolist()}}
    serve.shutdown()


def _args(s: dict, **slo) -> dict:
    return {"model": MODEL, "store": s["store"], "split": [[0], [1, 2]], "stages": {"num_cpus": 0.05}, **slo}


def _apps() -> set[str]:
    from ray import serve

    return set(serve.status().applications)


def test_an_impossible_objective_is_refused_with_the_stage_times(slo_store):
    from modelfoundry.serving.slo_app import deploy_slo

    args = _args(slo_store, synthetic_ms=40, slo={"p99_ms": 60, "max_replicas_total": 4})
    with pytest.raises(ValueError, match=r"cannot be met.*stage-0 4\d\.\d\d ms, stage-1 4\d\.\d\d ms"):
        deploy_slo(args, "slo-impossible", port=PORT)
    assert "slo-impossible" not in _apps()  # removed again
    bad = _args(slo_store, slo={"p99_ms": 100, "max_replicas_total": 2, "variant": FAST})
    with pytest.raises(ValueError, match="below one replica per stage"):
        deploy_slo(bad, "slo-bad", port=PORT)
    with pytest.raises(ValueError, match="is the served version itself"):
        deploy_slo(_args(slo_store, slo={"p99_ms": 100, "max_replicas_total": 4, "variant": MODEL}), "x", port=PORT)


def _load(stop: threading.Event, body: dict, seen: dict, errors: list) -> None:
    with httpx.Client(base_url=URL, timeout=60) as client:
        while not stop.is_set():
            r = client.post(f"/v1/models/{MODEL}:predict", json=body)
            if r.status_code != 200:
                errors.append(r.status_code)
                continue
            version = r.headers["x-model-version"]
            assert r.json()["model_version"] == version and r.json()["variant"] == (version != "1")
            seen[version] = seen.get(version, 0) + 1


def _until(what, timeout_s: float, why: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout_s:.0f} s: {why}")


def test_over_budget_a_variant_answers_a_share_and_the_model_takes_back_all(slo_store):
    from modelfoundry.serving.slo_app import deploy_slo, format_status, remove, status

    # 25 ms per stage call, one at a time: 12 clients need ~3 replicas a stage, the budget allows 1
    args = _args(slo_store, synthetic_ms=25, slo={"p99_ms": 120, "max_replicas_total": 3, "variant": FAST})
    assert deploy_slo(args, "slo-live", port=PORT) == URL
    seen: dict[str, int] = {}
    errors: list[int] = []
    stop = threading.Event()
    clients = [threading.Thread(target=_load, args=(stop, slo_store["body"], seen, errors)) for _ in range(12)]
    for c in clients:
        c.start()
    try:
        _until(lambda: seen.get(f"{FAST}:1", 0) >= 20, 120, f"the variant never answered ({seen})")
        plan = status("slo-live")
        assert plan["variant_share"] > 0 and plan["rate"] > 0
        assert sum(s["replicas"] for s in plan["stages"]) + plan["variant"]["replicas"] <= 3
        assert "variant share" in format_status(plan) and "stage-1" in format_status(plan)
    finally:
        stop.set()
        for c in clients:
            c.join()
    assert not errors and seen.get("1", 0) > 0
    # the load gone, the plan takes the share back (as the ingress replica sees it, in GET
    # /v1/models/<name>) and the full model answers again
    with httpx.Client(base_url=URL, timeout=60) as client:

        def ingress_share() -> bool:
            return (client.get(f"/v1/models/{MODEL}").json().get("slo") or {}).get("variant_share") == 0.0

        _until(ingress_share, 60, "the share never went back to 0")
        versions = {client.post(f"/v1/models/{MODEL}:predict", json=slo_store["body"]).headers["x-model-version"]}
        for _ in range(4):
            versions.add(client.post(f"/v1/models/{MODEL}:predict", json=slo_store["body"]).headers["x-model-version"])
    assert versions == {"1"}
    # the plan on Ray's Prometheus endpoint, as the Grafana dashboard's panels query it
    import ray

    port = next(n["MetricsExportPort"] for n in ray.nodes() if n["Alive"])

    def exported() -> str | None:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
        wanted = (
            "ray_modelfoundry_slo_objective_ms{",
            "ray_modelfoundry_slo_replicas{",
            "ray_modelfoundry_slo_variant_share{",
        )
        return text if all(w in text for w in wanted) else None

    text = _until(exported, 120, "the plan's gauges never reached the metrics endpoint")
    assert re.search(r'ray_modelfoundry_slo_objective_ms\{[^}]*model="slo-cnn"[^}]*\} 120', text)
    assert re.search(r'ray_modelfoundry_slo_replicas\{[^}]*service="stage-1"[^}]*state="running"', text)
    remove("slo-live")


def test_an_idle_app_scales_to_zero_and_its_first_request_is_answered(slo_store, tmp_path):
    """Started from a Serve YAML, as `foundry serve app.yaml` runs it (its planner set as the app's
    autoscaling_policy: Serve's own `serve run` would leave the app without it)."""
    import yaml
    from ray import serve

    from modelfoundry.serving.config_file import run_serve_config
    from modelfoundry.serving.slo_app import remove

    args = _args(slo_store, slo={"p99_ms": 500, "max_replicas_total": 4, "min_replicas": 0, "idle_to_zero_s": 1})
    app = {"name": "slo-zero", "route_prefix": "/", "import_path": "modelfoundry.serving.apps:app", "args": args}
    (tmp_path / "slo.yaml").write_text(yaml.safe_dump({"applications": [app]}))
    assert run_serve_config(str(tmp_path / "slo.yaml"), port=PORT) == [URL]
    from modelfoundry.serving.declarative import client
    from modelfoundry.serving.slo_app import POLICY

    deployed = client().get_serve_details()["applications"]["slo-zero"]["deployed_app_config"]
    assert deployed["autoscaling_policy"]["policy_function"] == POLICY  # its planner with it

    def at_zero() -> bool:
        deps = serve.status().applications["slo-zero"].deployments
        return all(sum(d.replica_states.values()) == 0 for d in deps.values())

    _until(at_zero, 90, "the idle app did not scale to zero")
    with httpx.Client(base_url=URL, timeout=120) as client:
        r = client.post(f"/v1/models/{MODEL}:predict", json=slo_store["body"])
    assert r.status_code == 200 and r.headers["x-model-version"] == "1"
    assert len(r.json()["predictions"]) == 1
    remove("slo-zero")
