"""Ray Serve apps over real HTTP on 127.0.0.1: split == monolithic, every bad input a 4xx,
VAE verbs, ensemble, forecaster, PNG upload, autoscaling up and back down."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import json
import time

import httpx
import numpy as np
import pytest
import torch

from aio import run_async
from modelfoundry.config import DataSection
from modelfoundry.data import load_splits
from modelfoundry.models import build_model, set_normalization
from modelfoundry.serving.runner import softmax
from modelfoundry.store import export
from modelfoundry.store.checkpoint import write_checkpoint

PORT = 18123
URL = f"http://127.0.0.1:{PORT}"


def _publish(tmp, store, name, family, splits, task, seed=0):
    """A tiny untrained model of `family` with the data's normalization, as the next version of
    `name` in `store` (also used by test_threats.py)."""
    torch.manual_seed(seed)
    extra = {} if family == "vae" else {"output_dim": splits.spec.output_dim}
    model = build_model(family, "tiny", input_shape=splits.spec.input_shape, **extra)
    set_normalization(model, splits.stats())
    d = tmp / f"{name}-{seed}"
    write_checkpoint(d, model, dataset=splits.spec.to_dict(), metrics={"test_x": 1.0}, extra={"task": task})
    export(str(d), store, name)
    return model.eval()


@pytest.fixture(scope="module")
def served(ray_cluster, tmp_path_factory):
    from ray import serve

    tmp = tmp_path_factory.mktemp("serve")
    store = str(tmp / "store")
    digits = load_splits(DataSection(dataset="digits"))
    sun = load_splits(DataSection(dataset="sunspots"))
    models = {f: _publish(tmp, store, f"{f}-d", f, digits, "classification") for f in ("mlp", "cnn", "rnn")}
    models["vae"] = _publish(tmp, store, "vae-d", "vae", digits, "generative")
    models["sun"] = _publish(tmp, store, "sun", "rnn", sun, "regression")
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    yield {"store": store, "digits": digits, "sun": sun, "models": models}
    serve.shutdown()


def deploy(served, **args):
    from ray import serve

    from modelfoundry.serving.apps import build_app

    serve.run(build_app({"store": served["store"], **args}), name="t", route_prefix="/")
    return httpx.Client(base_url=URL, timeout=60)


def local_probs(model, x):
    with torch.no_grad():
        return softmax(model(torch.from_numpy(x)).numpy())


def probs(resp):
    assert resp.status_code == 200, resp.text
    return np.array([p["probabilities"] for p in resp.json()["predictions"]])


def test_split_output_equals_monolithic_on_real_digits(served):
    x = served["digits"].x_test[:64]
    expected = local_probs(served["models"]["cnn"], x)
    results, explained = {}, {}
    for split in (None, "auto", [[0], [1], [2]]):
        c = deploy(served, model="cnn-d", split=split, batching={"max_batch_size": 8} if split else None)
        results[str(split)] = probs(c.post("/v1/models/cnn-d:predict", json={"instances": x.tolist()}))
        # :explain: Integrated Gradients; through the stages, each answers a vector-Jacobian product
        r = c.post("/v1/models/cnn-d:explain", json={"instances": x[:2].tolist(), "steps": 16, "target": [3, 5]})
        assert r.status_code == 200, r.text
        explained[str(split)] = np.array([e["attributions"] for e in r.json()["explanations"]])
        assert [e["target"] for e in r.json()["explanations"]] == [3, 5] and explained[str(split)].shape == (2, 1, 8, 8)
        bad = c.post("/v1/models/cnn-d:explain", json={"instances": x[:1].tolist(), "target": 10})
        assert bad.status_code == 400 and "target 10 is out of range" in bad.json()["error"], bad.text
        assert "/v1/models/cnn-d:explain" in c.get("/openapi.json").json()["paths"]
        meta = c.get("/v1/models/cnn-d").json()
        assert meta["family"] == "cnn" and meta["input_spec"]["shape"] == [1, 8, 8]
        assert (
            meta["split"]
            == {"None": [[0, 1, 2]], "auto": meta["split"], "[[0], [1], [2]]": [[0], [1], [2]]}[str(split)]
        )
        assert c.get("/healthz").json()["status"] == "ok" and c.get("/docs").status_code == 200
    for got in results.values():
        np.testing.assert_allclose(got, expected, atol=1e-5)
    for got in explained.values():  # split attributions equal the monolithic app's
        np.testing.assert_allclose(got, explained["None"], atol=1e-4)
    assert np.abs(explained["None"]).sum() > 0


BAD = [
    (b"{not json", 400, "not valid JSON"),
    (json.dumps({"instances": []}), 400, "is empty"),
    (json.dumps({"inputs": [[0.0] * 64]}), 400, "needs 'instances'"),
    (json.dumps({"instances": [[0.0] * 63]}), 400, "must have shape [1, 8, 8]"),
    (json.dumps({"instances": [["a"] * 64]}), 400, "numbers only"),
    (json.dumps({"instances": [[0.0] * 64, [0.0] * 3]}), 400, "numbers only"),
    ('{"instances": [[NaN' + ", 0.0" * 63 + "]]}", 400, "NaN is not a JSON number"),
    ('{"instances": [[Infinity' + ", 0.0" * 63 + "]]}", 400, "Infinity is not a JSON number"),
    (json.dumps({"instances": [[0.0] * 64] * 11}), 413, "the limit is 10"),
    (json.dumps({"instances": "x" * 5000}), 413, "the limit is 4000"),
    (json.dumps([1, 2]), 400, "must be a JSON object"),
    # hostile: deep nesting, huge integers, values that are not numbers, strings that look like them
    ("[" * 1900 + "]" * 1900, 400, "too deeply"),
    ('{"instances": [[' + "9" * 3000 + "]]}", 400, "integer of 3000 digits"),
    (json.dumps({"instances": [[10**400] + [0.0] * 63]}), 400, "integer of 401 digits"),
    (json.dumps({"instances": [[10**39] + [0.0] * 63]}), 400, "beyond float32"),
    (json.dumps({"instances": [[1e308] + [0.0] * 63]}), 400, "beyond float32"),
    (json.dumps({"instances": [["1.5"] + [0.0] * 63]}), 400, "numbers only"),
    (json.dumps({"instances": [[True] + [0.0] * 63]}), 400, "numbers only"),
    (json.dumps({"instances": [[None] + [0.0] * 63]}), 400, "numbers only"),
    (json.dumps({"instances": [[{"a": 1}] + [0.0] * 63]}), 400, "numbers only"),
    (json.dumps({"instances": [[[0.0]] * 64]}), 400, "must have shape"),
    (b'{"instances": [[0.0]]}\xff\xfe', 400, "not valid JSON"),
]


def test_bad_input_gets_a_4xx_json_error_and_the_replica_survives(served):
    c = deploy(served, model="mlp-d", max_instances=10, max_body_bytes=4000)
    for body, status, fragment in BAD:
        r = c.post("/v1/models/mlp-d:predict", content=body, headers={"content-type": "application/json"})
        assert r.status_code == status, (body[:40], r.text)
        assert fragment in r.json()["error"]
    for path, status, fragment in [
        ("/v1/models/nope:predict", 404, "unknown model 'nope'"),
        ("/v1/models/mlp-d:transmogrify", 404, "unknown verb 'transmogrify'"),
        # :explain runs instances x steps rows: bounded by max_instances like a predict's rows
        ("/v1/models/mlp-d:explain", 413, "1 instances x 100 steps is 100 rows to run; the limit is 10"),
        ("/v1/models/mlp-d", 405, "Method Not Allowed"),
    ]:
        r = c.post(path, json={"instances": [[0.0] * 64]}) if status != 405 else c.put(path)
        assert r.status_code == status and fragment in r.json()["error"]
    assert c.get("/v1/models/nope").status_code == 404
    r = c.post("/v1/models/mlp-d:predict", content=b"\x89PNG garbage", headers={"content-type": "image/png"})
    assert r.status_code == 415 and "not a PNG" in r.json()["error"]
    # still healthy, still right
    x = served["digits"].x_test[:3]
    np.testing.assert_allclose(
        probs(c.post("/v1/models/mlp-d:predict", json={"instances": x.tolist()})),
        local_probs(served["models"]["mlp"], x),
        atol=1e-5,
    )


def test_chunked_bodies_and_hostile_images_are_refused_before_they_cost_anything(served):
    from PIL import Image

    c = deploy(served, model="cnn-d", max_body_bytes=4000)

    def chunks(n: int, size: int = 1000):  # no Content-Length: a chunked upload
        for _ in range(n):
            yield b" " * size

    r = c.post("/v1/models/cnn-d:predict", content=chunks(50), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "the limit is 4000" in r.json()["error"]
    small = c.post(
        "/v1/models/cnn-d:predict",
        content=iter([b'{"instances": ', json.dumps([[0.0] * 64]).encode(), b"}"]),
        headers={"content-type": "application/json"},
    )
    assert small.status_code == 200, small.text  # a chunked body within the limit is fine

    def png(w: int, h: int, fmt: str = "PNG") -> bytes:
        buf = io.BytesIO()
        Image.new("L", (w, h)).save(buf, format=fmt, optimize=True)
        return buf.getvalue()

    big = deploy(served, model="cnn-d", max_body_bytes=1_000_000)
    bomb = png(5000, 5000)  # 25 megapixels of zeros compress to a few KB
    assert len(bomb) < 100_000
    for body, status, fragment in [
        (bomb, 413, "the limit is 4000000"),
        (png(8, 8, "GIF"), 415, "not a PNG"),
        (png(8, 8, "JPEG"), 415, "not a PNG"),
        (b"GIF89a" + b"\0" * 100, 415, "not a PNG"),
        (png(8, 8)[:40], 400, "not a readable PNG"),
    ]:
        r = big.post("/v1/models/cnn-d:predict", content=body, headers={"content-type": "image/png"})
        assert r.status_code == status and fragment in r.json()["error"], (status, r.text)
    ok = big.post("/v1/models/cnn-d:predict", content=png(28, 28), headers={"content-type": "image/png"})
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 1


def test_png_upload(served):
    from PIL import Image

    c = deploy(served, model="cnn-d")
    img = served["digits"].x_test[0, 0]
    buf = io.BytesIO()
    Image.fromarray((img * 255).round().astype(np.uint8), mode="L").save(buf, format="PNG")
    r = c.post("/v1/models/cnn-d:predict", content=buf.getvalue(), headers={"content-type": "image/png"})
    expected = local_probs(served["models"]["cnn"], (np.round(img * 255) / 255).astype(np.float32)[None, None])
    np.testing.assert_allclose(probs(r), expected, atol=1e-5)


def test_vae_encoder_and_decoder_services(served):
    c = deploy(served, model="vae-d")
    vae = served["models"]["vae"]
    x = served["digits"].x_test[:4]
    enc = c.post("/v1/models/vae-d:encode", json={"instances": x.tolist()}).json()["predictions"]
    assert len(enc) == 4 and len(enc[0]["mu"]) == vae.config.latent_dim
    rec = np.array(c.post("/v1/models/vae-d:reconstruct", json={"instances": x.tolist()}).json()["predictions"])
    with torch.no_grad():
        np.testing.assert_allclose(rec, torch.sigmoid(vae(torch.from_numpy(x))).numpy(), atol=1e-5)
    z = np.zeros((2, vae.config.latent_dim)).tolist()
    dec = np.array(c.post("/v1/models/vae-d:decode", json={"instances": z}).json()["predictions"])
    assert dec.shape == (2, 1, 8, 8) and (dec >= 0).all() and (dec <= 1).all()
    s = c.post("/v1/models/vae-d:sample", json={"n": 5, "seed": 1}).json()["predictions"]
    assert np.array(s).shape == (5, 1, 8, 8)
    png = c.post("/v1/models/vae-d:sample", json={"n": 3, "format": "png"})
    assert png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"
    assert c.post("/v1/models/vae-d:sample", json={"n": 1000}).status_code == 400
    assert c.post("/v1/models/vae-d:decode", json={"instances": [[0.0]]}).status_code == 400
    assert c.post("/v1/models/vae-d:predict", json={"instances": x.tolist()}).status_code == 404


def test_ensemble_averages_member_probabilities(served):
    c = deploy(served, kind="ensemble", models=["mlp-d", "cnn-d", "rnn-d"], name="ens")
    x = served["digits"].x_test[:16]
    expected = np.mean([local_probs(served["models"][f], x) for f in ("mlp", "cnn", "rnn")], axis=0)
    np.testing.assert_allclose(
        probs(c.post("/v1/models/ens:predict", json={"instances": x.tolist()})), expected, atol=1e-5
    )
    assert c.get("/v1/models/ens").json()["members"] == ["mlp-d", "cnn-d", "rnn-d"]
    r = c.post("/v1/models/ens:explain", json={"instances": x[:1].tolist()})  # not an ensemble's verb
    assert r.status_code == 404 and "unknown verb 'explain'" in r.json()["error"], r.text


def test_forecaster_returns_values_in_series_units(served):
    c = deploy(served, model="sun")
    x = served["sun"].x_test[:5]
    got = c.post("/v1/models/sun:predict", json={"instances": x[:, :, 0].tolist()}).json()["predictions"]
    with torch.no_grad():
        np.testing.assert_allclose(got, served["models"]["sun"](torch.from_numpy(x)).numpy()[:, 0], rtol=1e-5)
    # a regressor explains its output 0; the attributions are in the input's shape
    r = c.post("/v1/models/sun:explain", json={"instances": x[:1, :, 0].tolist(), "steps": 20})
    assert r.status_code == 200, r.text
    (e,) = r.json()["explanations"]
    assert e["target"] == 0 and np.array(e["attributions"]).shape == x.shape[1:]
    assert abs(e["delta"]) <= 0.01 * abs(np.sum(e["attributions"])) + 1e-3  # complete: an LSTM is smooth


def test_bad_app_args_fail_before_deploying(served):
    from modelfoundry.serving.apps import build_app

    with pytest.raises(ValueError, match="model 'missing' is not in the store"):
        build_app({"store": served["store"], "model": "missing"})
    with pytest.raises(ValueError, match="must list every stage index"):
        build_app({"store": served["store"], "model": "cnn-d", "split": [[1], [0, 2]]})
    with pytest.raises(ValueError, match="at least 2 model-store names"):
        build_app({"store": served["store"], "kind": "ensemble", "models": ["cnn-d"]})
    with pytest.raises(ValueError, match="stage_placement has 1 entries; the split has 3 stages"):
        build_app(
            {"store": served["store"], "model": "cnn-d", "split": [[0], [1], [2]], "stage_placement": [{"zone_a": 1}]}
        )
    with pytest.raises(ValueError, match="unknown autoscaling_config keys"):
        build_app({"store": served["store"], "model": "cnn-d", "stages": {"autoscaling_config": {"max_replica": 3}}})
    # each kind takes its own fields only, and the kind is one of the shapes
    for bad, words in (
        ({"kind": "pipeline", "model": "cnn-d"}, "kind 'pipeline' is not one of"),
        ({"model": "cnn-d", "models": ["a", "b"]}, "models: Extra inputs are not permitted"),
        ({"kind": "ensemble", "models": ["cnn-d", "mlp-d"], "split": "auto"}, "split: Extra inputs"),
        ({"kind": "vae", "model": "cnn-d"}, "kind vae needs a VAE; model 'cnn-d' is a cnn"),
        ({"kind": "multiplex", "models": []}, "kind multiplex needs models"),
    ):
        with pytest.raises(ValueError, match=words):
            build_app({"store": served["store"], **bad})


def _running_replicas(deployment: str) -> int:
    from ray import serve

    status = serve.status().applications["t"].deployments[deployment]
    return status.replica_states.get("RUNNING", 0)


def test_autoscaling_rises_under_load_and_falls_back(served):
    c = deploy(
        served,
        model="cnn-d",
        ingress={
            "num_cpus": 0.1,
            "max_ongoing_requests": 8,
            "autoscaling_config": {
                "min_replicas": 1,
                "max_replicas": 3,
                "target_ongoing_requests": 1,
                "upscale_delay_s": 0.5,
                "downscale_delay_s": 2,
                "look_back_period_s": 1,
            },
        },
    )
    # 256 inputs a request, encoded once: the replica (parse, validate, run, answer 256) is the
    # bottleneck, not the client, so requests queue there on any machine (with 4 inputs a request
    # the client was the bottleneck: one request at a time reached the replica, never above target)
    body = json.dumps({"instances": served["digits"].x_test[:256].tolist()}).encode()

    async def load(seconds: float) -> int:
        """16 clients until a second replica runs: bounded in time and count. The replica count
        is watched by one task twice a second (a status call per request made the clients wait
        on it, one request in flight at a time, and the autoscaler never saw load)."""
        sent, scaled = 0, False
        deadline = time.monotonic() + seconds
        async with httpx.AsyncClient(base_url=URL, timeout=60) as client:

            async def worker():
                nonlocal sent
                while not scaled and time.monotonic() < deadline and sent < 200_000:
                    r = await client.post(
                        "/v1/models/cnn-d:predict", content=body, headers={"content-type": "application/json"}
                    )
                    assert r.status_code == 200
                    sent += 1

            async def watch():
                nonlocal scaled
                while not scaled and time.monotonic() < deadline:
                    scaled = await asyncio.to_thread(_running_replicas, "Ingress") >= 2
                    await asyncio.sleep(0.5)

            await asyncio.gather(watch(), *(worker() for _ in range(16)))
        return sent

    assert _running_replicas("Ingress") == 1
    sent = run_async(load(150))  # stops as soon as a second replica is RUNNING
    peak = _running_replicas("Ingress")
    from ray import serve

    assert peak >= 2, f"no scale-up after {sent} requests: {serve.status().applications['t'].deployments['Ingress']}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and _running_replicas("Ingress") > 1:
        time.sleep(1)
    assert _running_replicas("Ingress") == 1
    assert c.get("/healthz").status_code == 200


def test_api_keys_401_without_403_wrong_200_right(served, tmp_path):
    keyfile = tmp_path / "keys"
    keyfile.write_text("s3cret-key-1\ns3cret-key-2\n")
    c = deploy(served, model="mlp-d", api_keys_file=str(keyfile))
    body = {"instances": served["digits"].x_test[:1].tolist()}
    r = c.post("/v1/models/mlp-d:predict", json=body)
    assert r.status_code == 401 and "missing API key" in r.json()["error"]
    r = c.post("/v1/models/mlp-d:predict", json=body, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 403 and r.json() == {"error": "API key not accepted"}
    assert c.get("/v1/models/mlp-d").status_code == 401
    assert (
        c.post("/v1/models/mlp-d:predict", json=body, headers={"Authorization": "Bearer s3cret-key-2"}).status_code
        == 200
    )
    assert c.post("/v1/models/mlp-d:predict", json=body, headers={"X-API-Key": "s3cret-key-1"}).status_code == 200
    assert c.get("/healthz").status_code == 200  # probes need no key
    v2 = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}]}
    assert c.post("/v2/models/mlp-d/infer", json=v2).status_code == 401
    assert c.get("/v2/models/mlp-d").status_code == 401
    assert c.post("/v2/models/mlp-d/infer", json=v2, headers={"X-API-Key": "s3cret-key-1"}).status_code == 200
    assert c.get("/v2/health/live").status_code == 200 and c.get("/v2/health/ready").status_code == 200
    from modelfoundry.serving.apps import build_app

    with pytest.raises(ValueError, match="not set in the replica's environment"):
        build_app({"store": served["store"], "model": "mlp-d", "api_keys_env": "MF_NO_SUCH_VAR"})


def _http_answer(host: str, port: int) -> bytes:
    """The first bytes a listener answers to an HTTP/1.0 request (b"" when it does not)."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=2) as sock:
            sock.settimeout(2)
            sock.sendall(b"GET / HTTP/1.0\r\nHost: probe\r\n\r\n")
            return sock.recv(64)
    except OSError:
        return b""


