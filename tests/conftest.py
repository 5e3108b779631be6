"""One local Ray cluster per test session (2 CPUs), with HOME and Ray's temp dir isolated."""

from __future__ import annotations

import os
import sys
import tempfile

import pytest

_SANDBOX = tempfile.mkdtemp(prefix="mf-tests-")
# every tracked run of the session in one MLflow store (one schema migration, not one per run);
# the tracking tests name their own
os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{_SANDBOX}/mlflow.db")

# model families from outside the platform, importable by this process and by every Ray process
# the tests start (they inherit PYTHONPATH), as a user's installed package would be: the shipped
# example (docs/examples/custom_family) and one defined here, a family without stages()
EXAMPLE_FAMILY_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "examples", "custom_family"
)
TEST_FAMILY_DIR = os.path.join(_SANDBOX, "families")
PLAIN_FAMILY = """
from torch import nn
from modelfoundry.models import FamilyConfig, FamilySpec
from modelfoundry.models.spec import NonEmpty, PosInt


class WideConfig(FamilyConfig):
    input_shape: NonEmpty[PosInt] = (1, 8, 8)
    output_dim: PosInt = 10
    width: PosInt = 32


class Wide(nn.Module):  # no stages(): served whole, never split
    def __init__(self, config: WideConfig) -> None:
        super().__init__()
        self.config = config
        n = 1
        for d in config.input_shape:
            n *= d
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(n, config.width), nn.ReLU(), nn.Linear(config.width, config.output_dim))

    def forward(self, x):
        return self.net(x)


SPEC = FamilySpec("wide", Wide, WideConfig, {"tiny": {"width": 16}, "default": {"width": 32}}, inputs=frozenset({"image", "table"}))
NOT_A_SPEC = {"name": "wide"}
"""
os.makedirs(os.path.join(TEST_FAMILY_DIR, "mfx_plain"), exist_ok=True)
with open(os.path.join(TEST_FAMILY_DIR, "mfx_plain", "__init__.py"), "w") as _f:
    _f.write(PLAIN_FAMILY)
# and registered by name, as `pip install` registers an entry point (a dist-info on the path)
os.makedirs(os.path.join(TEST_FAMILY_DIR, "mfx_plain-0.1.dist-info"), exist_ok=True)
for _name, _text in (
    ("METADATA", "Metadata-Version: 2.1\nName: mfx-plain\nVersion: 0.1\n"),
    ("entry_points.txt", "[modelfoundry.families]\nwide = mfx_plain:SPEC\n"),
):
    with open(os.path.join(TEST_FAMILY_DIR, "mfx_plain-0.1.dist-info", _name), "w") as _f:
        _f.write(_text)
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (EXAMPLE_FAMILY_DIR, TEST_FAMILY_DIR, os.environ.get("PYTHONPATH")) if p
)
sys.path[:0] = [EXAMPLE_FAMILY_DIR, TEST_FAMILY_DIR]

# modules whose tests start Ray clusters of their own (a CLI driver, `ray start` nodes)
CLUSTER_MODULES = {"test_cluster_start", "test_multinode", "test_quickstart", "test_submit", "test_training_faults"}


def pytest_collection_modifyitems(config, items):
    """`slow`: every test on a Ray cluster (the session one or its own). `pytest -m "not slow"`
    runs the rest, the unit tests, in under a minute. A unit test that starts a `foundry` process
    of its own is marked slow by hand."""
    for item in items:
        if "ray_cluster" in getattr(item, "fixturenames", ()) or item.module.__name__ in CLUSTER_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def ray_cluster():
    os.environ["HOME"] = _SANDBOX
    os.environ.setdefault("RAY_TMPDIR", os.path.join(_SANDBOX, "ray"))
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.1"
    os.environ.pop("RAY_ADDRESS", None)
    from s3server import s3_server

    s3_server()  # its AWS_* variables before the cluster starts: workers and replicas inherit them
    import ray

    from modelfoundry.cluster import connect

    connect(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3():
    """An S3-compatible server on 127.0.0.1 (tests/s3server.py); the same one the session's Ray
    cluster reaches."""
    from s3server import s3_server

    server = s3_server()
    yield server


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (Debian's chromium, which .ci/run installs) driven by Playwright."""
    import shutil

    from playwright.sync_api import expect, sync_playwright

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "the browser tests need Chromium: apt-get install chromium (.ci/run installs it)"
    expect.set_options(timeout=120_000)  # a condition to wait for, on a busy machine; not a time limit
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=exe,
            args=["--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
        )  # fmt: skip
        yield b
        b.close()
