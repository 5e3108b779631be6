"""Canary rollout: a canary app (kind canary, serving/backends/canary.py) is deployed declaratively, as
`serve deploy` does, with its weights as the Ingress deployment's user_config. Changing only the
user_config of a declarative app is Serve's in-place update: the live replicas get reconfigure()
and keep serving, no replica restarts, no request is dropped. (`serve.run` would not do: it gives
every deployment a new random version, so any change restarts the replicas.)

The rollout verbs change the weights (`set_traffic`), promote a version (the store's `champion`
alias moves to it and it gets all traffic) and roll back (all traffic to the version that was
champion when the app was deployed, and the alias back to it). Every change is checked against the
live app before anything is applied: a bad one changes nothing.

Serve's declarative API writes the whole set of apps at once, so each change is a read-modify-write
of that set done under the cluster's Serve-config lease (serving/control_lock.py): concurrent
rollouts from several processes apply one after another, each on what the previous one left, and
no app is lost.
"""

from __future__ import annotations

from typing import Any

from ray import serve

from modelfoundry.serving import control_lock
from modelfoundry.serving.app_args import CanaryArgs, parse_args
from modelfoundry.serving.apps import QUIET_LOGS, arm_ref, build_app
from modelfoundry.serving.declarative import (
    IMPORT_PATH,
    INGRESS,
    client,
    declarative_apps,
    deploy,
    deploy_all,
    wait_ready,
)
from modelfoundry.serving.spec import check_traffic
from modelfoundry.storage import absolute

CHAMPION = "champion"


def deploy_canary(
    args: CanaryArgs | dict[str, Any],
    app_name: str,
    route_prefix: str = "/",
    host: str = "127.0.0.1",
    port: int = 8000,
) -> str:
    """Deploy a canary app declaratively (other declarative apps kept); returns its base URL."""
    args = parse_args(args)
    if not isinstance(args, CanaryArgs):
        raise ValueError("deploy_canary needs a canary app (one with traffic)")
    from modelfoundry.store import resolve

    # the controller builds the app in its own process: paths must not depend on this one's cwd;
    # each arm's version is pinned now, so a rebuilt app serves what this one does
    store = absolute(args.store)
    pinned = {label: resolve(store, args.model, arm_ref(label)).version for label in args.traffic}
    args = CanaryArgs.model_validate(
        {
            **args.model_dump(exclude_defaults=True),
            "store": store,
            "api_keys_file": absolute(args.api_keys_file) if args.api_keys_file else None,
            "arm_versions": pinned,
        }
    )
    build_app(args)  # every mistake (store, versions, families) fails here, before the cluster sees it
    serve.start(http_options={"host": host, "port": port}, logging_config=QUIET_LOGS)
    config = {
        "name": app_name,
        "route_prefix": route_prefix,
        "import_path": IMPORT_PATH,
        "args": args.model_dump(mode="json", exclude_defaults=True),
        "deployments": [{"name": INGRESS, "user_config": {"traffic": dict(args.traffic)}}],
        "logging_config": QUIET_LOGS,
    }
    deploy(config, f"foundry serve --traffic of {app_name}")
    return f"http://{host}:{port}{route_prefix.rstrip('/')}"


def live_canary(
    app_name: str, apps: list[dict[str, Any]] | None = None
) -> tuple[dict[str, Any], CanaryArgs, dict[str, int]]:
    """The live app's declarative config, its args and its current weights (from `apps`, the
    declarative set already read, or read now)."""
    for config in apps if apps is not None else declarative_apps():
        if config["name"] == app_name:
            break
    else:
        apps = sorted(client().get_serve_details().get("applications") or {})
        raise ValueError(f"no canary app {app_name!r} deployed by foundry serve --traffic; Serve runs {apps}")
    if config.get("import_path") != IMPORT_PATH or not (config.get("args") or {}).get("traffic"):
        raise ValueError(f"app {app_name!r} is not a canary (no traffic in its args)")
    args = parse_args(config["args"])
    assert isinstance(args, CanaryArgs)
    ingress = next((d for d in config.get("deployments") or [] if d.get("name") == INGRESS), {})
    weights = (ingress.get("user_config") or {}).get("traffic") or dict(args.traffic)
    return config, args, {k: int(v) for k, v in weights.items()}