def test_every_listener_stays_on_loopback_during_a_served_run(served):
    """Every listening socket of this cluster's processes, while an app serves: GCS, raylet,
    agents, Prometheus exporters, the dashboard, HAProxy's frontend, stats and metrics, the Serve
    proxy and replicas' HTTP all sit on 127.0.0.1. The one exception is Ray Serve's
    inter-deployment gRPC server, hard-coded to [::] in Ray 2.60 and checked against the cluster
    token (docs/security.md); it must not answer plain HTTP."""
    import ipaddress

    import psutil
    import ray

    client = deploy(served, model="cnn-d")
    assert client.get("/healthz").status_code == 200
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    import os

    assert os.environ["RAY_USAGE_STATS_ENABLED"] == "0"  # set by connect() before the cluster started
    me = psutil.Process()
    tree = {p.pid: p for p in [me, *me.children(recursive=True)]}
    listeners = [c for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN and c.pid in tree]
    names = {c.pid: tree[c.pid].name() for c in listeners}
    assert len(listeners) > 10 and "gcs_server" in names.values() and "raylet" in names.values()
    haproxy = [c.laddr for c in listeners if names[c.pid] == "haproxy"]
    assert len(haproxy) >= 3 and all(a.ip == "127.0.0.1" for a in haproxy), haproxy  # frontend, stats, metrics
    assert any(a.port == PORT for a in haproxy)

    def loopback(ip: str) -> bool:
        return ipaddress.ip_address(ip.removeprefix("::ffff:")).is_loopback

    exposed = [(c.laddr, names[c.pid]) for c in listeners if not loopback(c.laddr.ip)]
    assert all(name.startswith("ray::ServeReplica") for _, name in exposed), exposed
    for addr, _ in exposed:
        assert not _http_answer("127.0.0.1", addr.port).startswith(b"HTTP/"), addr


