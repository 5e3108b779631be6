"""Security round 2 (docs/security.md): each threat as an attacker would try it.

Unit tests (no Ray): sharded checkpoints never unpickle DCP metadata and keep every file name inside
the checkpoint; OIP v2 outputs once each with bounded replies; numeric headers; sampling at any
temperature; the Host and Content-Type checks; atomic store writes, replace-then-delete exports,
incomplete versions refused; job uploads without credentials. Then a live Serve app over HTTP on
127.0.0.1: the same checks end to end, docs behind keys, the multiplexer's unknown names,
HAProxy against slow clients, and concurrent rollouts from several processes."""

from __future__ import annotations

import builtins
import concurrent.futures
import hashlib
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from modelfoundry import store
from modelfoundry.models import build_model
from modelfoundry.serving import guard, oip
from modelfoundry.serving.requests import RequestError, header_int
from modelfoundry.store.checkpoint import CheckpointError, load_checkpoint, verify, write_checkpoint

ROOT = Path(__file__).resolve().parents[1]
FOUNDRY = str(Path(sys.executable).parent / "foundry")
PORT = 18129
URL = f"http://127.0.0.1:{PORT}"


class Planted:
    """Unpickling this creates `path`: what a hostile DCP .metadata would do (any code could run)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return builtins.open, (self.path, "w")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _mlp_checkpoint(d: Path) -> Path:
    torch.manual_seed(0)
    model = build_model("mlp", "tiny", input_shape=(1, 8, 8), output_dim=10)
    return write_checkpoint(d, model, dataset={"name": "digits"}, metrics={}, extra={"task": "classification"})


def _plant_sharded(d: Path, marker: Path, with_model_pt: bool) -> Path:
    """A checkpoint shaped as an FSDP run's: model.json lists a DCP .metadata (a pickle that would
    create `marker`) with its right sha256; with or without the consolidated model.pt."""
    _mlp_checkpoint(d)
    meta = json.loads((d / "model.json").read_text())
    dcp = d / "sharded" / "model"
    dcp.mkdir(parents=True)
    (dcp / ".metadata").write_bytes(pickle.dumps(Planted(marker)))
    (dcp / "__0_0.distcp").write_bytes(b"\0" * 64)
    meta["sharded"] = {f"sharded/model/{p.name}": _sha(p) for p in dcp.iterdir()}
    if not with_model_pt:  # the layout main wrote before: the weights only in the shards
        (d / "model.pt").unlink()
        meta["sha256"] = None
    (d / "model.json").write_text(json.dumps(meta))
    return d


def _foundry(*argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([FOUNDRY, *argv], capture_output=True, text=True, timeout=600, **kw)


# ---- 2. sharded checkpoints run no code; file names stay inside the checkpoint -----------------


@pytest.mark.slow  # a `foundry` process of its own (torch imported again): the full tier
def test_a_planted_dcp_metadata_never_runs_in_load_export_or_foundry_export(tmp_path):
    marker = tmp_path / "PWNED"
    old = _plant_sharded(tmp_path / "old", marker, with_model_pt=False)
    with pytest.raises(CheckpointError, match="without a consolidated model.pt.*refused"):
        load_checkpoint(old)
    with pytest.raises(CheckpointError, match="without a consolidated model.pt"):
        store.export(str(old), str(tmp_path / "store"), "x")
    # planted straight into a store, as the attacker with write access to it would
    s = tmp_path / "store"
    shutil.copytree(old, s / "planted" / "1")
    r = _foundry("export", "planted", "--format", "safetensors", "--store", str(s))
    assert r.returncode == 2 and "without a consolidated model.pt" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    # a checkpoint that carries model.pt beside the planted shards: exported and served from
    # model.pt; the shards are never opened
    new = _plant_sharded(tmp_path / "new", marker, with_model_pt=True)
    assert load_checkpoint(new).meta.sharded
    published = store.export(str(new), str(s), "planted")
    assert verify(published["path"]).sharded is None and not (Path(published["path"]) / "sharded").exists()
    r = _foundry("export", "planted", "--format", "safetensors", "--store", str(s))
    assert r.returncode == 0, r.stderr[-2000:]
    assert not marker.exists(), "unpickling the planted .metadata ran code"


def test_file_names_in_model_json_stay_inside_the_checkpoint(tmp_path):
    outside = tmp_path / "secret.bin"
    outside.write_bytes(b"not yours")
    for name in ("../secret.bin", str(outside), "sharded/../../secret.bin", "a\\b", ""):
        d = _mlp_checkpoint(tmp_path / f"c{abs(hash(name))}")
        meta = json.loads((d / "model.json").read_text())
        meta["sharded"] = {name: _sha(outside)}
        (d / "model.json").write_text(json.dumps(meta))
        with pytest.raises(CheckpointError, match="outside the checkpoint|not a relative path"):
            verify(d)
    # a symlink inside the directory that points out of it
    d = _mlp_checkpoint(tmp_path / "link")
    (d / "sharded").mkdir()
    (d / "sharded" / "shard").symlink_to(outside)
    meta = json.loads((d / "model.json").read_text())
    meta["sharded"] = {"sharded/shard": _sha(outside)}
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="link out of the checkpoint"):
        verify(d)
    # model.pt itself as a link out
    d = _mlp_checkpoint(tmp_path / "linked-weights")
    shutil.move(d / "model.pt", tmp_path / "elsewhere.pt")
    (d / "model.pt").symlink_to(tmp_path / "elsewhere.pt")
    with pytest.raises(CheckpointError, match="link out of the checkpoint"):
        load_checkpoint(d)


def test_a_sharded_checkpoint_with_missing_shards_is_a_clear_error(tmp_path):
    d = _plant_sharded(tmp_path / "ck", tmp_path / "PWNED", with_model_pt=True)
    (d / "sharded" / "model" / "__0_0.distcp").unlink()
    with pytest.raises(CheckpointError, match="not a complete checkpoint: sharded/model/__0_0.distcp is missing"):
        verify(d)
    s = tmp_path / "store"
    shutil.copytree(d, s / "m" / "1")
    r = _foundry("export", "m", "--format", "safetensors", "--store", str(s))
    assert r.returncode == 2 and "is missing" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]


# ---- 1, 3. OIP v2: outputs once each, replies bounded, headers parsed safely -------------------

SPECS = oip.output_specs("classes", [1, 8, 8], {"output_dim": 10})
GOOD = {"name": "input", "datatype": "FP32", "shape": [4, 64], "data": [0.0] * 256}


def _infer(body: dict, headers: dict | None = None, max_response_bytes: int = 10**6):
    return oip.parse_infer(json.dumps(body).encode(), headers or {}, (1, 8, 8), 256, 10**6, SPECS, max_response_bytes)


def test_oip_refuses_repeated_and_unknown_outputs_and_replies_over_the_limit():
    dup = {"inputs": [GOOD], "outputs": [{"name": "class"}] * 3000}
    with pytest.raises(RequestError, match="more than once") as e:
        _infer(dup)
    assert e.value.status == 400
    with pytest.raises(RequestError, match=r"unknown output\(s\) \['logits'\]"):
        _infer({"inputs": [GOOD], "outputs": [{"name": "logits"}] * 50})
    req = _infer({"inputs": [GOOD], "outputs": [{"name": "probabilities"}, {"name": "class"}]})
    assert req.outputs == ["probabilities", "class"]
    # the bound is known before the model runs, and binary outputs are the smaller encoding
    size = oip.reply_bytes(req, SPECS)
    with pytest.raises(RequestError, match="the reply would be about") as e:
        _infer({"inputs": [GOOD]}, max_response_bytes=size - 1)
    assert e.value.status == 413
    binary = _infer({"inputs": [GOOD], "parameters": {"binary_data_output": True}}, max_response_bytes=size - 1)
    assert binary.binary == {"probabilities", "class"}
    # the bound holds: the encoded reply is never larger than reply_bytes said
    rng = np.random.default_rng(0)
    outs = oip.tensors("classes", rng.standard_normal((4, 10)).astype(np.float32) * 1e-7)
    body, _ = oip.response("m", "1", req, outs)
    assert len(body) <= size


@pytest.mark.parametrize("value", ["9" * 5000, "\u00b2", "-1", "1e3", " ", "0x10", "\u0663"])
def test_a_numeric_header_that_is_not_a_plain_number_is_a_400(value):
    with pytest.raises(RequestError) as e:
        header_int({"inference-header-content-length": value}, "inference-header-content-length", 100)
    assert e.value.status == 400 and "whole number" in e.value.message
    with pytest.raises(RequestError):
        _infer({"inputs": [GOOD]}, {"inference-header-content-length": value})
    assert header_int({"x": "42"}, "x", 100) == 42 and header_int({}, "x", 100) is None


# ---- 4. sampling at any temperature the API admits ---------------------------------------------


def test_a_tiny_temperature_samples_finitely():
    from modelfoundry.models.transformer import next_token

    logits = torch.tensor([1.0, 30.0, -5.0, 29.9])
    g = torch.Generator().manual_seed(0)
    for t in (1e-300, 5e-324, 1e-30, 1e-4):
        assert next_token(logits, t, None, g) == 1
        assert next_token(logits, t, 2, g) == 1
    assert next_token(logits, 1.0, None, g) in range(4)


# ---- 7. the Host and Content-Type checks -------------------------------------------------------


@pytest.mark.parametrize(
    "host, allowed, keys, ok",
    [
        ("127.0.0.1:8000", None, False, True),
        ("localhost:8000", None, False, True),
        ("LOCALHOST.", None, False, True),
        ("[::1]:8000", None, False, True),
        ("127.3.4.5", None, False, True),
        ("evil.example:8000", None, False, False),  # a DNS-rebinding page's Host
        ("10.0.0.5:8000", None, False, False),
        ("", None, False, False),
        ("a b", None, False, False),
        ("evil.example", None, True, True),  # with keys the key is the gate
        ("evil.example", ("api.example",), True, False),
        ("api.example:443", ("api.example",), False, True),
        ("anything", ("*",), False, True),
    ],
)
def test_the_host_check(host, allowed, keys, ok):
    headers = {"host": host} if host else {}
    if ok:
        guard.check_host(headers, allowed, keys)
    else:
        with pytest.raises(RequestError) as e:
            guard.check_host(headers, allowed, keys)
        assert e.value.status == 421


def test_the_content_type_check():
    assert guard.check_content_type({"content-type": "application/json; charset=utf-8"}, (guard.JSON,), "v") == (
        "application/json"
    )
    for bad in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        with pytest.raises(RequestError) as e:
            guard.check_content_type({"content-type": bad} if bad else {}, (guard.JSON,), ":predict")
        assert e.value.status == 415 and ":predict takes Content-Type application/json" in e.value.message


# ---- 13. stores: atomic aliases, incomplete versions, replace-then-delete exports --------------


def test_incomplete_versions_cannot_be_aliased_served_or_exported(tmp_path):
    s = str(tmp_path / "store")
    store.export(str(_mlp_checkpoint(tmp_path / "ck")), s, "m")
    (tmp_path / "store" / "m" / "2").mkdir()  # a URI upload under way: no model.json yet
    (tmp_path / "store" / "m" / "2" / "model.pt").write_bytes(b"partial")
    with pytest.raises(ValueError, match="version 2 of 'm' is not complete"):
        store.set_alias(s, "m", "champion", 2)
    with pytest.raises(ValueError, match="not complete"):
        store.resolve(s, "m", 2)
    assert store.resolve(s, "m").version == 1  # latest: the newest complete one
    store.set_alias(s, "m", "champion", 1)
    assert json.loads((tmp_path / "store" / "m" / "aliases.json").read_text())["aliases"] == {"champion": 1}
    assert not list((tmp_path / "store" / "m").glob(".aliases.json.*"))  # no temp file left


def test_an_unknown_name_lists_names_without_reading_any_version(tmp_path, monkeypatch):
    s = str(tmp_path / "store")
    store.export(str(_mlp_checkpoint(tmp_path / "ck")), s, "known")
    monkeypatch.setattr(store, "entry", lambda *a: pytest.fail("resolve read a version to name what is missing"))
    with pytest.raises(ValueError, match=r"model 'nope' is not in the store .* it holds \['known'\]"):
        store.resolve(s, "nope")


def test_a_uri_export_that_fails_midway_keeps_the_old_one(tmp_path, monkeypatch):
    from modelfoundry import export_formats

    s = f"file://{tmp_path}/store"
    store.export(str(_mlp_checkpoint(tmp_path / "ck")), s, "m")
    first = export_formats.export_format(s, "m", "latest", "safetensors")
    where = tmp_path / "store" / "m" / "1" / "exports" / "safetensors"
    before = {p.name: p.read_bytes() for p in where.iterdir()}

    def broken_upload(*_):
        raise OSError("connection reset while uploading")

    monkeypatch.setattr(export_formats, "upload_dir", broken_upload)
    with pytest.raises(OSError, match="connection reset"):
        export_formats.export_format(s, "m", "latest", "safetensors")
    assert {p.name: p.read_bytes() for p in where.iterdir()} == before  # untouched, nothing half-written
    assert export_formats.read_export(s, "m", "latest", "safetensors")["sha256"] == first["sha256"]
    monkeypatch.undo()
    again = export_formats.export_format(s, "m", "latest", "safetensors")  # and a retry replaces it
    assert export_formats.read_export(s, "m", "latest", "safetensors")["sha256"] == again["sha256"]
    assert sorted(p.name for p in where.iterdir()) == sorted(before)  # no .incoming- leftovers


# ---- 14. job uploads ---------------------------------------------------------------------------

SECRETS = [".ssh/id_ecdsa", ".ssh/id_ecdsa.pub", ".ssh/config", ".kube/config", ".docker/config.json",
           ".git-credentials", ".pypirc", "deploy/id_ed25519", "home/.aws/credentials", ".env"]  # fmt: skip


def test_submit_dry_run_lists_the_upload_without_credentials(tmp_path):
    tree = tmp_path / "project"
    shutil.copytree(ROOT / "jobs", tree / "jobs")
    (tree / "platform" / "modelfoundry").mkdir(parents=True)
    (tree / "platform" / "modelfoundry" / "cli.py").write_text("# code\n")
    for rel in SECRETS:
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text("secret")
    r = _foundry("submit", "train", "--address", "http://127.0.0.1:1", "--dry-run", "--working-dir", str(tree))
    assert r.returncode == 0, r.stderr[-2000:]
    listed = [line.split()[-1] for line in r.stdout.splitlines() if line.strip() and line.split()[0][0].isdigit()]
    assert "jobs/train.py" in listed and "platform/modelfoundry/cli.py" in listed
    leaked = [p for p in listed if any(p == s or p.endswith("/" + s) for s in SECRETS)]
    assert not leaked, leaked
    assert "nothing was sent" in r.stdout


# ---- on a live Serve app, over HTTP on 127.0.0.1 -----------------------------------------------


@pytest.fixture(scope="module")
def served(ray_cluster, tmp_path_factory):
    from ray import serve

    from modelfoundry.config import DataSection
    from modelfoundry.data import load_splits

    tmp = tmp_path_factory.mktemp("security")
    s = str(tmp / "store")
    digits = load_splits(DataSection(dataset="digits"))
    from test_serving import _publish

    _publish(tmp, s, "mlp-d", "mlp", digits, "classification")
    _publish(tmp, s, "vae-d", "vae", digits, "generative")
    for seed in (1, 2):  # two versions: a canary's champion and challenger
        _publish(tmp, s, "canary-d", "mlp", digits, "classification", seed)
    store.set_alias(s, "canary-d", "champion", 1)
    store.set_alias(s, "canary-d", "challenger", 2)
    text = load_splits(DataSection(dataset="pydocs", window=64))
    torch.manual_seed(0)
    lm = build_model("transformer", "tiny", vocab_size=len(text.spec.tokenizer["vocab"]))
    write_checkpoint(tmp / "lm", lm, dataset=text.spec.to_dict(), metrics={}, extra={"task": "language-model"})
    store.export(str(tmp / "lm"), s, "lm")
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    yield {"store": s, "x": digits.x_test[:4], "tmp": tmp}
    serve.shutdown()


def deploy(served, name="t", **args):
    from ray import serve

    from modelfoundry.serving.apps import build_app

    serve.run(build_app({"store": served["store"], **args}), name=name, route_prefix="/")
    return httpx.Client(base_url=URL, timeout=60)


def _raw(request: bytes) -> tuple[int, bytes]:
    """One request as raw bytes (headers httpx would refuse to send), its status and body."""
    with socket.create_connection(("127.0.0.1", PORT), timeout=60) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            return int(v)
    return 0


def test_oip_duplicates_are_refused_and_healthz_answers_while_the_largest_reply_is_made(served):
    # the VAE's reconstruction is the largest reply per instance: 4,096 instances of 64 values as
    # JSON is ~2.8 MB (its bound, 25 bytes a value, 6.6 MB, within the 8 MB limit); four clients ask for it
    c = deploy(served, model="vae-d", max_instances=4096, max_body_bytes=2_000_000, max_response_bytes=8_000_000)
    x = np.random.default_rng(0).random((4096, 64), dtype=np.float32)
    head = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [4096, 64], "parameters": {
        "binary_data_size": x.nbytes}}]}  # fmt: skip
    header = json.dumps(head).encode()
    largest = {"content": header + x.tobytes(), "headers": {"Inference-Header-Content-Length": str(len(header))}}
    r = c.post("/v2/models/vae-d/infer", **largest)
    assert r.status_code == 200 and 2_000_000 < len(r.content) <= 8_000_000, (r.status_code, len(r.content))
    small = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [4, 64], "data": [0.5] * 256}]}
    dup = c.post("/v2/models/vae-d/infer", json={**small, "outputs": [{"name": "reconstruction"}] * 3000})
    assert dup.status_code == 400 and "more than once" in dup.json()["error"]

    stop, made, health = threading.Event(), [], []

    def heavy() -> None:
        with httpx.Client(base_url=URL, timeout=120) as h:
            while not stop.is_set():
                resp = h.post("/v2/models/vae-d/infer", **largest)
                assert resp.status_code == 200, resp.text[:200]
                made.append(len(resp.content))

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(heavy) for _ in range(4)]
        try:
            while len(made) < 8 or len(health) < 40:  # probes during at least 8 largest replies
                t0 = time.perf_counter()
                assert c.get("/healthz").status_code == 200
                health.append(time.perf_counter() - t0)
        finally:
            stop.set()
        for f in futures:
            f.result()
    assert max(health) < 1.0, f"/healthz took {max(health):.2f}s while large replies were made"


def test_bad_headers_content_types_and_hosts_get_a_4xx_json_error(served):
    c = deploy(served, model="vae-d")
    body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}]})
    for value in ("9" * 5000, "\u00b2"):
        req = (
            f"POST /v2/models/vae-d/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Inference-Header-Content-Length: {value}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode() + body.encode()
        status, answer = _raw(req)
        assert status == 400 and "whole number" in json.loads(answer)["error"], (status, answer[:200])
    # PNG where the verb takes JSON (the VAE's decode takes latent vectors): 415 before the model
    png = (ROOT / "platform" / "modelfoundry" / "serving" / "web" / "index.html").read_bytes()
    for verb in ("decode", "sample"):
        r = c.post(
            f"/v1/models/vae-d:{verb}", content=b"\x89PNG\r\n\x1a\n" + png, headers={"content-type": "image/png"}
        )
        assert r.status_code == 415 and "takes Content-Type application/json" in r.json()["error"], r.text
    # a cross-site "simple" POST: JSON sent as text/plain or a form is refused, never parsed
    instances = json.dumps({"instances": served["x"].reshape(4, 64).tolist()})
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        headers = {"content-type": ctype} if ctype else {}
        r = c.post("/v1/models/vae-d:reconstruct", content=instances, headers=headers)
        assert r.status_code == 415, (ctype, r.status_code, r.text)
    r = c.post("/v2/models/vae-d/infer", content=body, headers={"content-type": "text/plain"})
    assert r.status_code == 415
    # a DNS-rebinding page's requests carry its own name as Host
    for path in ("/", "/v1/models/vae-d", "/openapi.json", "/docs"):
        r = c.get(path, headers={"host": "rebind.attacker.example:18129"})
        assert r.status_code == 421 and "is not served here" in r.json()["error"], (path, r.text)
    assert c.get("/healthz", headers={"host": "10.1.2.3"}).status_code == 200  # probes stay open
    assert not any(k.lower().startswith("access-control") for k in c.get("/v1/models/vae-d").headers)
    ok = c.post("/v1/models/vae-d:reconstruct", content=instances, headers={"content-type": "application/json"})
    assert ok.status_code == 200
    # a configured name is answered
    c = deploy(served, model="vae-d", allowed_hosts=["models.internal"])
    assert c.get("/v1/models/vae-d", headers={"host": "models.internal:8000"}).status_code == 200
    assert c.get("/v1/models/vae-d", headers={"host": "other.internal"}).status_code == 421


def test_docs_are_served_from_the_package_and_behind_the_keys(served, tmp_path):
    c = deploy(served, model="mlp-d")
    page = c.get("/docs")
    assert page.status_code == 200 and "swagger" in page.text.lower()
    assert "cdn" not in page.text and "https://" not in page.text.replace("https://fastapi.tiangolo.com", "")
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert c.get(f"/ui/swagger/{asset}").status_code == 200
    assert c.get("/ui/swagger/../../etc/passwd").status_code == 404
    assert "/v1/models/{target}" in c.get("/openapi.json").json()["paths"]
    keys = tmp_path / "keys"
    keys.write_text("docs-key\n")
    c = deploy(served, model="mlp-d", api_keys_file=str(keys))
    assert c.get("/docs").status_code == 404 and c.get("/ui/swagger/swagger-ui.css").status_code == 404
    assert c.get("/openapi.json").status_code == 401
    assert c.get("/openapi.json", headers={"x-api-key": "wrong"}).status_code == 403
    assert c.get("/openapi.json", headers={"authorization": "Bearer docs-key"}).status_code == 200


def _ingress_pid(app: str) -> int:
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()["applications"][app]
    return details["deployments"]["Ingress"]["replicas"][0]["pid"]


def test_a_thousand_unknown_multiplexed_names_get_404s_with_memory_flat(served):
    import psutil

    c = deploy(served, kind="multiplex", models=["mlp-d", "canary-d"])

    def unknown(i: int) -> None:
        if i % 2:
            r = c.post(f"/v1/models/nope-{i}:predict", json={"instances": served["x"].tolist()})
        else:
            r = c.post("/v1/models/multiplex:predict", json={"instances": served["x"].tolist()},
                       headers={"serve_multiplexed_model_id": f"nope-{i}"})  # fmt: skip
        assert r.status_code == 404 and "unknown model" in r.json()["error"], r.text

    proc = psutil.Process(_ingress_pid("t"))
    for i in range(200):  # warm up: allocator pools, caches
        unknown(i)
    before = proc.memory_info().rss
    for i in range(200, 1200):
        unknown(i)
    grown = proc.memory_info().rss - before
    assert grown < 8 * 2**20, f"the ingress grew {grown / 2**20:.1f} MiB over 1,000 unknown names"
    ok = c.post("/v1/models/mlp-d:predict", json={"instances": served["x"].tolist()})
    assert ok.status_code == 200 and ok.json()["model_id"] == "mlp-d"


def test_slow_clients_do_not_hold_the_proxy(served):
    """500 connections that send their request a byte a second (slowloris) beside a normal client:
    it is answered as usual, and HAProxy's `timeout http-request` (the wrapper's, 10 s) closes them."""
    import selectors

    c = deploy(served, model="mlp-d")
    body = {"instances": served["x"].tolist()}
    slow = []
    for _ in range(500):
        s = socket.create_connection(("127.0.0.1", PORT), timeout=10)
        s.sendall(b"POST /v1/models/mlp-d:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        s.setblocking(False)
        slow.append(s)
    stop, closed = threading.Event(), set()

    def drip() -> None:  # one more header byte a second on every open slow connection
        while not stop.is_set() and len(closed) < len(slow):
            for i, s in enumerate(slow):
                if i not in closed:
                    try:
                        s.send(b"x")
                    except OSError:
                        closed.add(i)
            stop.wait(1.0)

    t = threading.Thread(target=drip)
    t.start()
    try:
        lat = []
        for _ in range(200):
            t0 = time.perf_counter()
            assert c.post("/v1/models/mlp-d:predict", json=body).status_code == 200
            lat.append(time.perf_counter() - t0)
        p99 = float(np.percentile(lat, 99))
        # the slow connections end: each gets HAProxy's 408 or is closed (a condition, with a bound)
        sel = selectors.DefaultSelector()
        for i, s in enumerate(slow):
            sel.register(s, selectors.EVENT_READ, i)
        deadline = time.monotonic() + 120
        while len(closed) < len(slow) and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1.0):
                try:
                    data = key.fileobj.recv(4096)
                except OSError:
                    data = b""
                if not data or data.startswith(b"HTTP/1.1 408") or data.startswith(b"HTTP/1.0 408"):
                    closed.add(key.data)
                    sel.unregister(key.fileobj)
    finally:
        stop.set()
        t.join()
        for s in slow:
            s.close()
    assert p99 < 1.0, f"a normal client's p99 was {p99:.2f}s beside 500 slow connections"
    assert len(closed) == 500, f"{500 - len(closed)} slow connections still open"


def test_concurrent_rollouts_from_eight_processes_lose_no_update_and_no_app(served, tmp_path):
    """Two canary apps; 8 processes change their weights at the same moment (4 on each; they
    connect first and wait on a barrier), then `foundry rollout --promote` promotes one. Each app
    ends at one of its writers' weights (what some serial order gives: without the lease a writer
    of the other app wrote back the weights it had read, reverting this app's change), and both
    apps answer every request throughout."""
    import ray

    from modelfoundry.serving.apps import parse_args
    from modelfoundry.serving.rollout import deploy_canary, live_canary

    names = ["cas-a", "cas-b"]
    for n in names:
        args = parse_args(dict(model="canary-d", store=served["store"], traffic={"champion": 100, "challenger": 0}))
        deploy_canary(args, n, route_prefix=f"/{n}", port=PORT)
    stop, failures, answered = threading.Event(), [], []

    def load(n: str) -> None:
        with httpx.Client(base_url=f"{URL}/{n}", timeout=60) as h:
            while not stop.is_set():
                r = h.post("/v1/models/canary-d:predict", json={"instances": served["x"].tolist()})
                (answered if r.status_code == 200 else failures).append((n, r.status_code, r.text[:200]))

    gcs = ray.get_runtime_context().gcs_address
    wanted = {"cas-a": [10, 20, 30, 40], "cas-b": [50, 60, 70, 80]}
    writer = (
        "import sys, time, pathlib\n"
        "from modelfoundry.cluster import connect\n"
        "from modelfoundry.serving.rollout import live_canary, set_traffic\n"
        "gcs, app, weight, ready, go = sys.argv[1:]\n"
        "connect(gcs)\n"
        "live_canary(app)  # Serve's client warm: the writes start together\n"
        "pathlib.Path(ready).touch()\n"
        "while not pathlib.Path(go).exists():\n"
        "    time.sleep(0.002)\n"
        "print(set_traffic(app, {'challenger': int(weight)}))\n"
    )
    go = tmp_path / "go"
    threads = [threading.Thread(target=load, args=(n,)) for n in names]
    for t in threads:
        t.start()
    try:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", writer, gcs, n, str(w), str(tmp_path / f"ready-{n}-{w}"), str(go)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            for i in range(4)
            for n, w in ((names[0], wanted["cas-a"][i]), (names[1], wanted["cas-b"][i]))
        ]
        deadline = time.monotonic() + 600
        while len(list(tmp_path.glob("ready-*"))) < 8 and time.monotonic() < deadline:
            assert all(p.poll() is None for p in procs), [p.communicate()[1][-1500:] for p in procs if p.poll()]
            time.sleep(0.05)
        go.touch()  # all at once
        outs = [p.communicate(timeout=600) for p in procs]
        assert all(p.returncode == 0 for p in procs), [o[1][-1500:] for o in outs]
        for n in names:
            weights = live_canary(n)[2]
            assert weights["challenger"] in wanted[n] and weights["champion"] == 100 - weights["challenger"], weights
        promote = subprocess.run([FOUNDRY, "rollout", "cas-a", "--promote", "--address", gcs],
                                 capture_output=True, text=True, timeout=600)  # fmt: skip
        assert promote.returncode == 0, promote.stderr[-2000:]
        assert live_canary("cas-a")[2] == {"champion": 0, "challenger": 100}
        assert live_canary("cas-b")[2]["challenger"] in wanted["cas-b"]  # untouched by the promote
    finally:
        stop.set()
        for t in threads:
            t.join()
        from ray import serve

        from modelfoundry.serving import control_lock

        for n in names:
            serve.delete(n)
        # the lease is a detached actor: it would outlive this module and hold a worker process
        ray.kill(ray.get_actor(control_lock.NAME, namespace=control_lock.NAMESPACE))
    assert failures == [] and {a[0] for a in answered} == set(names), failures[:5]
    store.set_alias(served["store"], "canary-d", "champion", 1)  # the promote moved it


# every app shape, both protocols: (name, app args, requests' extra header)
SHAPES = [
    ("model", {"model": "mlp-d"}),
    ("split", {"model": "mlp-d", "split": "auto", "api_keys_file": "KEYS"}),
    ("services", {"model": "vae-d"}),
    ("ensemble", {"kind": "ensemble", "models": ["mlp-d", "canary-d"]}),
    ("multiplex", {"kind": "multiplex", "models": ["mlp-d", "canary-d"]}),
    ("canary", {"model": "canary-d", "traffic": {"champion": 50, "challenger": 50}}),
    ("language-model", {"model": "lm", "max_new_tokens": 32}),
    ("language-model-split", {"model": "lm", "split": "auto", "max_new_tokens": 32}),
]


def test_schemathesis_finds_no_server_error_on_any_app_shape(served, tmp_path):
    """Schemathesis against each app's own /openapi.json, every check it has (positive and
    negative data, methods, headers, auth), a fixed seed: the pass condition is no 5xx. What it
    tried per app is written to bench/results/fuzz.json when MF_FUZZ_RESULTS names a file."""
    keys = tmp_path / "keys"
    keys.write_text("fuzz-key\n")  # the split app has keys: the fuzzer sends one
    tried = {}
    for shape, args in SHAPES:
        args = {k: str(keys) if v == "KEYS" else v for k, v in args.items()}
        c = deploy(served, **args)
        c.headers["authorization"] = "Bearer fuzz-key"
        assert c.get("/healthz").status_code == 200
        report = tmp_path / f"{shape}.json"
        cmd = [str(Path(sys.executable).parent / "schemathesis"), "run", f"{URL}/openapi.json", "--checks", "all",
               "--max-examples", "25", "--seed", "1", "--workers", "2", "--no-color", "--request-timeout", "60",
               "--generation-database", "none", "--report", "json", "--report-json-path", str(report)]  # fmt: skip
        if "api_keys_file" in args:
            cmd += ["-H", "Authorization: Bearer fuzz-key"]
        t0 = time.perf_counter()
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)  # its caches there
        assert report.is_file(), run.stdout[-3000:] + run.stderr[-3000:]
        result = json.loads(report.read_text())
        server_errors = [f for f in result["failures"] if f["code"] == "ST101"]
        assert not server_errors, (shape, server_errors, run.stdout[-6000:])
        network = [e for e in result["errors"] if "network" in e["title"].lower() or "connection" in e["title"].lower()]
        assert not network, (shape, network, run.stdout[-4000:])
        assert result["operations"]["tested"] >= 8 and result["test_cases"]["generated"] > 100, result
        assert c.get("/healthz").status_code == 200  # and the replica is still there
        tried[shape] = {
            "operations": result["operations"]["tested"],
            "cases": result["test_cases"]["generated"],
            "server_errors": 0,
            "other_findings": {f["code"]: f["count"] for f in result["failures"]},
            "seconds": round(time.perf_counter() - t0, 1),
        }
    out = os.environ.get("MF_FUZZ_RESULTS")
    if out:
        Path(out).write_text(json.dumps(tried, indent=2))
    print(json.dumps(tried, indent=2))