def weights_from(given: dict[str, int], arms: list[str]) -> dict[str, int]:
    """--weight values for all arms, or all but one (which takes the rest of 100)."""
    unknown = sorted(set(given) - set(arms))
    if unknown:
        raise ValueError(f"--weight names {unknown}; this app serves {arms}")
    missing = [a for a in arms if a not in given]
    if len(missing) > 1:
        raise ValueError(f"give a weight for every version but at most one; missing {missing}")
    out = dict(given)
    if missing:
        rest = 100 - sum(given.values())
        if rest < 0:
            raise ValueError(f"weights {given} exceed 100")
        out[missing[0]] = rest
    check_traffic(out, arms)
    return {a: out[a] for a in arms}


def set_traffic(app_name: str, weights: dict[str, int]) -> dict[str, int]:
    """New weights for a live canary, applied in place; returns them. Nothing changes when they
    are wrong (unknown arms, not summing to 100). A compare-and-set: the set of apps is read and
    written back under the cluster's lease, so a concurrent change is never lost or undone."""
    with control_lock.held(f"foundry rollout of {app_name}"):
        apps = declarative_apps()
        config, args, _ = live_canary(app_name, apps)
        weights = weights_from(weights, list(args.traffic))
        for d in config.setdefault("deployments", []):
            if d.get("name") == INGRESS:
                d["user_config"] = {"traffic": weights}
                break
        else:
            config["deployments"].append({"name": INGRESS, "user_config": {"traffic": weights}})
        deploy_all([config if a["name"] == app_name else a for a in apps])
    wait_ready(app_name)
    return weights


def promote(app_name: str, label: str = "challenger", tracking_uri: str | None = None) -> dict[str, Any]:
    """The arm `label`'s version becomes the store's champion and gets all traffic."""
    args, version, weights = _all_traffic_to(app_name, label, "--promote")
    return {"weights": weights, "alias": _move_champion(args, version, tracking_uri)}


def rollback(app_name: str, tracking_uri: str | None = None) -> dict[str, Any]:
    """All traffic to the champion arm (the version that was champion at deploy time), and the
    store's champion alias back to it if a promote moved it."""
    from modelfoundry import store as model_store

    args, version, weights = _all_traffic_to(app_name, CHAMPION, "--rollback")
    moved = model_store.aliases(args.store, args.model).get(CHAMPION) != version
    return {"weights": weights, "alias": _move_champion(args, version, tracking_uri) if moved else None}


def _all_traffic_to(app_name: str, label: str, action: str) -> tuple[CanaryArgs, int, dict[str, int]]:
    """All of a live canary's traffic to arm `label`: its args, the arm's version, the weights."""
    _, args, _ = live_canary(app_name)
    arms = list(args.traffic)
    if label not in arms:
        raise ValueError(f"{action} needs an arm named {label!r}; this app serves {arms}")
    version = _arm_version(app_name, args, label)
    return args, version, set_traffic(app_name, {a: 100 if a == label else 0 for a in arms})


def _move_champion(args: CanaryArgs, version: int, tracking_uri: str | None) -> dict[str, Any]:
    """The store's champion alias to `version`, mirrored to the MLflow registry."""
    from modelfoundry import store as model_store
    from modelfoundry import tracking

    move = model_store.set_alias(args.store, args.model, CHAMPION, version)
    tracking.mirror_registry(tracking.registry_uri(tracking_uri), args.store, args.model)
    return move


def _arm_version(app_name: str, args: CanaryArgs, label: str) -> int:
    """The version the live app serves for arm `label` (pinned when it was deployed: an alias may
    have moved since)."""
    if not args.arm_versions:
        raise ValueError(f"app {app_name!r} has no pinned versions; redeploy it with foundry serve --traffic")
    return args.arm_versions[label]
