"""cluster.yaml's node commands, run the way the cluster launcher runs them: a head from a clean
HOME provisions the token and starts with token auth; the token reaches a worker the way
cluster_synced_files copies it (rsync -a from the head); the worker checks it and joins. Both on
127.0.0.1, stopped by killing exactly the processes they started."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import psutil
import yaml

from cluster_procs import kill_matching
from modelfoundry.cluster import free_port

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: str, home: Path, timeout: int = 180) -> subprocess.CompletedProcess:
    venv_bin = str(Path(sys.executable).parent)  # `python3` and `ray` in the commands: this environment's
    # a cloud node's environment: none of the Ray settings this test session runs with
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MODELFOUNDRY_"))}
    env.update(HOME=str(home), PATH=f"{venv_bin}:{os.environ['PATH']}")
    return subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, timeout=timeout, cwd=home)


STOP = "python3 -m modelfoundry.cluster stop"


def _start_command(commands: list[str]) -> str:
    """The node's `ray start` line; before it, only the node-scoped stop (for a reused node)."""
    (line,) = [c for c in commands if "ray start" in c]
    assert commands == [STOP, line]
    return line


def _logs(temp_dir: Path) -> str:
    """The tails of the node's Ray logs: what a failed start leaves to read."""
    logs = temp_dir / "session_latest" / "logs"
    parts = []
    for name in ("raylet.out", "raylet.err", "gcs_server.out", "gcs_server.err"):
        if (logs / name).exists():
            parts.append(f"--- {name}\n" + (logs / name).read_text(errors="replace")[-1500:])
    return "\n".join(parts)


def _start_node(cmd: str, home: Path, temp_dir: Path) -> None:
    """Start a node the way the launcher's NodeUpdater does, including its answer to a failed
    start: `ray start` gives a raylet 30 s (fixed in Ray) to register with the GCS, which a loaded
    2-core machine can miss; the launcher then reruns the node's commands (first the node-scoped
    stop). One rerun here; a start that fails twice fails the test with both outputs and logs."""
    failures = []
    for _ in range(2):
        out = _run(cmd, home)
        if out.returncode == 0:
            if failures:
                print("node start needed a rerun; the first attempt:\n" + failures[0])
            return
        failures.append(out.stdout[-2000:] + out.stderr[-2000:] + _logs(temp_dir))
        if "timed out during startup" not in out.stdout + out.stderr:
            break  # not the load-dependent registration timeout: no rerun
        stop = _run(STOP, home)
        assert stop.returncode == 0, stop.stderr
    raise AssertionError("\n=== next attempt ===\n".join(failures))


def _alive(text: str) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if text in " ".join(p.info["cmdline"] or [])]