def test_killing_one_of_two_replicas_under_load_loses_no_request(served):
    """A bounded steady load (8 keep-alive clients on 127.0.0.1) while one of two ingress replicas
    is SIGKILLed: no 5xx, no reset, no request lost that had not started its answer (HAProxy
    replays the platform's side-effect-free verbs on another replica, marks the dead one down, and
    Serve starts a replacement). What no proxy can replay is an answer whose headers it already
    forwarded: the replica writes the headers and the body as two messages (they cross from the
    user-code thread to the HTTP server's loop one at a time), and a kill between them cuts that
    one answer ("peer closed connection without sending complete message body"). At most the
    requests in flight on the killed replica can be cut so, and only at the kill."""
    import os
    import signal
    import threading

    from ray.util.state import list_actors

    deploy(served, model="cnn-d", ingress={"num_replicas": 2, "num_cpus": 0.1}).close()
    x = served["digits"].x_test[:2].tolist()
    body = json.dumps({"instances": x}).encode()

    def replicas() -> list:
        return [
            a
            for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
            if a.class_name.startswith("ServeReplica:t:Ingress")
        ]

    deadline = time.monotonic() + 120
    while len(replicas()) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    before = replicas()
    assert len(before) == 2
    stop = threading.Event()
    counts = {"ok": 0}
    failures: list[str] = []
    lock = threading.Lock()
    t_kill, t_new = [time.monotonic() + 1e6], []

    def client() -> None:
        with httpx.Client(base_url=URL, timeout=30) as http:
            n = 0
            while not stop.is_set() and n < 4000:  # bounded in count and in time (below)
                n += 1
                try:
                    r = http.post(
                        "/v1/models/cnn-d:predict", content=body, headers={"content-type": "application/json"}
                    )
                    ok = r.status_code == 200 and len(r.json()["predictions"]) == 2
                    err = None if ok else f"{r.status_code} {r.text[:100]}"
                except httpx.HTTPError as e:
                    err = f"{type(e).__name__}: {e}"
                with lock:
                    if err:
                        failures.append(f"{time.monotonic() - t_kill[0]:+.2f}s {err}")
                    else:
                        counts["ok"] += 1

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        while counts["ok"] < 300 and time.monotonic() < deadline:
            time.sleep(0.05)
        t_kill[0] = time.monotonic()
        os.kill(before[0].pid, signal.SIGKILL)
        killed_at = counts["ok"]
        # keep the load on until Serve has replaced the replica and it has served a while
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            alive = {a.actor_id for a in replicas()}
            if len(alive) == 2 and before[0].actor_id not in alive and not t_new:
                t_new.append(time.monotonic() - t_kill[0])
            if len(alive) == 2 and before[0].actor_id not in alive and counts["ok"] > killed_at + 1500:
                break
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    total = counts["ok"] + len(failures)
    print(
        f"replica kill under load: {counts['ok']} ok, {len(failures)} failed of {total}; replacement alive at +{t_new}s"
    )
    assert len({a.actor_id for a in replicas()}) == 2
    assert counts["ok"] > killed_at + 1500, (total, failures[:5])
    cut = [f for f in failures if "without sending complete message body" in f and -0.05 < float(f.split("s ")[0]) < 1]
    assert failures == cut and len(cut) <= 4, (total, failures[:5])  # 8 clients over 2 replicas: 4 on the killed one


