"""Shared by tests that start Ray clusters of their own (a `ray start` head, or a CLI driver that
starts a local cluster) and must end exactly the processes they started."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil


def kill_matching(text: str) -> None:
    """SIGKILL every process whose command line holds `text` (a temp dir only this test uses)."""
    mine = [p for p in psutil.process_iter(["pid", "cmdline"]) if text in " ".join(p.info["cmdline"] or [])]
    for p in mine:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(mine, timeout=30)


def kill_cluster(ray_tmp: str) -> None:
    """SIGKILL every process of the local cluster a driver started with RAY_TMPDIR=ray_tmp (Ray's
    workers are not in the driver's process group: left alone they train on for a second or two
    until they notice their GCS is gone) and wait until they are gone."""

    def ours(p: psutil.Process) -> bool:
        try:
            return p.environ().get("RAY_TMPDIR") == ray_tmp
        except (psutil.Error, OSError):
            return False

    procs = [p for p in psutil.process_iter() if ours(p)]
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=60)


def driver_env(home: Path, prefix: str) -> tuple[dict[str, str], str]:
    """An environment for a `foundry` driver that starts its own local cluster: its own HOME and a
    short RAY_TMPDIR (Ray's socket paths under it must stay within AF_UNIX's 107 bytes)."""
    ray_tmp = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    env = {**os.environ, "HOME": str(home), "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)  # the session's cluster: this driver starts its own
    return env, ray_tmp


def foundry_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "modelfoundry.cli", *args]


def kill_driver_when(cmd: list[str], env: dict[str, str], log: Path, ready: Callable[[], bool]) -> None:
    """Run a driver until `ready()` (polled every 0.05 s, at most 10 minutes), then SIGKILL it and
    every process of the local cluster it started, as when the machine running them fails."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 600
        try:
            while time.monotonic() < deadline and not ready() and proc.poll() is None:
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # the driver and its process group
            kill_cluster(env["RAY_TMPDIR"])
            proc.wait()


@contextlib.contextmanager
def kill_a_train_worker_when(ready: Callable[[], bool], timeout_s: float = 300):
    """While the body runs: once `ready()`, SIGKILL one Ray Train worker process. Yields the list
    of killed pids (filled by the time the body has returned)."""
    from ray.util.state import list_actors

    killed: list[int] = []

    def killer() -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not ready():
            time.sleep(0.05)
        workers = [
            a for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000) if "RayTrainWorker" in a.class_name
        ]
        if workers:
            os.kill(workers[-1].pid, signal.SIGKILL)
            killed.append(workers[-1].pid)

    t = threading.Thread(target=killer)
    t.start()
    try:
        yield killed
    finally:
        t.join()
