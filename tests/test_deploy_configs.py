"""cluster.yaml validates against the cluster-config JSON schema inside the ray package; the
KubeRay manifests parse and point at files that exist."""

import json
import re
import shlex
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_cluster_yaml_matches_rays_schema():
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    jsonschema.validate(config, schema)  # raises on any schema violation
    bad = {**config, "max_worker": 3}
    assert list(jsonschema.Draft7Validator(schema).iter_errors(bad))  # the schema does reject mistakes
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    gpu_types = [t for name, t in types.items() if name.startswith("gpu")]
    assert gpu_types and all(t["max_workers"] > t["min_workers"] for t in gpu_types)


def test_kuberay_manifests_parse_and_reference_real_files():
    job = yaml.safe_load((ROOT / "deploy/kuberay/rayjob-train.yaml").read_text())
    assert job["kind"] == "RayJob"
    args = shlex.split(job["spec"]["entrypoint"])
    assert (ROOT / args[1]).is_file() and (ROOT / args[args.index("--config") + 1]).is_file()
    svc = yaml.safe_load((ROOT / "deploy/kuberay/rayservice-serve.yaml").read_text())
    assert svc["kind"] == "RayService"
    serve_cfg = yaml.safe_load(svc["spec"]["serveConfigV2"])
    for app in serve_cfg["applications"]:
        module = app["import_path"].split(":")[0]
        assert (ROOT / (module.replace(".", "/") + ".py")).is_file()
        assert not re.search(r"api_key\b|secret", yaml.safe_dump(app["args"]))  # keys never in YAML


def test_cluster_env_exports_token_auth_and_the_loopback_haproxy():
    """What cluster.yaml evals before `ray start` on every node."""
    import os
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "modelfoundry.cluster", "env"], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    exports = dict(shlex.split(line)[1].split("=", 1) for line in out.splitlines())
    assert exports["RAY_AUTH_MODE"] == "token" and exports["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert "RAY_SERVE_HAPROXY_STATS_PORT" not in exports  # nodes keep Ray's ports
    for binary in (exports["RAY_SERVE_HAPROXY_BINARY_PATH"], exports["MODELFOUNDRY_HAPROXY_REAL_BINARY"]):
        assert os.access(binary, os.X_OK), binary
    bad = subprocess.run([sys.executable, "-m", "modelfoundry.cluster"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "usage: python -m modelfoundry.cluster env" in bad.stderr
