"""cluster.yaml validates against the cluster-config JSON schema inside the ray package; the
KubeRay manifests parse and point at files that exist."""

import functools
import json
import re
import shlex
from pathlib import Path

import pytest
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


@functools.cache
def _crd_schema(kind: str) -> dict:
    """The vendored KubeRay CRD's openAPIV3Schema (deploy/kuberay/crds/SOURCE.md), with unknown
    fields refused the way `kubectl apply` refuses them (strict field validation) instead of
    the API server dropping them silently."""
    import gzip

    text = gzip.decompress((ROOT / f"deploy/kuberay/crds/ray.io_{kind.lower()}s.yaml.gz").read_bytes())
    crd = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # libyaml: 10x faster
    assert crd["spec"]["names"]["kind"] == kind
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = version["schema"]["openAPIV3Schema"]

    def strict(node):
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for v in node.values():
                strict(v)
        elif isinstance(node, list):
            for v in node:
                strict(v)

    strict(schema)
    return schema


def _schema_errors(manifest: dict) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft7Validator(_crd_schema(manifest["kind"]))
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(manifest)]


def _manifest(name: str) -> dict:
    return yaml.safe_load((ROOT / "deploy/kuberay" / name).read_text())


def test_kuberay_manifests_match_the_kuberay_crd_schemas():
    for name, kind in [("rayjob-train.yaml", "RayJob"), ("rayservice-serve.yaml", "RayService")]:
        manifest = _manifest(name)
        assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == kind
        assert _schema_errors(manifest) == [], name
        cluster = manifest["spec"]["rayClusterSpec" if kind == "RayJob" else "rayClusterConfig"]
        # token auth through KubeRay (a Secret per cluster, the env on every container), and the
        # dashboard reachable by the operator and the job submitter through the head Service
        assert cluster["authOptions"] == {"mode": "token"}
        assert cluster["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"
        containers = [cluster["headGroupSpec"]["template"]["spec"]["containers"][0]] + [
            g["template"]["spec"]["containers"][0] for g in cluster["workerGroupSpecs"]
        ]
        for c in containers:
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            assert "RAY_AUTH_MODE" not in env and "RAY_AUTH_TOKEN" not in env  # KubeRay sets them
            assert env["RAY_USAGE_STATS_ENABLED"] == "0"
            if kind == "RayService":  # the same Serve settings as `modelfoundry.cluster env`
                from modelfoundry.cluster import serve_env

                wrapper = env["RAY_SERVE_HAPROXY_BINARY_PATH"]
                assert wrapper.startswith("/app/") and (ROOT / wrapper.removeprefix("/app/")).is_file()
                node = serve_env(local=False)
                for key in (
                    "RAY_SERVE_ENABLE_HA_PROXY",
                    "RAY_SERVE_THROUGHPUT_OPTIMIZED",
                    "RAY_SERVE_HAPROXY_RETRY_ON",
                ):
                    assert env[key] == node[key], key
        for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
            assert group["template"]["metadata"]["labels"]["app.kubernetes.io/part-of"] == "modelfoundry"
    # the schemas do refuse mistakes: a misspelt field, a wrong enum value, a wrong type
    job = _manifest("rayjob-train.yaml")
    job["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParam"] = {}
    job["spec"]["rayClusterSpec"]["authOptions"]["mode"] = "tokens"
    job["spec"]["shutdownAfterJobFinishes"] = "yes"
    errors = " | ".join(_schema_errors(job))
    assert "'rayStartParam' was unexpected" in errors and "'tokens' is not one of" in errors
    assert "'yes' is not of type 'boolean'" in errors


def test_rayjob_entrypoint_runs_files_of_this_project():
    args = shlex.split(_manifest("rayjob-train.yaml")["spec"]["entrypoint"])
    assert args[0] == "python" and args[1].startswith("/app/")  # the project's place in the image
    assert (ROOT / args[1].removeprefix("/app/")).is_file()
    assert (ROOT / args[args.index("--config") + 1].removeprefix("/app/")).is_file()


def _serve_configs() -> list[tuple[str, dict]]:
    out = [(p.name, yaml.safe_load(p.read_text())) for p in sorted((ROOT / "serve_apps").glob("*.yaml"))]
    return out + [
        ("rayservice-serve.yaml", yaml.safe_load(_manifest("rayservice-serve.yaml")["spec"]["serveConfigV2"]))
    ]


def test_every_serve_config_passes_serves_own_schema_and_its_builders_args(monkeypatch):
    """What `serve deploy` / `serve run` / KubeRay check first (ServeDeploySchema), then what each
    application's typed builder checks (its pydantic args), without building anything."""
    import importlib
    import typing

    import pydantic
    from ray.serve.schema import ServeDeploySchema

    from modelfoundry.serving.app_args import parse_args

    monkeypatch.syspath_prepend(str(ROOT))  # import_path modules, as `serve` finds them from the project root
    configs = _serve_configs()
    assert len(configs) == 9
    for name, cfg in configs:
        ServeDeploySchema.model_validate(cfg)  # raises on any violation
        assert cfg["http_options"]["host"] == ("0.0.0.0" if name.startswith("rayservice") else "127.0.0.1"), name
        for app in cfg["applications"]:
            module, _, attr = app["import_path"].partition(":")
            builder = getattr(importlib.import_module(module), attr)
            # as Serve calls a builder: args validated by its pydantic annotation, else a dict (which
            # the platform's own builder validates by the app's kind)
            arg_type = next(iter(typing.get_type_hints(builder).values()))
            raw = app.get("args") or {}
            typed = isinstance(arg_type, type) and issubclass(arg_type, pydantic.BaseModel)
            args = parse_args(arg_type.model_validate(raw) if typed else raw)
            if name.startswith("rayservice"):  # off loopback: API keys, from the environment only
                assert args.api_keys_env and app["runtime_env"]["working_dir"] == "local:///app"
            assert not re.search(r"api_key\b|secret", yaml.safe_dump(app.get("args") or {}))  # keys never in YAML
    # the schema does refuse what it should: a working_dir that is a bare path (not a URI)
    bad = yaml.safe_load(_manifest("rayservice-serve.yaml")["spec"]["serveConfigV2"])
    bad["applications"][0]["runtime_env"] = {"working_dir": "/app"}
    import pydantic

    with pytest.raises(pydantic.ValidationError, match="remote URIs in working_dir"):
        ServeDeploySchema.model_validate(bad)


def test_networkpolicy_admits_only_what_the_manifests_need():
    docs = list(yaml.safe_load_all((ROOT / "deploy/kuberay/networkpolicy.yaml").read_text()))
    assert all(d["apiVersion"] == "networking.k8s.io/v1" and d["kind"] == "NetworkPolicy" for d in docs)
    ray_policy, serve_policy = docs
    ray_pods = ray_policy["spec"]["podSelector"]["matchLabels"]
    assert ray_pods == {"app.kubernetes.io/part-of": "modelfoundry"}
    opened = {
        p["port"]
        for rule in ray_policy["spec"]["ingress"] + serve_policy["spec"]["ingress"]
        for p in rule.get("ports", [])
    }
    assert opened == {8265, 8000}  # 8404/9101 (HAProxy), 6379, 10001: the cluster's own pods only
    unrestricted = [r for r in ray_policy["spec"]["ingress"] if "ports" not in r]
    assert unrestricted == [{"from": [{"podSelector": {"matchLabels": ray_pods}}]}]
    # every Ray pod of both manifests is selected; only the serving pods get port 8000
    for name in ("rayjob-train.yaml", "rayservice-serve.yaml"):
        spec = _manifest(name)["spec"]
        cluster = spec.get("rayClusterSpec") or spec["rayClusterConfig"]
        for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
            labels = group["template"]["metadata"]["labels"]
            assert ray_pods.items() <= labels.items()
            serves = serve_policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
            assert serves == (name == "rayservice-serve.yaml")


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
    assert exports["RAY_USAGE_STATS_ENABLED"] == "0"
    assert "RAY_SERVE_HAPROXY_STATS_PORT" not in exports  # nodes keep Ray's ports
    for binary in (exports["RAY_SERVE_HAPROXY_BINARY_PATH"], exports["MODELFOUNDRY_HAPROXY_REAL_BINARY"]):
        assert os.access(binary, os.X_OK), binary
    bad = subprocess.run([sys.executable, "-m", "modelfoundry.cluster"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "usage: python -m modelfoundry.cluster env" in bad.stderr


def test_a_local_cluster_takes_fresh_haproxy_ports_unless_this_process_or_its_user_chose_them(monkeypatch):
    """`foundry serve` started by a process that runs its own local cluster inherits that
    cluster's HAProxy ports, which its HAProxy holds: the child takes fresh ones (its HAProxy
    failed with 'Address already in use' before). Ports a user set, or this process took, stay."""
    import os

    from modelfoundry.cluster import LOCAL_PORT_KEYS, PORTS_OWNER_ENV, apply_serve_env

    monkeypatch.setattr(os, "environ", dict(os.environ))  # nothing it sets outlives the test
    for key in LOCAL_PORT_KEYS:
        monkeypatch.setenv(key, "1")
    monkeypatch.setenv(PORTS_OWNER_ENV, str(os.getpid() + 1))  # a parent's ports
    apply_serve_env()
    taken = {k: os.environ[k] for k in LOCAL_PORT_KEYS}
    assert all(v != "1" for v in taken.values()) and os.environ[PORTS_OWNER_ENV] == str(os.getpid())
    apply_serve_env()  # again in the same process: its own ports stay
    assert {k: os.environ[k] for k in LOCAL_PORT_KEYS} == taken
    monkeypatch.delenv(PORTS_OWNER_ENV)
    for key in LOCAL_PORT_KEYS:
        monkeypatch.setenv(key, "9999")  # the user's own choice wins
    apply_serve_env()
    assert all(os.environ[k] == "9999" for k in LOCAL_PORT_KEYS)
