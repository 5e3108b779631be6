"""The model store: checkpoints exported as <store>/<name>/<version>/ (a local directory or a URI).

A version is referred to as NAME (the latest), NAME:VERSION or NAME@ALIAS: aliases (champion,
challenger, any name) live in <store>/<name>/aliases.json beside the versions, with the history of
every move. The store is the source of truth for versions and aliases; the MLflow Model Registry
mirrors it (modelfoundry.tracking.mirror_registry).

A version directory is written under a hidden temporary name and renamed into place only once
complete, so a failed export never leaves a half-written version that `list`/`resolve` would see;
concurrent exports of one name get distinct versions (see export).
"""

from __future__ import annotations

import errno
import fcntl
import json
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from modelfoundry.artifacts import (
    META_FILE,
    MODEL_FILE,
    CheckpointError,
    library_versions,
    published_meta,
    verify,
)
from modelfoundry.config import config_sha256
from modelfoundry.storage import absolute, download_dir, filesystem, fsync_dir, fsync_tree, join, write_atomic

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")
ALIASES_FILE = "aliases.json"


def parse_ref(ref: str) -> tuple[str, str]:
    """NAME, NAME:VERSION or NAME@ALIAS -> (name, version, 'latest' or '@ALIAS'), as resolve takes them."""
    if "@" in ref:
        name, _, alias = ref.partition("@")
        return name, f"@{alias}"
    name, _, version = ref.partition(":")
    return name, version or "latest"


def check_alias(alias: str) -> None:
    if not ALIAS_RE.match(alias) or alias == "latest":
        raise ValueError(
            f"alias {alias!r} must start with a letter and hold 1-32 letters, digits, '_' or '-' (not 'latest')"
        )


def aliases(store: str, name: str) -> dict[str, int]:
    """The aliases of `name`: alias -> version."""
    return dict(_read_aliases(store, name)["aliases"])


def alias_history(store: str, name: str) -> list[dict[str, Any]]:
    """Every alias move of `name`, oldest first: {alias, version, previous, at}."""
    return list(_read_aliases(store, name)["history"])


def _read_aliases(store: str, name: str) -> dict[str, Any]:
    fs, root = filesystem(store)
    path = f"{root}/{name}/{ALIASES_FILE}"
    if fs.get_file_info(path).type != pafs.FileType.File:
        return {"aliases": {}, "history": []}
    with fs.open_input_stream(path) as f:
        data = json.loads(f.read())
    return {"aliases": {a: int(v) for a, v in data.get("aliases", {}).items()}, "history": data.get("history", [])}


def set_alias(store: str, name: str, alias: str, version: int | str | None) -> dict[str, Any]:
    """Point `alias` at `version` of `name` (None removes it); returns the move {alias, version,
    previous, at}. A local store serialises concurrent moves with a lock and replaces the file
    atomically; on an object store the last writer wins (serialise alias moves there)."""
    _check_name(name)
    check_alias(alias)
    if version is not None:
        version = int(resolve(store, name, version).rsplit("/", 1)[-1])  # a missing version fails here
    elif not versions(store, name):
        resolve(store, name)  # the unknown-model error
    fs, root = filesystem(store)
    with _alias_lock(fs, f"{root}/{name}"):
        data = _read_aliases(store, name)
        previous = data["aliases"].get(alias)
        if version is None and previous is None:
            raise ValueError(f"model {name!r} has no alias {alias!r}; it has {sorted(data['aliases'])}")
        if version is None:
            del data["aliases"][alias]
        else:
            data["aliases"][alias] = version
        move = {
            "alias": alias,
            "version": version,
            "previous": previous,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        data["history"].append(move)
        write_atomic(join(absolute(store), name, ALIASES_FILE), json.dumps(data, indent=2, sort_keys=True).encode())
    return move


class _alias_lock:
    def __init__(self, fs: pafs.FileSystem, directory: str) -> None:
        self.path = f"{directory}/.aliases.lock" if isinstance(fs, pafs.LocalFileSystem) else None

    def __enter__(self) -> None:
        if self.path:
            self.f = open(self.path, "a")  # noqa: SIM115
            fcntl.flock(self.f, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        if self.path:
            fcntl.flock(self.f, fcntl.LOCK_UN)
            self.f.close()


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


def _check_name(name: str) -> None:
    if not NAME_RE.match(name):
        raise ValueError(f"model name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")


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
    _check_name(name)
    with tempfile.TemporaryDirectory(prefix="mf-export-") as tmp:
        local = Path(download_dir(checkpoint_dir, f"{tmp}/src"))
        meta = verify(local)  # never publish a corrupt checkpoint
        staged = Path(tmp) / "staged"
        staged.mkdir()
        # the weights only: an FSDP run's shards and the optimizer state are not part of a published model
        shutil.copy2(local / MODEL_FILE, staged / MODEL_FILE)
        meta = published_meta(meta)
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


def read_version_meta(store: str, name: str, version: int) -> dict[str, Any]:
    """model.json of one version, read alone (never the weights beside it)."""
    path = join(absolute(store), name, str(version))
    fs, root = filesystem(store)
    try:
        with fs.open_input_stream(f"{root}/{name}/{version}/{META_FILE}") as f:
            meta = json.loads(f.read())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is not a checkpoint: {META_FILE} is missing") from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}/{META_FILE} cannot be read: {err}") from None
    if not isinstance(meta, dict) or "family" not in meta:
        raise CheckpointError(f"{path}/{META_FILE} is not a model.json")
    return meta


def entry(store: str, name: str, version: int) -> dict[str, Any]:
    path = join(absolute(store), name, str(version))
    meta = read_version_meta(store, name, version)
    return {
        "name": name,
        "version": version,
        "family": meta["family"],
        "dataset": meta.get("dataset", {}).get("name"),
        "metrics": meta.get("metrics", {}),
        "path": path,
        "lineage": meta.get("lineage"),
    }


def describe(store: str, ref: str) -> dict[str, Any]:
    """NAME, NAME:VERSION or NAME@ALIAS: its entry with the aliases that point at it, followed by
    its ancestors (a compressed model's parent, and that one's) as far as the store holds them."""
    chain: list[dict[str, Any]] = []
    name, version = parse_ref(ref)
    path = resolve(store, name, version)
    while path and len(chain) < 16:
        v = int(path.rstrip("/").rsplit("/", 1)[-1])
        e = entry(store, name, v)
        e["aliases"] = sorted(a for a, av in aliases(store, name).items() if av == v)
        chain.append(e)
        parent = (e.get("lineage") or {}).get("parent")
        if not parent:
            break
        name = parent["name"]
        try:
            path = resolve(store, name, parent["version"])
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
                e = entry(store, info.base_name, version)
            except CheckpointError:
                continue  # not a complete version
            e["aliases"] = sorted(a for a, v in named.items() if v == version)
            out.append(e)
    return out


def resolve(store: str, name: str, version: int | str | None = None) -> str:
    """The path/URI of `name` at `version` (latest when None or "latest"; "@ALIAS": the version
    the alias points at)."""
    _check_name(name)
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
    return join(absolute(store), name, str(v))


def names(store: str) -> list[str]:
    """The model names in the store (its directories), without reading any version."""
    fs, root = filesystem(store)
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory and NAME_RE.match(i.base_name))
