"""Versions in the model store: checkpoints exported as <store>/<name>/<version>/ (a local
directory or a URI), listed, resolved and described.

A version directory is written under a hidden temporary name and renamed into place only once
complete, so a failed export never leaves a half-written version that `list`/`resolve` would see;
concurrent exports of one name get distinct versions (see export).
"""

from __future__ import annotations

import errno
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from modelfoundry.config_flat import config_sha256
from modelfoundry.storage import download_dir, filesystem, fsync_dir, fsync_tree
from modelfoundry.store.aliases import aliases, record_move
from modelfoundry.store.checkpoint import MODEL_FILE, library_versions, read_meta, verify
from modelfoundry.store.meta import META_FILE, CheckpointError
from modelfoundry.store.refs import NAME_RE, StoreVersion, check_alias, check_name, parse_ref


def set_alias(store: str, name: str, alias: str, version: int | str | None) -> dict[str, Any]:
    """Point `alias` at `version` of `name` (None removes it); returns the move {alias, version,
    previous, at} (store/aliases.py)."""
    check_name(name)
    check_alias(alias)
    if version is not None:
        version = resolve(store, name, version).version  # a missing version fails here
    elif not versions(store, name):
        resolve(store, name)  # the unknown-model error
    return record_move(store, name, alias, version)


def lineage_record(config: dict[str, Any], **links: Any) -> dict[str, Any]:
    """What a version came from: the job config and its hash, the dataset and its split seed, the
    library versions, and the links given (run, sweep, trial, parent, tracking run id)."""
    data = config.get("data") or {}
    return {
        "config": config,
        "config_sha256": config_sha256(config),
        "dataset": data.get("dataset"),
        "split_seed": data.get("seed"),
        "versions": library_versions(),
        **{k: v for k, v in links.items() if v is not None},
    }


def versions(store: str, name: str) -> list[int]:
    """The version numbers of `name` in the store (directories; an upload may be under way in the newest)."""
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
    check_name(name)
    with tempfile.TemporaryDirectory(prefix="mf-export-") as tmp:
        local = Path(download_dir(checkpoint_dir, f"{tmp}/src"))
        meta = verify(local)  # never publish a corrupt checkpoint
        staged = Path(tmp) / "staged"
        staged.mkdir()
        # the weights only: an FSDP run's shards and the optimizer state are not part of a published model
        shutil.copy2(local / MODEL_FILE, staged / MODEL_FILE)
        meta = meta.published().updated(**(extra_meta or {}))  # e.g. a Pareto-front member's objectives
        (staged / META_FILE).write_text(meta.to_json())
        fs, root = filesystem(store)
        fs.create_dir(f"{root}/{name}", recursive=True)
        if isinstance(fs, pafs.LocalFileSystem):  # a path or a file:// URI: atomic rename
            version = _publish_local(staged, Path(root) / name)
        else:
            version = _publish_uri(staged, store, name)
    return entry(StoreVersion(store, name, version))


def _publish_local(staged: Path, parent: Path) -> int:
    _sweep_stale_staging(parent)
    hidden = parent / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
    try:
        shutil.copytree(staged, hidden)
        fsync_tree(hidden)  # on disk before it becomes visible: a crash never publishes torn files
        for _ in range(ALLOCATION_ATTEMPTS):
            version = (versions(str(parent.parent), parent.name) or [0])[-1] + 1
            try:
                hidden.rename(parent / str(version))  # atomic; refuses a version another export took
                fsync_dir(parent)
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
        version = (versions(store, name) or [0])[-1] + 1
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


def entry(version: StoreVersion) -> dict[str, Any]:
    """What `foundry models` prints about one version (JSON)."""
    meta = read_meta(version.uri)  # alone: never the weights beside it
    return {
        "name": version.name,
        "version": version.version,
        "family": meta.family,
        "dataset": meta.dataset_name,
        "metrics": meta.metrics,
        "path": version.uri,
        "lineage": meta.lineage,
    }


def describe(store: str, ref: str) -> dict[str, Any]:
    """NAME, NAME:VERSION or NAME@ALIAS: its entry with the aliases that point at it, followed by
    its ancestors (a compressed model's parent, and that one's) as far as the store holds them."""
    chain: list[dict[str, Any]] = []
    current: StoreVersion | None = resolve(store, *parse_ref(ref))
    while current is not None and len(chain) < 16:
        e = entry(current)
        e["aliases"] = sorted(a for a, av in aliases(store, current.name).items() if av == current.version)
        chain.append(e)
        parent = (e.get("lineage") or {}).get("parent")
        if not parent:
            break
        try:
            current = resolve(store, parent["name"], parent["version"])
        except ValueError:  # the parent lives in another store, or was removed
            break
    return {"ref": ref, "chain": chain}


def list_models(store: str) -> list[dict[str, Any]]:
    fs, root = filesystem(store)
    names = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    out = []
    for info in sorted(names, key=lambda i: i.base_name):
        if info.type != pafs.FileType.Directory or not NAME_RE.match(info.base_name):
            continue
        named = aliases(store, info.base_name)
        for version in versions(store, info.base_name):
            try:
                e = entry(StoreVersion(store, info.base_name, version))
            except CheckpointError:
                continue  # not a complete version
            e["aliases"] = sorted(a for a, v in named.items() if v == version)
            out.append(e)
    return out


def resolve(store: str, name: str, version: int | str | None = None) -> StoreVersion:
    """`name` at `version` (latest when None or "latest"; "@ALIAS": the version the alias points
    at), a complete version in the store; ValueError naming what is missing."""
    check_name(name)
    have = versions(store, name)
    if not have:  # the names only (directory listing): nothing is downloaded to say what is missing
        known = names(store)
        shown = known[:20] + ([f"... {len(known) - 20} more"] if len(known) > 20 else [])
        raise ValueError(f"model {name!r} is not in the store {store!r}; it holds {shown}")
    if isinstance(version, str) and version.startswith("@"):
        alias = version[1:]
        check_alias(alias)
        known = aliases(store, name)
        if alias not in known:
            raise ValueError(f"model {name!r} has no alias {alias!r}; it has {sorted(known) or 'none'}")
        version = known[alias]
    if version in (None, "latest"):  # the newest complete one (an upload to a URI store may be under way)
        fs, root = filesystem(store)
        done = [v for v in have if fs.get_file_info(f"{root}/{name}/{v}/model.json").type == pafs.FileType.File]
        if not done:
            raise ValueError(f"model {name!r} in the store {store!r} has no complete version yet")
        v = done[-1]
    else:
        try:
            v = int(version)
        except (TypeError, ValueError):
            raise ValueError(f"version {version!r} must be an integer, 'latest' or @ALIAS") from None
        if v not in have:
            raise ValueError(f"model {name!r} has no version {v}; it has {have}")
        fs, root = filesystem(store)
        if fs.get_file_info(f"{root}/{name}/{v}/{META_FILE}").type != pafs.FileType.File:
            raise ValueError(
                f"version {v} of {name!r} is not complete (its upload is under way or failed): "
                "it cannot be served, aliased or exported"
            )
    return StoreVersion(store, name, v)


def names(store: str) -> list[str]:
    """The model names in the store (its directories), without reading any version."""
    fs, root = filesystem(store)
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory and NAME_RE.match(i.base_name))
