"""One local Ray cluster per test session (2 CPUs), with HOME and Ray's temp dir isolated."""

from __future__ import annotations

import os
import tempfile

import pytest

_SANDBOX = tempfile.mkdtemp(prefix="mf-tests-")


@pytest.fixture(scope="session")
def ray_cluster():
    os.environ["HOME"] = _SANDBOX
    os.environ.setdefault("RAY_TMPDIR", os.path.join(_SANDBOX, "ray"))
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.1"
    os.environ.pop("RAY_ADDRESS", None)
    import ray

    from modelfoundry.cluster import connect

    connect(num_cpus=2)
    yield ray
    ray.shutdown()