def test_stage_handles_call_the_way_the_replica_is_set_not_the_driver(ray_cluster, monkeypatch):
    """A handle bound into an app carries the transport of the process that built it (fixed when
    it imported ray.serve); the ingress re-options its stage handles with its own replica's
    setting, so a driver that imported Serve before the fast-path settings costs no hop extra."""
    from ray.serve._private import constants
    from ray.serve.handle import DeploymentHandle

    from modelfoundry.serving.stage import replica_transport

    async def check() -> None:  # with Serve running, a handle's options start its router on this loop
        for grpc in (True, False):
            monkeypatch.setattr(constants, "RAY_SERVE_USE_GRPC_BY_DEFAULT", grpc)
            stale = DeploymentHandle("stage-0", "app").options(_by_reference=grpc)  # the other transport
            assert replica_transport(stale).handle_options._by_reference is (not grpc)

    # a loop of its own, left open (Serve's shutdown reaches the routers made on it): the test does
    # not depend on a loop some earlier test left running in this thread
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(lambda: asyncio.new_event_loop().run_until_complete(check())).result()


def test_small_models_run_on_the_event_loop_and_large_ones_in_a_thread(served, tmp_path):
    """ModelRunner.inline: unknown cost -> thread; after measuring, a request is inline only when
    its expected time is under INLINE_BELOW_S."""
    from modelfoundry.serving import runner as runner_module
    from modelfoundry.serving.runner import ModelRunner
    from modelfoundry.store import resolve

    r = ModelRunner(resolve(served["store"], "cnn-d").uri)
    assert not r.inline(1)  # nothing measured yet
    shape = r.meta.input_spec.shape
    r.run(np.zeros((4, *shape), dtype=np.float32))
    per = r.instance_s
    assert per is not None and per > 0
    for n in (1, 10, 1000, 10**6):
        assert r.inline(n) == (per * n < runner_module.INLINE_BELOW_S)
    assert not r.inline(10**9)  # a large enough request always goes to a thread


