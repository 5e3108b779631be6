"""Connecting to Ray: an in-process local cluster by default, an existing one with --address or
RAY_ADDRESS. The same YAML config runs on both."""

from __future__ import annotations

import logging
import os
from pathlib import Path


class _DropNoise(logging.Filter):
    """Ray Train 2.60 logs 20+ 'PlacementGroupCleaner: Failed to query' lines per run when the
    dashboard is off; they are harmless (see RAY260.md)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "PlacementGroupCleaner" not in record.getMessage()


def connect(address: str | None = None, num_cpus: int | None = None, quiet: bool = True) -> str:
    """ray.init on `address` (or RAY_ADDRESS), else start a local cluster. Returns a description."""
    import ray

    if ray.is_initialized():
        return "already connected"
    address = address or os.environ.get("RAY_ADDRESS")
    logging.getLogger("ray").addFilter(_DropNoise())
    if address:
        # ship the library to the cluster's workers (they may not have it installed)
        package = str(Path(__file__).resolve().parent)
        ray.init(address=address, runtime_env={"py_modules": [package]}, log_to_driver=True)
        return f"connected to Ray at {address}"
    # address="local": always a fresh cluster, never silently joining another one on this machine
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        logging_level=logging.WARNING if quiet else logging.INFO,
    )
    return f"started a local Ray cluster ({int(ray.cluster_resources().get('CPU', 0))} CPUs)"
