"""Shared by tests that start Ray clusters of their own (a `ray start` head, or a CLI driver that
starts a local cluster) and must end exactly the processes they started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
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