def test_cluster_yaml_starts_a_token_auth_head_and_a_worker_joins_it(tmp_path):
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    head_home, worker_home = tmp_path / "head", tmp_path / "worker"
    head_home.mkdir()
    worker_home.mkdir()
    temp_dir = Path("/tmp") / f"mfc{os.getpid()}"  # short: Ray's socket paths have a length limit
    gcs, dash = free_port(), free_port()

    # only what lets two nodes share one machine with the test session's cluster: ports and temp dirs
    def isolate() -> str:
        return (
            f" --node-ip-address=127.0.0.1 --num-cpus=1 --dashboard-agent-listen-port={free_port()} "
            f"--metrics-export-port={free_port()} --runtime-env-agent-port={free_port()}"
        )

    try:
        # head: setup commands, then its ray start
        for cmd in cfg["head_setup_commands"]:
            out = _run(cmd, head_home)
            assert out.returncode == 0, out.stderr
        token = head_home / ".ray" / "auth_token"
        assert stat.S_IMODE(token.stat().st_mode) == 0o600 and stat.S_IMODE(token.parent.stat().st_mode) == 0o700
        assert len(token.read_text()) == 64
        again = _run(cfg["head_setup_commands"][0], head_home)  # a rerun keeps the token
        assert again.returncode == 0 and len(token.read_text()) == 64
        head = _start_command(cfg["head_start_ray_commands"])
        assert "--dashboard-host=127.0.0.1" in head and "RAY_AUTH_MODE" not in head  # the env export sets it
        for line in (head, _start_command(cfg["worker_start_ray_commands"])):
            assert "--disable-usage-stats" in line and 'eval "$(python3 -m modelfoundry.cluster env)"' in line
        head = head.replace("--port=6379", f"--port={gcs}").replace(
            "--autoscaling-config=~/ray_bootstrap_config.yaml",
            "",  # no cloud provider here: no autoscaler
        )
        head += f"{isolate()} --dashboard-port={dash} --ray-client-server-port={free_port()} --temp-dir={temp_dir}/h"
        out = _run(STOP, head_home)  # a fresh node: nothing of ours to stop
        assert out.returncode == 0 and "stopped 0 " in out.stdout, out.stderr
        _start_node(head, head_home, temp_dir / "h")

        # a worker without the token refuses to start
        for cmd in cfg["worker_setup_commands"]:
            out = _run(cmd, worker_home)
            assert out.returncode == 1 and "no cluster token" in out.stderr, out.stderr
        # cluster_synced_files: the head's autoscaler rsyncs the file (-a keeps its mode)
        assert cfg["cluster_synced_files"] == ["~/.ray/auth_token"]
        (worker_home / ".ray").mkdir(exist_ok=True)
        (worker_home / ".ray").chmod(0o755)  # as Ray's updater leaves it: `mkdir -p`, default umask
        if shutil.which("rsync"):
            subprocess.run(["rsync", "-a", str(token), str(worker_home / ".ray" / "auth_token")], check=True)
        else:
            shutil.copy2(token, worker_home / ".ray" / "auth_token")
        for cmd in cfg["worker_setup_commands"]:
            out = _run(cmd, worker_home)
            assert out.returncode == 0, out.stderr
        assert stat.S_IMODE((worker_home / ".ray").stat().st_mode) == 0o700
        worker = _start_command(cfg["worker_start_ray_commands"])
        worker = worker.replace("$RAY_HEAD_IP:6379", f"127.0.0.1:{gcs}") + f"{isolate()} --temp-dir={temp_dir}/w"
        _start_node(worker, worker_home, temp_dir / "w")

        # a client with the token sees both nodes alive; one without it is refused
        probe = f"import ray; ray.init(address='127.0.0.1:{gcs}'); print('NODES', sum(n['Alive'] for n in ray.nodes()))"
        ok = _run(f'RAY_AUTH_MODE=token python3 -c "{probe}"', head_home)
        assert "NODES 2" in ok.stdout, ok.stdout[-2000:] + ok.stderr[-2000:]
        refused = _run(f'RAY_AUTH_MODE=token timeout 60 python3 -c "{probe}"', tmp_path)
        assert refused.returncode != 0 and "NODES" not in refused.stdout
        assert "token" in (refused.stdout + refused.stderr).lower()

        # each node's stop ends its own processes, and only those: the worker's first
        before = len(_alive(f"{temp_dir}/"))
        out = _run(STOP, worker_home)
        assert out.returncode == 0 and not _alive(f"{temp_dir}/w") and _alive(f"{temp_dir}/h"), out.stdout
        out = _run(STOP, head_home)
        assert out.returncode == 0 and not _alive(f"{temp_dir}/"), out.stdout
        assert before > 5  # GCS, raylets, agents, dashboard...
    finally:
        kill_matching(str(temp_dir))
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_foundry_serve_stops_on_sigterm_with_its_cluster_and_frees_its_port(tmp_path):
    """`foundry serve` under a supervisor (docker stop, systemd): SIGTERM shuts Serve and its local
    cluster down like Ctrl-C and exits 0, every process it started gone and its port free. It used
    to die of SIGABRT (-6) without Serve's shutdown."""
    import socket
    import time

    import torch

    from modelfoundry.config import DataSection
    from modelfoundry.data import load_splits
    from modelfoundry.models import build_model, set_normalization
    from modelfoundry.store import export
    from modelfoundry.store.checkpoint import write_checkpoint

    digits = load_splits(DataSection(dataset="digits"))
    torch.manual_seed(0)
    model = build_model("cnn", "tiny", input_shape=digits.spec.input_shape, output_dim=digits.spec.output_dim)
    set_normalization(model, digits.stats())
    write_checkpoint(
        str(tmp_path / "ckpt"), model, dataset=digits.spec.to_dict(), metrics={}, extra={"task": "classification"}
    )
    store, port = str(tmp_path / "models"), free_port()
    export(str(tmp_path / "ckpt"), store, "cnn-digits")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MODELFOUNDRY_"))}  # a user's shell
    foundry = str(Path(sys.executable).with_name("foundry"))
    proc = subprocess.Popen(
        [foundry, "serve", "cnn-digits", "--store", store, "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for line in proc.stdout:  # waits on its own output: "serving at ..." once the app is up
            if line.startswith("serving at"):
                break
        assert proc.poll() is None, "foundry serve ended before serving"
        family = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
        assert any("haproxy" in " ".join(_cmdline(pid)) for pid in family), "no HAProxy under foundry serve"
        proc.terminate()
        assert proc.wait(timeout=120) == 0
        left = [pid for pid in family if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
        deadline = time.monotonic() + 60  # the raylet's children end just after it: wait on the condition
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = [pid for pid in left if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
        assert not left, [" ".join(_cmdline(pid))[:120] for pid in left]
        with socket.socket() as s:  # the port is free again
            s.bind(("127.0.0.1", port))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _cmdline(pid: int) -> list[str]:
    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return []
