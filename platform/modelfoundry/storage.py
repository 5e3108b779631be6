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


def download_dir(location: str, local_dir: str) -> str:
    """Copy a directory from a URI to `local_dir`; a local path is returned as is."""
    if not is_uri(location):
        return absolute(location)
    fs, path = filesystem(location)
    pafs.copy_files(path, local_dir, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return local_dir


def upload_dir(local_dir: str, location: str) -> None:
    fs, path = filesystem(location)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(local_dir, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
