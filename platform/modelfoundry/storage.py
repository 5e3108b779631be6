"""Local paths and pyarrow filesystem URIs (s3://, gs://, file://) behind one small API."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.fs as pafs


def is_uri(location: str) -> bool:
    return "://" in location


def absolute(location: str) -> str:
    """A URI unchanged, a local path made absolute (so every Ray process sees the same place)."""
    return location if is_uri(location) else str(Path(location).expanduser().resolve())


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    if is_uri(location):
        try:
            return pafs.FileSystem.from_uri(location)
        except (OSError, ValueError) as err:  # ArrowInvalid is a ValueError
            raise ValueError(f"storage URI {location!r} is not usable: {err}") from None
    return pafs.LocalFileSystem(), absolute(location)


def checkpoint_location(checkpoint) -> str:
    """Where a Ray Train/Tune checkpoint lives, as a location this module opens: Ray reports a
    (filesystem, path) pair whose path has no scheme on an object store ("bucket/runs/..."), which
    read as a local path would name a directory that does not exist."""
    fs, path = checkpoint.filesystem, checkpoint.path
    if fs is None or isinstance(fs, pafs.LocalFileSystem):
        return path
    scheme = {"gcs": "gs"}.get(fs.type_name, fs.type_name)
    return f"{scheme}://{path}"


def join(location: str, *parts: str) -> str:
    return "/".join([location.rstrip("/"), *parts])


def check_writable(location: str) -> None:
    """Create `location` and write + delete a probe file; ValueError naming it if that fails."""
    fs, path = filesystem(location)
    probe = f"{path}/.write-probe-{os.getpid()}"
    try:
        fs.create_dir(path, recursive=True)
        with fs.open_output_stream(probe) as f:
            f.write(b"ok")
        fs.delete_file(probe)
    except (OSError, ValueError) as err:
        raise ValueError(f"storage {location!r} cannot be written: {err}") from None


def fsync_dir(path: str | Path) -> None:
    """Make a rename or a new entry in a local directory durable (POSIX: fsync the directory)."""
    fd = os.open(str(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | Path) -> None:
    """fsync every file and directory under `root` (before it is renamed into place)."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(Path(dirpath) / name, "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(dirpath)


def write_atomic(location: str, data: bytes) -> None:
    """Replace one file whole. Local disk: a temp file beside it, fsync, rename over it, fsync of
    the directory (a crash leaves the old file or the new one, never a torn one). A URI: one put,
    which object stores apply whole."""
    fs, path = filesystem(location)
    if not isinstance(fs, pafs.LocalFileSystem):
        with fs.open_output_stream(path) as f:
            f.write(data)
        return
    target = Path(path)
    tmp = target.parent / f".{target.name}.{os.getpid()}.{os.urandom(6).hex()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(target.parent)


def download_dir(location: str, local_dir: str) -> str:
    """Copy a directory from a URI to `local_dir`; a local path is returned as is."""
    if not is_uri(location):
        return absolute(location)
    fs, path = filesystem(location)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    Path(local_dir).mkdir(parents=True, exist_ok=True)
    for info in infos:  # a directory on an object store is a key prefix: each file is fetched alone
        if info.type != pafs.FileType.File:
            continue
        target = Path(local_dir, info.path[len(path.rstrip("/")) + 1 :])
        target.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(info.path) as src, open(target, "wb") as dst:
            while chunk := src.read(1 << 22):
                dst.write(chunk)
    return local_dir


def upload_dir(local_dir: str, location: str) -> None:
    fs, path = filesystem(location)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(local_dir, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
