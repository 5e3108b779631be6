"""Job submission to a running Ray cluster (JobSubmissionClient): the project's working tree
travels as the job's working_dir, so `modelfoundry` and the configs are importable there."""

from __future__ import annotations

import asyncio
import shlex
import time
from pathlib import Path

# gitignore-style, anchored at the project root (a bare "models" would drop modelfoundry/models)
EXCLUDES = ["/.venv/", "/.git/", "/runs/", "/models/", "/bench/results/", "__pycache__/", "*.egg-info/"]
# secrets never travel with a job, wherever they sit in the tree (gitignore rules, as Ray applies
# them): env files, private keys and certificates, SSH keys and config, Ray's cluster token, API
# key files (the platform's api_keys_file convention), cloud, Kubernetes, Docker, git and package
# registry credentials. `foundry submit --dry-run` lists what would be uploaded.
SECRET_EXCLUDES = [
    ".env",
    ".env.*",
    "*.env",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    ".ssh/",
    "auth_token",
    "*.token",
    ".ray/",
    "api_keys*",
    "*_api_keys*",
    ".netrc",
    ".aws/",
    ".azure/",
    ".config/gcloud/",
    ".kube/",
    "kubeconfig*",
    ".docker/config.json",
    ".git-credentials",
    ".pypirc",
    ".npmrc",
    "credentials.json",
]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
AGENT_WAIT_S = 60  # a fresh head needs a few seconds before its job agent accepts jobs


def client(address: str):
    from ray.job_submission import JobSubmissionClient

    from modelfoundry.cluster import secure_token_file

    secure_token_file()  # Ray sends the token it finds: RAY_AUTH_TOKEN[_PATH] or ~/.ray/auth_token
    try:
        return JobSubmissionClient(address)
    except Exception as err:  # connection refused, 401/403 from token auth, bad URL
        text = str(err)
        if any(s in text.lower() for s in ("401", "403", "unauthorized", "forbidden", "token")):
            raise RuntimeError(
                f"the Ray Jobs API at {address} refused this client's token ({text.splitlines()[0][:200]}); "
                "give the cluster's token in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token"
            ) from None
        raise RuntimeError(f"cannot reach the Ray Jobs API at {address}: {err}") from None


def project_root(kind: str, working_dir: str | None) -> Path:
    root = Path(working_dir or Path(__file__).resolve().parents[2])
    if not (root / "jobs" / f"{kind}.py").is_file():
        raise ValueError(f"{root} has no jobs/{kind}.py; run from the project root or pass --working-dir")
    return root


def upload_listing(root: Path) -> list[tuple[str, int]]:
    """(path, bytes) of every file the job's working_dir upload would carry: Ray's own packaging
    code (the .gitignore files it honours, the excludes above) writes the zip, which is listed."""
    import logging
    import tempfile
    import zipfile

    from ray._private.runtime_env.packaging import create_package

    quiet = logging.getLogger("modelfoundry.submit.dry_run")
    quiet.setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="mf-dry-run-") as tmp:
        out = Path(tmp) / "package.zip"
        create_package(str(root), out, include_gitignore=True, excludes=EXCLUDES + SECRET_EXCLUDES, logger=quiet)
        with zipfile.ZipFile(out) as z:
            return sorted((i.filename, i.file_size) for i in z.infolist() if not i.is_dir())


def submit(address: str, kind: str, args: list[str], working_dir: str | None = None) -> str:
    root = project_root(kind, working_dir)
    entrypoint = " ".join(shlex.quote(a) for a in ["python", f"jobs/{kind}.py", *args])
    # the job and its Ray Train workers run in the uploaded tree; PYTHONPATH=platform (relative to
    # it) makes the uploaded `modelfoundry` importable on nodes that do not have it installed
    runtime_env = {
        "working_dir": str(root),
        "excludes": EXCLUDES + SECRET_EXCLUDES,
        "env_vars": {"PYTHONPATH": "platform"},
    }
    c = client(address)
    deadline, waited = time.monotonic() + AGENT_WAIT_S, False
    while True:
        try:
            return c.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
        except RuntimeError as err:  # a head that just started has no job agent for a while
            if "No available agent" not in str(err):
                raise RuntimeError(f"job submission to {address} failed: {err}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"job submission to {address} failed: the head's job agent did not come up in {AGENT_WAIT_S} s "
                    "(see dashboard_agent.log on the head; a common cause is its HTTP port, 52365 by default, "
                    "taken by another Ray cluster on that machine: `ray start --dashboard-agent-listen-port`)"
                ) from None
            if not waited:
                print(f"waiting up to {AGENT_WAIT_S} s for the cluster's job agent to start", flush=True)
                waited = True
            time.sleep(3)


def follow(address: str, job_id: str, out=print, timeout_s: float | None = None) -> str:
    """Stream the job's logs until it ends; returns its final status."""
    c = client(address)

    async def tail() -> None:
        async for lines in c.tail_job_logs(job_id):
            out(lines.rstrip("\n"))

    try:
        asyncio.run(asyncio.wait_for(tail(), timeout_s))
    except TimeoutError:
        pass
    deadline = time.monotonic() + 30
    status = str(c.get_job_status(job_id).value)
    while status not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.5)
        status = str(c.get_job_status(job_id).value)
    return status
