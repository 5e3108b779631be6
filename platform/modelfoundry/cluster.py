"""Connecting to Ray: an in-process local cluster by default, an existing one with --address or
RAY_ADDRESS. The same YAML config runs on both."""

from __future__ import annotations

import logging
import os


def connect(address: str | None = None, num_cpus: int | None = None, quiet: bool = True) -> str:
    """ray.init on `address` (or RAY_ADDRESS), else start a local cluster. Returns a description."""
    import ray

    if ray.is_initialized():
        return "already connected"
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        # the cluster's nodes must import modelfoundry: installed there (cluster.yaml does), or
        # through the job's runtime_env (`foundry submit` uploads the tree with PYTHONPATH set)
        ray.init(address=address, log_to_driver=True)
        return f"connected to Ray at {address}"
    # address="local": always a fresh cluster, never silently joining another one on this machine.
    # The dashboard (on 127.0.0.1) stays on: Ray Train's PlacementGroupCleaner asks the State API
    # (served by the dashboard) whether a run's controller is gone; without it the placement groups
    # of runs stopped from outside (trials that ASHA stops) are never freed and later work starves.
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        logging_level=logging.WARNING if quiet else logging.INFO,
    )
    return f"started a local Ray cluster ({int(ray.cluster_resources().get('CPU', 0))} CPUs)"
