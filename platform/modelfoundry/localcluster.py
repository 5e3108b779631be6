"""A multi-node Ray cluster on one machine, for tests and demos: a head plus N worker nodes
(`ray.cluster_utils.Cluster`), each node with its own CPUs and optional custom resources. The
same rules as the embedded cluster: every node on 127.0.0.1, token auth on (the token created
0600 in a 0700 directory before any node starts), no usage stats."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any


@dataclass
class LocalCluster:
    head_cpus: int = 0
    worker_cpus: list[int] = field(default_factory=lambda: [1, 1])
    worker_resources: list[dict[str, float]] | None = None
    cluster: Any = None
    token_file: str = ""
    workers: list[Any] = field(default_factory=list)

    def start(self) -> LocalCluster:
        """Start the head and the workers (from the main thread: Ray requires it for add_node)."""
        from ray.cluster_utils import Cluster

        from modelfoundry.cluster import (
            USAGE_STATS_ENV,
            apply_serve_env,
            enable_token_auth,
            free_port,
            keep_on_loopback,
            provision_token,
        )

        apply_serve_env()  # as connect() does for the single-node cluster
        keep_on_loopback()
        os.environ.setdefault(USAGE_STATS_ENV, "0")
        self.token_file = str(provision_token())
        enable_token_auth()

        # its own dashboard port: another cluster on this machine may hold 8265, and without a
        # dashboard the State API (and Ray Train's placement-group cleaner) has nothing to ask
        self.cluster = Cluster(
            initialize_head=True, head_node_args={"num_cpus": self.head_cpus, "dashboard_port": free_port()}
        )
        for i, cpus in enumerate(self.worker_cpus):
            res = (self.worker_resources or [{}] * len(self.worker_cpus))[i]
            self.workers.append(self.cluster.add_node(num_cpus=cpus, resources=res))
        self.cluster.wait_for_nodes()
        return self

    @property
    def address(self) -> str:
        return self.cluster.address

    def add_worker(self, cpus: int, resources: dict[str, float] | None = None) -> int:
        """One more worker node (from the main thread); its index for remove_worker."""
        self.workers.append(self.cluster.add_node(num_cpus=cpus, resources=resources or {}))
        self.cluster.wait_for_nodes()
        return len(self.workers) - 1

    def remove_worker(self, index: int, graceful: bool = True) -> None:
        """The node's processes stopped; graceful=False SIGKILLs them (its raylet among them), as
        when a machine is lost."""
        self.cluster.remove_node(self.workers[index], allow_graceful=graceful)

    def shutdown(self) -> None:
        if self.cluster is not None:
            self.cluster.shutdown()
