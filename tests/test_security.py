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
from modelfoundry.artifacts import CheckpointError, load_checkpoint, verify, write_checkpoint
from modelfoundry.models import build_model
from modelfoundry.serving import guard, oip
from modelfoundry.serving.requests import RequestError, header_int

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
    assert load_checkpoint(new).meta["sharded"]
    published = store.export(str(new), str(s), "planted")
    assert "sharded" not in verify(published["path"]) and not (Path(published["path"]) / "sharded").exists()
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

SPECS = oip.output_specs("classification", [1, 8, 8], {"output_dim": 10})
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
    outs = oip.tensors("classification", rng.standard_normal((4, 10)).astype(np.float32) * 1e-7)
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
    assert store.resolve(s, "m").endswith("/m/1")  # latest: the newest complete one
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
