"""Apps deployed declaratively, as `serve deploy` does (`ServeDeploySchema` through the controller),
beside any others: canaries (their weights changed in place, serving/rollout.py) and apps with a
latency objective (their planner is the app-level autoscaling policy, which Serve takes only from
a declarative config, serving/slo_policy.py).

Serve's declarative API writes the whole set of apps at once, so each change is a read-modify-write
of that set done under the cluster's Serve-config lease (serving/control_lock.py): concurrent
changes from several processes apply one after another and no app is lost."""

from __future__ import annotations

import time
from typing import Any

from modelfoundry.serving import control_lock

IMPORT_PATH = "modelfoundry.serving.apps:app"
INGRESS = "Ingress"
READY_TIMEOUT_S = 600.0


def client():
    from ray.serve.context import _get_global_client

    try:
        return _get_global_client()
    except Exception as err:  # noqa: BLE001  (Serve raises RayServeException when not running)
        raise ValueError(f"Serve is not running on this cluster ({err}); start the app with foundry serve") from None


def declarative_apps() -> list[dict[str, Any]]:
    details = client().get_serve_details()
    return [
        a["deployed_app_config"]
        for a in (details.get("applications") or {}).values()
        if a.get("source") == "declarative" and a.get("deployed_app_config")
    ]


def deploy_all(apps: list[dict[str, Any]]) -> None:
    """The whole declarative set (call it holding control_lock, with `apps` read under it)."""
    from ray.serve.schema import ServeDeploySchema

    client().deploy_apps(ServeDeploySchema.model_validate({"applications": apps}))


def deploy(config: dict[str, Any], why: str) -> None:
    """One app's declarative config (ServeApplicationSchema) added or replaced, the others kept;
    returns when it runs."""
    with control_lock.held(why):
        others = [a for a in declarative_apps() if a["name"] != config["name"]]
        deploy_all([*others, config])
    wait_ready(config["name"])


def wait_ready(app_name: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Until the app runs and its ingress is at its target config on every replica."""
    deadline = time.monotonic() + timeout_s
    while True:
        app = (client().get_serve_details().get("applications") or {}).get(app_name) or {}
        status = app.get("status")
        ingress = (app.get("deployments") or {}).get(INGRESS) or {}
        if status == "DEPLOY_FAILED" or ingress.get("status") == "DEPLOY_FAILED":
            raise RuntimeError(
                f"Serve app {app_name!r} failed to deploy: {app.get('message') or ingress.get('message')}"
            )
        if status == "RUNNING" and ingress.get("status") in ("HEALTHY", "UPSCALING", "DOWNSCALING"):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"Serve app {app_name!r} not ready after {timeout_s:.0f}s (status {status})")
        time.sleep(0.1)
