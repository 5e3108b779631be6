"""A multi-node Ray cluster on one machine, for tests and demos: a head plus N worker nodes
(`ray.cluster_utils.Cluster`), each node with its own CPUs and optional custom resources."""

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
    workers: list[Any] = field(default_factory=list)

    def start(self) -> LocalCluster:
        """Start the head and the workers (from the main thread: Ray requires it for add_node)."""
        from ray.cluster_utils import Cluster

        from modelfoundry.cluster import serve_env

        for key, value in serve_env().items():  # as connect() does for the single-node cluster
            os.environ.setdefault(key, value)

        self.cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": self.head_cpus})
        for i, cpus in enumerate(self.worker_cpus):
            res = (self.worker_resources or [{}] * len(self.worker_cpus))[i]
            self.workers.append(self.cluster.add_node(num_cpus=cpus, resources=res))
        self.cluster.wait_for_nodes()
        return self

    @property
    def address(self) -> str:
        return self.cluster.address

    def remove_worker(self, index: int) -> None:
        self.cluster.remove_node(self.workers[index])

    def shutdown(self) -> None:
        if self.cluster is not None:
            self.cluster.shutdown()