def _v2_bad_bodies():
    """(body, headers, status, fragment) for POST /v2/models/mlp-d/infer (max_instances 10)."""
    good = {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}
    js = {"content-type": "application/json"}

    def req(**changes):
        return json.dumps({"inputs": [{**good, **changes}]}), js, 400

    raw = np.zeros(64, np.float32).tobytes()
    head = json.dumps({"inputs": [{**good, "data": None, "parameters": {"binary_data_size": 256}}]}).encode()
    return [
        (*req(name="x"), "unknown input 'x'"),
        (*req(datatype="BYTES"), "datatype 'BYTES' is not one of"),
        (*req(shape=[1, 63]), "must be [n, 1, 8, 8] or [n, 64]"),
        (*req(shape=[1, "64"]), "'shape' must be a list of non-negative integers"),
        (*req(shape=[0, 64], data=[]), "holds no instances"),
        (*req(data=[0.0] * 63), "holds 63 values; its shape needs 64"),
        (*req(data=["a"] * 64), "numbers only"),
        (*req(data=[1e39] + [0.0] * 63), "beyond float32"),
        (json.dumps({"inputs": [{**good, "shape": [11, 64], "data": [0.0] * 704}]}), js, 413, "the limit is 10"),
        (json.dumps({"inputs": [good, good]}), js, 400, "a list of one tensor"),
        (json.dumps({"inputs": [good], "outputs": [{"name": "logits"}]}), js, 400, "unknown output(s) ['logits']"),
        (b"{not json", js, 400, "not valid JSON"),
        # the binary extension: a header length beyond the body, a size that does not match the bytes
        (head + raw, {"Inference-Header-Content-Length": "99999"}, 400, "Inference-Header-Content-Length"),
        (head + raw[:-4], {"Inference-Header-Content-Length": str(len(head))}, 400, "binary_data_size 256 with 252"),
        (json.dumps({"inputs": [good]}).encode() + raw, {"Inference-Header-Content-Length": "x"}, 400, "must be"),
    ]


