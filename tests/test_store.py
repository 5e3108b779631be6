"""The model store under concurrent exports and after killed ones: every export gets its own
version, nothing half-written is ever visible, leftovers never block later exports."""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from modelfoundry import store
from modelfoundry.models import build_model
from modelfoundry.store import catalog
from modelfoundry.store.checkpoint import load_checkpoint, write_checkpoint


def _checkpoint(tmp_path: Path) -> str:
    torch.manual_seed(0)
    model = build_model("mlp", "tiny", input_shape=(1, 8, 8), output_dim=10)
    write_checkpoint(tmp_path / "ckpt", model, dataset={"name": "digits"}, metrics={"test_accuracy": 0.5})
    return str(tmp_path / "ckpt")


def _export(args: tuple[str, str]) -> int:
    ckpt, root = args
    return store.export(ckpt, root, "same-name")["version"]


@pytest.mark.parametrize("kind", ["local", "uri"])
def test_parallel_exports_of_one_name_get_distinct_complete_versions(tmp_path, kind):
    ckpt = _checkpoint(tmp_path)
    root = str(tmp_path / "store") if kind == "local" else f"file://{tmp_path}/store"
    n = 16
    pool = ProcessPoolExecutor(4) if kind == "local" else ThreadPoolExecutor(8)
    with pool:
        versions = list(pool.map(_export, [(ckpt, root)] * n))
    assert sorted(versions) == list(range(1, n + 1)), versions  # none failed, none shared a version
    listed = store.list_models(root)
    assert [m["version"] for m in listed] == list(range(1, n + 1))
    for v in (1, n):
        assert load_checkpoint(store.resolve(root, "same-name", v).uri).meta.family == "mlp"  # sha256 checked
    if kind == "local":
        assert not list((tmp_path / "store" / "same-name").glob(".incoming-*"))  # no staging left


def test_a_killed_exports_leftover_never_blocks_later_exports(tmp_path):
    ckpt = _checkpoint(tmp_path)
    root = tmp_path / "store"
    store.export(ckpt, str(root), "m")
    # what a killed export leaves: a staging directory, half-written (an old and a fresh one)
    for leftover, age in [(".incoming-2", 2 * catalog.STALE_STAGING_S), (".incoming-deadbeef", 0)]:
        (root / "m" / leftover).mkdir()
        (root / "m" / leftover / "model.pt").write_bytes(b"half")
        os.utime(root / "m" / leftover, (time.time() - age, time.time() - age))
    assert store.export(ckpt, str(root), "m")["version"] == 2
    assert store.export(ckpt, str(root), "m")["version"] == 3
    assert [m["version"] for m in store.list_models(str(root))] == [1, 2, 3]
    assert not (root / "m" / ".incoming-2").exists()  # the stale one was swept
    assert (root / "m" / ".incoming-deadbeef").exists()  # a recent one may be a live export: kept
    # an export that fails after staging removes its staging
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.pt").write_bytes(b"x")
    with pytest.raises(Exception):  # noqa: B017 - the checkpoint error type is the artifacts module's
        store.export(str(bad), str(root), "m")
    assert [m["version"] for m in store.list_models(str(root))] == [1, 2, 3]


def test_object_store_exports_claim_a_number_and_skip_one_still_uploading(tmp_path, s3):
    """The object-store path (no rename) on a real S3 endpoint (moto's server on loopback)."""
    import pyarrow.fs as pafs

    ckpt = _checkpoint(tmp_path)
    root = f"s3://{s3.bucket()}/models"
    fs, path = pafs.FileSystem.from_uri(root)
    assert store.export(ckpt, root, "m")["version"] == 1
    assert fs.get_file_info(f"{path}/m/1/.owner").type == pafs.FileType.File
    with fs.open_output_stream(f"{path}/m/2/.owner") as f:  # another export, still uploading
        f.write(b"another export")
    assert store.resolve(root, "m") == store.StoreVersion(root, "m", 1)  # 2 is not complete
    with pytest.raises(ValueError, match="version 2 of 'm' is not complete"):
        store.resolve(root, "m", 2)
    assert store.export(ckpt, root, "m")["version"] == 3  # the claimed number is skipped
    loaded = load_checkpoint(store.resolve(root, "m", 3).uri)  # downloaded, sha256-checked
    assert loaded.meta.family == "mlp" and loaded.path == f"{root}/m/3"
    store.set_alias(root, "m", "champion", 3)
    assert store.resolve(root, "m", "@champion").version == 3
    assert [e["version"] for e in store.list_models(root)] == [1, 3]


def test_a_truncated_optimizer_state_is_refused_and_published_models_carry_none(tmp_path):
    from modelfoundry.store.checkpoint import CheckpointError, verify

    torch.manual_seed(0)
    model = build_model("mlp", "tiny", input_shape=(1, 8, 8), output_dim=10)
    state = {"epoch": 1, "optimizer": {"w": torch.zeros(100)}}
    ckpt = write_checkpoint(tmp_path / "ckpt", model, dataset={}, metrics={}, train_state=state)
    assert verify(ckpt).state_sha256
    published = store.export(str(ckpt), str(tmp_path / "store"), "m")  # without state.pt
    assert verify(published["path"]).state_sha256 is None
    data = (ckpt / "state.pt").read_bytes()
    (ckpt / "state.pt").write_bytes(data[: len(data) // 2])  # what a full disk leaves
    with pytest.raises(CheckpointError, match="state.pt has sha256"):
        verify(ckpt)
    (ckpt / "state.pt").unlink()
    with pytest.raises(CheckpointError, match="state.pt is missing"):
        verify(ckpt)


def test_store_versions_parse_and_print_in_one_place_and_bad_ones_are_refused():
    v = store.StoreVersion("s3://bucket/models", "cnn-digits", 3)
    assert v.uri == "s3://bucket/models/cnn-digits/3" and str(v) == "cnn-digits:3"
    assert store.StoreVersion.from_uri(v.uri + "/") == v
    for bad in ("s3://bucket/models/cnn-digits/latest", "3", "models/cnn digits/1"):
        with pytest.raises(ValueError):
            store.StoreVersion.from_uri(bad)
    with pytest.raises(ValueError, match="positive integer"):
        store.StoreVersion("models", "m", 0)


def test_model_json_with_a_bad_field_or_an_unknown_codec_is_a_clear_error(tmp_path):
    import json

    from modelfoundry.store.checkpoint import CheckpointError, load_checkpoint, read_meta

    ckpt = _checkpoint(tmp_path)
    meta = json.loads((Path(ckpt) / "model.json").read_text())
    (Path(ckpt) / "model.json").write_text(json.dumps({**meta, "input_spec": {"shape": "wide"}}))
    with pytest.raises(CheckpointError, match="input_spec.shape"):
        read_meta(ckpt)
    (Path(ckpt) / "model.json").write_text(json.dumps({**meta, "quantization": {"scheme": "int3-magic"}}))
    with pytest.raises(ValueError, match="'int3-magic', which no installed weight codec reads"):
        load_checkpoint(ckpt)
