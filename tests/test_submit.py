"""Job submission against a real Ray head started by this test (`ray start --head` on 127.0.0.1,
its own temp dir, token auth on), stopped by killing exactly the processes it started."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cluster_procs import kill_matching
from modelfoundry.cluster import free_port

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("head")
    temp_dir = Path("/tmp") / f"mfh{os.getpid()}"  # short: Ray's socket paths have a length limit
    venv_bin = str(Path(sys.executable).parent)  # the job runs `python`: this environment's
    env = {**os.environ, "HOME": str(tmp), "RAY_AUTH_MODE": "token", "PATH": f"{venv_bin}:{os.environ['PATH']}"}
    for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(key, None)
    gcs, dash, agent = free_port(), free_port(), free_port()
    ray_bin = str(Path(sys.executable).with_name("ray"))
    # token auth, as cluster.yaml starts heads: the token in this test's own HOME
    subprocess.run([ray_bin, "get-auth-token", "--generate"], env=env, check=True, capture_output=True, timeout=60)
    subprocess.run(
        [
            ray_bin,
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={gcs}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            # not the default 52365: another cluster on this machine (the test session's) holds it,
            # and a head whose agent cannot bind never accepts jobs ("No available agent")
            f"--dashboard-agent-listen-port={agent}",
            "--num-cpus=2",
            "--include-dashboard=true",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=180,
    )
    try:
        yield {"address": f"http://127.0.0.1:{dash}", "env": env, "tmp": tmp}
    finally:
        kill_matching(str(temp_dir))


def foundry(head, *args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "modelfoundry.cli", *args],
        env=head["env"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_submitted_training_job_succeeds(head):
    out = foundry(
        head,
        "submit",
        "train",
        "--address",
        head["address"],
        "--config",
        "jobs/configs/mlp_digits.yaml",
        "--epochs",
        "1",
        "--workers",
        "1",
        "--storage",
        str(head["tmp"] / "runs"),
        "--model-store",
        str(head["tmp"] / "models"),
        "--json",
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "SUCCEEDED" in out.stdout and "best test_accuracy" in out.stdout
    assert (head["tmp"] / "models" / "mlp-digits" / "1" / "model.json").is_file()
    listed = foundry(head, "jobs", "list", "--address", head["address"])
    assert "SUCCEEDED" in listed.stdout


def test_broken_job_ends_failed_with_its_error_in_the_logs(head):
    out = foundry(head, "submit", "train", "--address", head["address"], "--config", "jobs/configs/missing.yaml")
    assert out.returncode == 1
    assert "FAILED" in out.stdout and "does not exist" in out.stdout


def test_unreachable_address_is_a_clear_error(head):
    out = foundry(head, "jobs", "list", "--address", f"http://127.0.0.1:{free_port()}", timeout=120)
    assert out.returncode == 1 and "cannot reach the Ray Jobs API" in out.stderr


def test_jobs_api_refuses_a_client_without_the_token(head):
    no_token = {**head, "env": {**head["env"], "HOME": str(head["tmp"] / "elsewhere")}}
    out = foundry(no_token, "jobs", "list", "--address", head["address"], timeout=120)
    assert out.returncode == 1 and "refused this client's token" in out.stderr, out.stderr[-2000:]
    wrong = {**head, "env": {**head["env"], "RAY_AUTH_TOKEN": "0" * 64}}
    out = foundry(wrong, "jobs", "list", "--address", head["address"], timeout=120)
    assert out.returncode == 1 and "refused this client's token" in out.stderr, out.stderr[-2000:]


def test_shipped_serve_yaml_runs_under_plain_serve_deploy(head, tmp_path):
    """serve_apps/classifier.yaml through Ray's own `serve deploy` (the Jobs/Serve REST API, token
    auth), changed only where this machine differs: the store, the port and the project's place
    given as a local:// working_dir (as the RayService does with local:///app)."""
    import json
    import time
    import urllib.request

    import torch
    import yaml

    from modelfoundry.config import DataSection
    from modelfoundry.data import load_splits
    from modelfoundry.models import build_model, set_normalization
    from modelfoundry.store import export
    from modelfoundry.store.checkpoint import write_checkpoint

    splits = load_splits(DataSection(dataset="digits"))
    torch.manual_seed(0)
    model = build_model("cnn", "tiny", input_shape=splits.spec.input_shape, output_dim=10)
    set_normalization(model, splits.stats())
    write_checkpoint(
        tmp_path / "ckpt", model, dataset=splits.spec.to_dict(), metrics={}, extra={"task": "classification"}
    )
    export(str(tmp_path / "ckpt"), str(tmp_path / "store"), "cnn-digits")

    cfg = yaml.safe_load((ROOT / "serve_apps" / "classifier.yaml").read_text())
    port = free_port()
    cfg["http_options"]["port"] = port
    (app,) = cfg["applications"]
    app["args"]["store"] = str(tmp_path / "store")
    app["runtime_env"] = {"working_dir": f"local://{ROOT}"}
    path = tmp_path / "classifier.yaml"
    path.write_text(yaml.safe_dump(cfg))
    serve_bin = str(Path(sys.executable).with_name("serve"))

    def run(*a):
        return subprocess.run(
            [serve_bin, *a, "--address", head["address"]], env=head["env"], capture_output=True, text=True, timeout=300
        )

    out = run("deploy", str(path))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    x = splits.x_test[:4]
    body = json.dumps({"instances": x.tolist()}).encode()
    deadline, answer, last = time.monotonic() + 300, None, ""
    try:
        while answer is None and time.monotonic() < deadline:
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/models/cnn-digits:predict",
                data=body,
                headers={"content-type": "application/json"},
            )
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    answer = json.loads(r.read())
            except OSError as err:  # not up yet: connection refused, 404/503 while deploying
                last = str(err)
                time.sleep(0.5)
        assert answer is not None, f"no answer in 300 s: {last}\n{run('status').stdout[-2000:]}"
        with torch.no_grad():
            expected = torch.softmax(model.eval()(torch.from_numpy(x)), 1).numpy()
        got = [p["probabilities"] for p in answer["predictions"]]
        assert len(got) == 4 and abs(expected - __import__("numpy").array(got)).max() < 1e-5
    finally:
        run("shutdown", "-y")


def test_job_uploads_never_carry_secrets(tmp_path):
    """What Ray itself would zip for `foundry submit` (its own packaging code, the platform's
    excludes): the project's code, never env files, keys, tokens or key files."""
    import shutil
    import zipfile

    from ray._private.runtime_env.packaging import create_package

    from modelfoundry.submit import EXCLUDES, SECRET_EXCLUDES

    tree = tmp_path / "project"
    shutil.copytree(ROOT / "platform" / "modelfoundry", tree / "platform" / "modelfoundry")
    shutil.copytree(ROOT / "jobs", tree / "jobs")
    secrets = [".env", "deploy/.env.prod", "keys/server.pem", "tls.key", ".ray/auth_token", "auth_token",
               "serve_apps/api_keys.txt", "secrets/cluster.token", ".aws/credentials"]  # fmt: skip
    for rel in secrets:
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text("secret")
    out = tmp_path / "pkg.zip"
    create_package(str(tree), out, include_gitignore=True, excludes=EXCLUDES + SECRET_EXCLUDES)
    names = zipfile.ZipFile(out).namelist()
    assert "jobs/train.py" in names and "platform/modelfoundry/models/cnn.py" in names
    assert "platform/modelfoundry/store/catalog.py" in names and "platform/modelfoundry/serving/auth.py" in names
    leaked = [n for n in names if any(n.rstrip("/").endswith(s) for s in secrets)]
    assert not leaked, leaked
