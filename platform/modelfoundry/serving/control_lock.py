"""One writer at a time for the cluster's declarative Serve config.

Serve's declarative API replaces the whole set of applications at once (`deploy_apps`), and it has
no conditional update: two processes that each read the set, change their app and write the set
back lose one change, and can delete an app the other just deployed. Every change the platform
makes (`foundry serve --traffic`, `foundry rollout`) is therefore a read-modify-write done while
holding this lease: a named, detached actor in the cluster (so processes on any machine share it),
granted to one owner at a time for at most `ttl_s` (a holder that dies frees it by expiry). The
read happens under the lease, so the write is a compare-and-set on exactly what was read.

Plain `serve deploy` does not take the lease: it replaces the whole set by design.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from collections.abc import Iterator

import ray

NAME = "modelfoundry-serve-control"
NAMESPACE = "modelfoundry"
TTL_S = 120.0  # a holder is expected to finish a read and a deploy_apps well within this
WAIT_S = 300.0  # how long a writer waits for the lease before it refuses


@ray.remote(num_cpus=0, max_restarts=-1)
class Lease:
    def __init__(self) -> None:
        self.owner: str | None = None
        self.until = 0.0

    def acquire(self, owner: str, ttl_s: float) -> tuple[bool, str | None, float]:
        """(granted, the holder, seconds it still holds it)."""
        now = time.monotonic()
        if self.owner is None or now >= self.until or self.owner == owner:
            self.owner, self.until = owner, now + ttl_s
            return True, owner, ttl_s
        return False, self.owner, self.until - now

    def release(self, owner: str) -> None:
        if self.owner == owner:
            self.owner = None


def _lease():
    return Lease.options(name=NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True).remote()


@contextlib.contextmanager
def held(what: str, wait_s: float = WAIT_S, ttl_s: float = TTL_S) -> Iterator[None]:
    """Hold the cluster's Serve-config lease for `what` (a short description for whoever waits)."""
    lease = _lease()
    owner = f"{what} by pid {os.getpid()} on {socket.gethostname()} ({uuid.uuid4().hex[:8]})"
    deadline = time.monotonic() + wait_s
    delay = 0.05
    while True:
        granted, holder, left = ray.get(lease.acquire.remote(owner, ttl_s))
        if granted:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"another change to this cluster's Serve apps holds the lock ({holder}, for up to {left:.0f} s "
                f"more); {what} did not run after waiting {wait_s:.0f} s: retry when it is done"
            )
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
    try:
        yield
    finally:
        ray.get(lease.release.remote(owner))