def test_open_inference_protocol_v2_with_tritonclient(served):
    """The v2 protocol beside v1, driven by Triton's own HTTP client with its defaults (binary
    tensors) and with JSON tensors; answers equal the model's; every bad request a 4xx."""
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    c = deploy(served, model="mlp-d", max_instances=10)
    client = triton.InferenceServerClient(url=f"127.0.0.1:{PORT}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("mlp-d")
    assert client.get_server_metadata()["name"] == "modelfoundry"
    meta = client.get_model_metadata("mlp-d")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert [o["name"] for o in meta["outputs"]] == ["probabilities", "class"]
    assert meta["versions"] == [c.get("/v1/models/mlp-d").json()["version"]]

    x = served["digits"].x_test[:7]
    expected = local_probs(served["models"]["mlp"], x)
    for binary in (True, False):
        inp = triton.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        outs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("probabilities", "class")]
        res = client.infer("mlp-d", [inp], outputs=outs, request_id="r1")
        np.testing.assert_allclose(res.as_numpy("probabilities"), expected, atol=1e-5)
        np.testing.assert_array_equal(res.as_numpy("class"), expected.argmax(1))
        assert res.get_response()["id"] == "r1"
    # no outputs named: all of them (binary by the client's default); other datatypes convert
    inp = triton.InferInput("input", [7, 64], "FP64")
    inp.set_data_from_numpy(x.reshape(7, 64).astype(np.float64))
    res = client.infer("mlp-d", [inp], model_version=meta["versions"][0])
    np.testing.assert_allclose(res.as_numpy("probabilities"), expected, atol=1e-5)

    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        client.get_model_metadata("nope")
    with pytest.raises(InferenceServerException, match="has no version '999'"):
        client.infer("mlp-d", [inp], model_version="999")
    for body, headers, status, fragment in _v2_bad_bodies():
        r = c.post("/v2/models/mlp-d/infer", content=body, headers=headers)
        assert r.status_code == status, (body[:60], r.text)
        assert fragment in r.json()["error"], (fragment, r.text)

    # a regressor and the VAE (its tensor verb: reconstruct); a language model has none
    deploy(served, model="sun")
    xs = served["sun"].x_test[:3]
    inp = triton.InferInput("input", list(xs.shape), "FP32")
    inp.set_data_from_numpy(xs)
    with torch.no_grad():
        want = served["models"]["sun"](torch.from_numpy(xs)).numpy()[:, 0]
    np.testing.assert_allclose(client.infer("sun", [inp]).as_numpy("prediction"), want, rtol=1e-5)
    deploy(served, model="vae-d")
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    with torch.no_grad():
        want = torch.sigmoid(served["models"]["vae"](torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(client.infer("vae-d", [inp]).as_numpy("reconstruction"), want, atol=1e-5)


def test_the_web_page_draws_a_digit_and_shows_the_models_answer_with_keys_on(served, browser, tmp_path):
    from playwright.sync_api import expect

    from modelfoundry.serving.requests import png_array

    keyfile = tmp_path / "keys"
    keyfile.write_text("page-key-1\n")
    c = deploy(served, model="cnn-d", api_keys_file=str(keyfile))
    # the page's files need no key (they hold nothing secret); nothing else is served from disk
    assert c.get("/").status_code == 200 and c.get("/ui/app.js").headers["content-type"].startswith("text/javascript")
    for probe in ("/ui/index.html", "/ui/..%2F..%2Fpyproject.toml", "/ui/%2e%2e", "/ui/webpage.py"):
        r = c.get(probe)
        assert r.status_code == 404 and "error" in r.json(), probe
    page = browser.new_page()
    sent: list[bytes] = []
    page.on(
        "request", lambda r: sent.append(r.post_data_buffer) if r.url.endswith("/v1/models/cnn-d:predict") else None
    )
    page.goto(URL + "/")
    message = page.locator("#message")
    expect(message).to_contain_text("needs an API key")
    page.fill("#key", "not-the-key")
    page.click("#key-apply")
    expect(message).to_have_text("The API key was not accepted.")
    page.fill("#key", "page-key-1")
    page.click("#key-apply")
    expect(page.locator("#panel-draw")).to_be_visible()
    expect(page.locator("#model-name")).to_have_text("cnn-d v1")
    page.click("#predict")  # nothing drawn yet
    expect(message).to_have_text("The canvas is empty: draw a digit first.")
    assert sent == []  # refused in the page, not sent

    box = page.locator("#pad").bounding_box()
    at = lambda fx, fy: (box["x"] + fx * box["width"], box["y"] + fy * box["height"])  # noqa: E731
    for stroke in ([(0.3, 0.2), (0.7, 0.2), (0.45, 0.85)], [(0.35, 0.5), (0.65, 0.5)]):  # a crossed seven
        page.mouse.move(*at(*stroke[0]))
        page.mouse.down()
        for point in stroke[1:]:
            page.mouse.move(*at(*point), steps=12)
        page.mouse.up()
    expect(page.locator("#prediction")).not_to_have_text("-")
    expect(message).to_have_text("")
    # what the page shows is what the model says about the PNG the page sent
    png = sent[-1]
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    expected = local_probs(served["models"]["cnn"], png_array(png, (1, 8, 8), 10**6))[0]
    shown = [float(p) for p in page.locator(".bar").evaluate_all("rows => rows.map(r => r.dataset.p)")]
    np.testing.assert_allclose(shown, expected, atol=1e-5)
    assert page.locator("#prediction").inner_text() == str(int(expected.argmax()))
    assert page.locator(".bar.top").get_attribute("data-class") == str(int(expected.argmax()))
    page.screenshot(path=str(tmp_path / "digit.png"))
    assert (tmp_path / "digit.png").read_bytes()[:4] == b"\x89PNG"
    # Explain: the attributions of the predicted class over the drawing, as the service computed them
    explained: list = []
    page.on(
        "response",
        lambda r: explained.append((r.request.post_data_buffer, r.json())) if r.url.endswith(":explain") else None,
    )
    page.click("#explain")
    expect(page.locator("#explained")).to_contain_text(f"Why {int(expected.argmax())}:")
    assert page.locator("#saliency").get_attribute("data-target") == str(int(expected.argmax()))
    drawing, shown_json = explained[-1]
    direct = c.post(
        "/v1/models/cnn-d:explain", content=drawing, headers={"content-type": "image/png", "x-api-key": "page-key-1"}
    )
    assert direct.status_code == 200 and shown_json == direct.json(), direct.text
    # the overlay is drawn: red or blue cells over the dimmed drawing
    tinted = page.locator("#saliency").evaluate(
        "c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;"
        " for (let i = 0; i < d.length; i += 4) if (Math.abs(d[i] - d[i + 2]) > 40) n++; return n; }"
    )
    assert tinted > 1000, tinted
    page.screenshot(path=str(tmp_path / "explained.png"))
    page.click("#clear")
    expect(page.locator("#explanation")).to_be_hidden()
    expect(page.locator("#prediction")).to_have_text("-")
    page.close()


def test_the_web_page_samples_and_walks_the_vae_and_plots_a_forecast(served, browser):
    from playwright.sync_api import expect

    deploy(served, model="vae-d")
    page = browser.new_page()
    page.goto(URL + "/")
    expect(page.locator("#panel-vae")).to_be_visible()
    page.wait_for_function("() => document.getElementById('samples').naturalWidth === 8 * 8")  # 16 in a 8x2 grid
    page.locator('input[data-dim="0"]').fill("2")
    expect(page.locator("#decoded")).to_have_attribute(
        "data-z", json.dumps([2] + [0] * (served["models"]["vae"].config.latent_dim - 1), separators=(",", ":"))
    )
    page.close()

    deploy(served, model="sun")
    page = browser.new_page()
    page.goto(URL + "/")
    expect(page.locator("#panel-forecast")).to_be_visible()
    window = served["sun"].x_test[0, :, 0]
    page.fill("#history", ", ".join(f"{v:.6g}" for v in window))
    page.fill("#horizon", "3")
    page.click("#forecast")
    expect(page.locator("#forecast-values")).not_to_be_empty()
    series, expected = [float(f"{v:.6g}") for v in window], []
    for _ in range(3):  # fed back step by step, as the page does
        with torch.no_grad():
            x = torch.tensor(series[-len(window) :], dtype=torch.float32)[None, :, None]
            expected.append(float(served["models"]["sun"](x)[0, 0]))
        series.append(expected[-1])
    shown = [float(v) for v in page.locator("#forecast-values").inner_text().split(",")]
    np.testing.assert_allclose(shown, expected, atol=0.006, rtol=1e-5)
    page.fill("#history", "1, 2, x")
    page.click("#forecast")
    expect(page.locator("#message")).to_have_text("History must be numbers separated by commas.")
    page.close()


def test_multiplexed_models_share_one_replica_with_an_lru_of_two(served, browser, tmp_path):
    """Three digits models, one replica that holds two: each request answered by the model it
    names (in the URL or in Serve's header), loaded on first use, the least recently used evicted."""
    from ray import serve

    from modelfoundry.serving.apps import build_app

    digits, store, models = served["digits"], str(tmp_path / "mx"), {}
    for i in range(3):
        torch.manual_seed(100 + i)  # three different models
        m = build_model("mlp", "tiny", input_shape=digits.spec.input_shape, output_dim=digits.spec.output_dim)
        set_normalization(m, digits.stats())
        write_checkpoint(
            tmp_path / f"m{i}", m, dataset=digits.spec.to_dict(), metrics={}, extra={"task": "classification"}
        )
        export(str(tmp_path / f"m{i}"), store, f"digits-{i}")
        models[f"digits-{i}"] = m.eval()
    app = {"store": store, "kind": "multiplex", "models": list(models), "max_models_per_replica": 2}
    serve.run(build_app(app), name="t", route_prefix="/")
    c = httpx.Client(base_url=URL, timeout=60)
    x = digits.x_test[:4]
    body = {"instances": x.tolist()}
    for i, mid in enumerate(["digits-0", "digits-1", "digits-2", "digits-0", "digits-2", "digits-1"]):
        if i % 2:
            r = c.post("/v1/models/multiplex:predict", json=body, headers={"serve_multiplexed_model_id": mid})
        else:
            r = c.post(f"/v1/models/{mid}:predict", json=body)
        assert r.json()["model_id"] == mid
        np.testing.assert_allclose(probs(r), local_probs(models[mid], x), atol=1e-5)

    async def replica_stats():  # this driver's handles route on its event loop (Serve's fast path)
        return await serve.get_deployment_handle("models", app_name="t").stats.remote()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # a loop of its own (Playwright's runs on this thread)
        stats = pool.submit(lambda: asyncio.new_event_loop().run_until_complete(replica_stats())).result()
    # 0, 1 loaded; 2 evicts 0; 0 evicts 1; 2 is resident; 1 evicts 0
    assert stats["loads"] == ["digits-0", "digits-1", "digits-2", "digits-0", "digits-1"]

    v2 = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [4, 64], "data": x.reshape(-1).tolist()}]}
    r = c.post("/v2/models/digits-2/infer", json=v2)
    assert r.status_code == 200 and r.json()["model_name"] == "digits-2"
    got = np.array(r.json()["outputs"][0]["data"]).reshape(4, 10)
    np.testing.assert_allclose(got, local_probs(models["digits-2"], x), atol=1e-5)
    for path, headers, status, fragment in (
        ("/v1/models/multiplex:predict", {}, 400, "name a model"),
        ("/v1/models/digits-9:predict", {}, 404, "unknown model 'digits-9'"),
        ("/v1/models/digits-0:predict", {"serve_multiplexed_model_id": "digits-1"}, 400, "the URL names model"),
        ("/v1/models/multiplex:predict", {"serve_multiplexed_model_id": "../x"}, 404, "unknown model '../x'"),
    ):
        r = c.post(path, json=body, headers=headers)
        assert r.status_code == status and fragment in r.json()["error"], (path, r.text)
    assert c.post("/v2/models/digits-1/versions/1/infer", json=v2).status_code == 404
    assert c.get("/v1/models/multiplex").json()["members"] == list(models)

    page = browser.new_page()  # the page picks one of the models
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url) if r.method == "POST" else None)
    page.goto(URL + "/")
    page.select_option("#model-select", "digits-1")
    box = page.locator("#pad").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + 20)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] - 20, steps=10)
    page.mouse.up()
    from playwright.sync_api import expect

    expect(page.locator("#prediction")).not_to_have_text("-")
    assert urls == [URL + "/v1/models/digits-1:predict"]
    page.close()
    for bad, fragment in (
        ({**app, "models": ["digits-0", "digits-0"]}, "lists a model twice"),
        ({**app, "models": ["mlp-d", "cnn-d"], "store": served["store"]}, "must share family, task and input shape"),
        ({**app, "models": ["mlp-d", "vae-d"], "store": served["store"]}, "'vae-d' is a generative model"),
        ({**app, "models": []}, "kind multiplex needs models"),
        ({**app, "max_models_per_replica": 0}, "greater than 0"),
    ):
        with pytest.raises(ValueError, match=fragment):
            build_app(bad)


