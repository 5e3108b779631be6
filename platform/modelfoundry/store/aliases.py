"""Aliases of a stored model (champion, challenger, any name): <store>/<name>/aliases.json, the
alias -> version map with the history of every move. `versions.set_alias` checks the version and
calls `record_move`; reading needs nothing above this module."""

from __future__ import annotations

import fcntl
import json
import time
from typing import Any

import pyarrow.fs as pafs

from modelfoundry.storage import absolute, filesystem, join, write_atomic

ALIASES_FILE = "aliases.json"


def aliases(store: str, name: str) -> dict[str, int]:
    """The aliases of `name`: alias -> version."""
    return dict(_read(store, name)["aliases"])


def alias_history(store: str, name: str) -> list[dict[str, Any]]:
    """Every alias move of `name`, oldest first: {alias, version, previous, at}."""
    return list(_read(store, name)["history"])


def _read(store: str, name: str) -> dict[str, Any]:
    fs, root = filesystem(store)
    path = f"{root}/{name}/{ALIASES_FILE}"
    if fs.get_file_info(path).type != pafs.FileType.File:
        return {"aliases": {}, "history": []}
    with fs.open_input_stream(path) as f:
        data = json.loads(f.read())
    return {"aliases": {a: int(v) for a, v in data.get("aliases", {}).items()}, "history": data.get("history", [])}


def record_move(store: str, name: str, alias: str, version: int | None) -> dict[str, Any]:
    """Point `alias` at `version` (already checked to exist; None removes it) and append the move
    to the history. A local store serialises concurrent moves with a lock and replaces the file
    atomically; on an object store the last writer wins (serialise alias moves there)."""
    fs, root = filesystem(store)
    with _alias_lock(fs, f"{root}/{name}"):
        data = _read(store, name)
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
