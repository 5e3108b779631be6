"""The model store: checkpoints exported as <store>/<name>/<version>/ (a local directory or a URI).

A version directory is written under a hidden temporary name and renamed into place only once
complete, so a failed export never leaves a half-written version that `list`/`resolve` would see;
concurrent exports of one name get distinct versions (see export).
"""

from __future__ import annotations

import errno
import json
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from modelfoundry.artifacts import CheckpointError, consolidate, read_meta, verify
from modelfoundry.storage import absolute, download_dir, filesystem, join

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def parse_ref(ref: str) -> tuple[str, str]:
    """NAME or NAME:VERSION -> (name, version or 'latest'), as resolve takes them."""
    name, _, version = ref.partition(":")
    return name, version or "latest"


def _check_name(name: str) -> None:
    if not NAME_RE.match(name):
        raise ValueError(f"model name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")


def _versions(store: str, name: str) -> list[int]:
    fs, root = filesystem(store)
    infos = fs.get_file_info(pafs.FileSelector(f"{root}/{name}", allow_not_found=True))
    return sorted(int(i.base_name) for i in infos if i.type == pafs.FileType.Directory and i.base_name.isdigit())


STAGING_PREFIX = ".incoming-"
STALE_STAGING_S = 3600  # a staging directory this old belongs to an export that was killed
ALLOCATION_ATTEMPTS = 50


def export(checkpoint_dir: str, store: str, name: str, extra_meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Copy a verified checkpoint to the next version of `name`; returns its store entry.

    Concurrent exports of one name each get their own version: a local store stages the files in
    a directory of its own and renames it onto the next free version number, which fails when
    another export took that number first (rename(2) never replaces a non-empty directory): then it
    tries the next one. Staging is removed on every path, and a killed export's leftover never
    blocks a later one (its name is unique; leftovers older than an hour are swept)."""
    _check_name(name)
    with tempfile.TemporaryDirectory(prefix="mf-export-") as tmp:
        local = Path(download_dir(checkpoint_dir, f"{tmp}/src"))
        meta = verify(local)  # never publish a corrupt checkpoint
        staged = Path(tmp) / "staged"
        staged.mkdir()
        if "sharded" in meta:  # an FSDP run's checkpoint: its model shards become one model.pt
            meta = consolidate(local, meta, staged)
        else:
            shutil.copy2(local / "model.pt", staged / "model.pt")  # optimizer state is not part of a published model
        meta.pop("state_sha256", None)
        meta.update(extra_meta or {})  # e.g. a Pareto-front member's objectives
        (staged / "model.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        fs, root = filesystem(store)
        fs.create_dir(f"{root}/{name}", recursive=True)
        if isinstance(fs, pafs.LocalFileSystem):  # a path or a file:// URI: atomic rename
            version = _publish_local(staged, Path(root) / name)
        else:
            version = _publish_uri(staged, store, name)
    return entry(store, name, version)


def _publish_local(staged: Path, parent: Path) -> int:
    _sweep_stale_staging(parent)
    hidden = parent / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
    try:
        shutil.copytree(staged, hidden)
        for _ in range(ALLOCATION_ATTEMPTS):
            version = (_versions(str(parent.parent), parent.name) or [0])[-1] + 1
            try:
                hidden.rename(parent / str(version))  # atomic; refuses a version another export took
                return version
            except OSError as err:
                if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
        raise RuntimeError(f"could not allocate a version of {parent.name} in {ALLOCATION_ATTEMPTS} attempts")
    finally:
        shutil.rmtree(hidden, ignore_errors=True)  # gone already when the rename succeeded


def _sweep_stale_staging(parent: Path) -> None:
    now = time.time()
    for leftover in parent.glob(f"{STAGING_PREFIX}*"):
        try:
            if now - leftover.stat().st_mtime > STALE_STAGING_S:
                shutil.rmtree(leftover, ignore_errors=True)
        except FileNotFoundError:
            continue


def _publish_uri(staged: Path, store: str, name: str) -> int:
    """Object stores have no rename and pyarrow offers no conditional put: a version number is
    claimed with an owner marker written and read back before any file is uploaded, numbers that
    carry a marker are skipped, and model.json (what makes a version visible to list/resolve) is
    uploaded last. This narrows, but cannot close, the race between two exports of one name that
    claim the same number within one round trip: serialize exports of one name to s3:// or gs://
    (docs/security.md)."""
    fs, root = filesystem(store)
    token = uuid.uuid4().hex.encode()
    for _ in range(ALLOCATION_ATTEMPTS):
        version = (_versions(store, name) or [0])[-1] + 1
        vdir = f"{root}/{name}/{version}"
        marker = f"{vdir}/.owner"
        if fs.get_file_info(marker).type != pafs.FileType.NotFound:
            continue  # claimed by another export (perhaps still uploading): take the next number
        fs.create_dir(vdir, recursive=True)
        with fs.open_output_stream(marker) as f:
            f.write(token)
        with fs.open_input_stream(marker) as f:
            if f.read() != token:
                continue
        with fs.open_output_stream(f"{vdir}/model.pt") as f:
            f.write((staged / "model.pt").read_bytes())
        with fs.open_output_stream(f"{vdir}/model.json") as f:
            f.write((staged / "model.json").read_bytes())
        return version
    raise RuntimeError(f"could not allocate a version of {name} in {ALLOCATION_ATTEMPTS} attempts")


def entry(store: str, name: str, version: int) -> dict[str, Any]:
    path = join(absolute(store), name, str(version))
    with tempfile.TemporaryDirectory(prefix="mf-meta-") as tmp:
        meta = read_meta(download_dir(path, tmp))
    return {
        "name": name,
        "version": version,
        "family": meta["family"],
        "dataset": meta.get("dataset", {}).get("name"),
        "metrics": meta.get("metrics", {}),
        "path": path,
    }


def list_models(store: str) -> list[dict[str, Any]]:
    fs, root = filesystem(store)
    names = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    out = []
    for info in sorted(names, key=lambda i: i.base_name):
        if info.type != pafs.FileType.Directory or not NAME_RE.match(info.base_name):
            continue
        for version in _versions(store, info.base_name):
            try:
                out.append(entry(store, info.base_name, version))
            except CheckpointError:
                continue  # not a complete version
    return out


def resolve(store: str, name: str, version: int | str | None = None) -> str:
    """The path/URI of `name` at `version` (latest when None or "latest")."""
    _check_name(name)
    versions = _versions(store, name)
    if not versions:
        known = sorted({m["name"] for m in list_models(store)})
        raise ValueError(f"model {name!r} is not in the store {store!r}; it holds {known}")
    if version in (None, "latest"):  # the newest complete one (an upload to a URI store may be under way)
        fs, root = filesystem(store)
        done = [v for v in versions if fs.get_file_info(f"{root}/{name}/{v}/model.json").type == pafs.FileType.File]
        if not done:
            raise ValueError(f"model {name!r} in the store {store!r} has no complete version yet")
        v = done[-1]
    else:
        try:
            v = int(version)
        except (TypeError, ValueError):
            raise ValueError(f"version {version!r} must be an integer or 'latest'") from None
        if v not in versions:
            raise ValueError(f"model {name!r} has no version {v}; it has {versions}")
    return join(absolute(store), name, str(v))