def test_the_shipped_multiplex_yaml_serves_three_versions_of_one_model(served, tmp_path, monkeypatch):
    """serve_apps/multiplex.yaml's application, built by its import_path's builder from its args
    (as `serve run` does), over a store holding three versions of cnn-digits."""
    from pathlib import Path

    import yaml
    from ray import serve

    root = Path(__file__).resolve().parents[1]
    monkeypatch.syspath_prepend(str(root))  # import_path modules, as `serve` finds them from the project root
    from serve_apps.multiplex import Args, app

    cfg = yaml.safe_load((root / "serve_apps" / "multiplex.yaml").read_text())["applications"][0]
    digits, store, models = served["digits"], str(tmp_path / "store"), {}
    for version in (1, 2, 3):
        torch.manual_seed(version)
        m = build_model("cnn", "tiny", input_shape=digits.spec.input_shape, output_dim=digits.spec.output_dim)
        write_checkpoint(
            tmp_path / f"v{version}", m, dataset=digits.spec.to_dict(), metrics={}, extra={"task": "classification"}
        )
        export(str(tmp_path / f"v{version}"), store, "cnn-digits")
        models[f"cnn-digits:{version}"] = m.eval()
    serve.run(app(Args.model_validate({**cfg["args"], "store": store})), name="t", route_prefix=cfg["route_prefix"])
    c = httpx.Client(base_url=URL, timeout=60)
    x = digits.x_test[:4]
    for ref, headers in (("cnn-digits:2", {}), ("digits", {"serve_multiplexed_model_id": "cnn-digits:3"})):
        r = c.post(f"/v1/models/{ref}:predict", json={"instances": x.tolist()}, headers=headers)
        model_id = headers.get("serve_multiplexed_model_id", ref)
        assert r.json()["model_id"] == model_id
        np.testing.assert_allclose(probs(r), local_probs(models[model_id], x), atol=1e-5)
