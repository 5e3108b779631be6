"""The model store: checkpoints exported as <store>/<name>/<version>/ (a local directory or a URI).

A version directory is written under a hidden temporary name and renamed into place only once
complete, so a failed export never leaves a half-written version that `list`/`resolve` would see.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from modelfoundry.artifacts import CheckpointError, read_meta, verify
from modelfoundry.storage import absolute, download_dir, filesystem, is_uri, join, upload_dir

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _check_name(name: str) -> None:
    if not NAME_RE.match(name):
        raise ValueError(f"model name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")


def _versions(store: str, name: str) -> list[int]:
    fs, root = filesystem(store)
    infos = fs.get_file_info(pafs.FileSelector(f"{root}/{name}", allow_not_found=True))
    return sorted(int(i.base_name) for i in infos if i.type == pafs.FileType.Directory and i.base_name.isdigit())


def export(checkpoint_dir: str, store: str, name: str, extra_meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Copy a verified checkpoint to the next version of `name`; returns its store entry."""
    _check_name(name)
    with tempfile.TemporaryDirectory(prefix="mf-export-") as tmp:
        local = Path(download_dir(checkpoint_dir, f"{tmp}/src"))
        verify(local)  # never publish a corrupt checkpoint
        staged = Path(tmp) / "staged"
        staged.mkdir()
        for f in ("model.pt", "model.json"):  # optimizer state is not part of a published model
            shutil.copy2(local / f, staged / f)
        fs, root = filesystem(store)
        fs.create_dir(f"{root}/{name}", recursive=True)
        version = (_versions(store, name) or [0])[-1] + 1
        target = f"{root}/{name}/{version}"
        if is_uri(store):  # object stores have no rename: model.json is uploaded last by copy order
            upload_dir(str(staged), join(store, name, str(version)))
        else:
            hidden = f"{root}/{name}/.incoming-{version}"
            shutil.copytree(staged, hidden)
            Path(hidden).rename(target)  # atomic on one filesystem; fails if version was taken
    return entry(store, name, version)


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
    if version in (None, "latest"):
        v = versions[-1]
    else:
        try:
            v = int(version)
        except (TypeError, ValueError):
            raise ValueError(f"version {version!r} must be an integer or 'latest'") from None
        if v not in versions:
            raise ValueError(f"model {name!r} has no version {v}; it has {versions}")
    return join(absolute(store), name, str(v))
