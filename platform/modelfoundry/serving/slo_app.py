"""Deploying a split app with a latency objective, and reading its plan back.

The app goes to Serve declaratively (serving/declarative.py) with the planner as its app-level
`autoscaling_policy`; then a few probes through its stages measure each one's service time, and an
objective below what the stages take with no queueing at all is refused, with those times, and the
app removed again. `status` is the operator view: the planner's last plan from the app's board."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from ray import serve

from modelfoundry.serving import declarative, planner
from modelfoundry.serving.app_args import ModelArgs, parse_args
from modelfoundry.serving.apps import QUIET_LOGS, build_app
from modelfoundry.serving.backends.split import VARIANT
from modelfoundry.serving.slo import board
from modelfoundry.storage import absolute
from modelfoundry.store import resolve
from modelfoundry.store.checkpoint import read_meta

POLICY = "modelfoundry.serving.slo_policy:SloPolicy"
PROBES = 20


def deploy_slo(
    args: ModelArgs | dict[str, Any], app_name: str, host: str = "127.0.0.1", port: int = 8000, route_prefix: str = "/"
) -> str:
    """Deploy; probe; refuse an impossible objective. Returns the base URL. (Serve's own `serve
    deploy` of such an app would run it without its planner: Serve takes the app-level policy from
    the config's `autoscaling_policy`, which this writes.)"""
    args = parse_args(args)
    if not isinstance(args, ModelArgs) or args.slo is None:
        raise ValueError("deploy_slo needs a split model app with slo")
    store = absolute(args.store)
    pinned = resolve(store, args.model, args.version).version  # a rebuilt app serves this version
    args = ModelArgs.model_validate({**args.model_dump(exclude_defaults=True), "store": store, "version": pinned})
    build_app(args)  # every mistake fails here, before the cluster sees it
    n_stages = len(args.split) if isinstance(args.split, list) else None
    serve.start(http_options={"host": host, "port": port}, logging_config=QUIET_LOGS)
    board(app_name)  # the planner and the ingress replicas find it by name
    config = {
        "name": app_name,
        "route_prefix": route_prefix,
        "import_path": declarative.IMPORT_PATH,
        "args": args.model_dump(mode="json", exclude_defaults=True),
        "logging_config": QUIET_LOGS,
        "autoscaling_policy": {"policy_function": POLICY, "policy_kwargs": _policy_kwargs(args, app_name, n_stages)},
    }
    declarative.deploy(config, f"foundry serve --slo-p99-ms of {app_name}")
    try:
        check_objective(app_name, args)
    except ValueError:
        remove(app_name)
        raise
    return f"http://{host}:{port}{route_prefix.rstrip('/')}"


def _stage_names(app_name: str) -> list[str]:
    details = declarative.client().get_serve_details()["applications"][app_name]["deployments"]
    return sorted((d for d in details if d.startswith("stage-")), key=lambda d: int(d.split("-")[1]))


def _policy_kwargs(args: ModelArgs, app_name: str, n_stages: int | None) -> dict[str, Any]:
    from modelfoundry.models import build_model
    from modelfoundry.models.stages import resolve_split

    if n_stages is None:  # auto splits: the same cut the builder makes
        found = resolve(args.store, args.model, args.version)
        meta = read_meta(found.uri)
        n_stages = len(resolve_split(build_model(meta.family, "default", **meta.config), args.split))
    slo = args.slo
    return {
        "app": app_name,
        "ingress": declarative.INGRESS,
        "stages": [f"stage-{i}" for i in range(n_stages)],
        "variant": VARIANT if slo.variant else None,
        "p99_ms": slo.p99_ms,
        "max_replicas_total": slo.max_replicas_total,
        "min_replicas": slo.min_replicas,
    }


def check_objective(app_name: str, args: ModelArgs) -> dict[str, float]:
    """Each stage's mean service time over PROBES requests of one instance (sent through the stages
    in order, as the ingress does); a ValueError naming them when their sum exceeds the objective."""
    meta = read_meta(resolve(args.store, args.model, args.version).uri)
    stages = _stage_names(app_name)
    handles = [serve.get_deployment_handle(s, app_name) for s in stages]
    for h in handles:  # blocking calls from this thread (Serve's fast path binds a handle to a loop)
        if not h.is_initialized:
            h._init(_run_router_in_separate_loop=True)
    x0 = np.zeros((1, *meta.input_spec.shape), dtype=meta.input_spec.dtype)
    for _ in range(PROBES):
        x = x0
        for h in handles:
            x = h.remote(x).result()
    stats = [h.options(method_name="record_autoscaling_stats").remote().result() for h in handles]
    times = {s: round(st.get("mean_ms", 0.0), 3) for s, st in zip(stages, stats)}
    floor = planner.floor_ms(list(times.values()), 0.0)
    if floor > args.slo.p99_ms:
        each = ", ".join(f"{s} {t:.2f} ms" for s, t in times.items())
        raise ValueError(
            f"slo.p99_ms {args.slo.p99_ms:g} cannot be met: the stages alone take {floor:.2f} ms per request "
            f"with no queueing ({each}; mean of {PROBES} probes), before any hop; ask for more than that"
        )
    return times


def remove(app_name: str, timeout_s: float = 120.0) -> None:
    """The app taken off the cluster (the other declarative apps kept); returns once it is gone."""
    from modelfoundry.serving import control_lock

    with control_lock.held(f"removing {app_name}"):
        declarative.deploy_all([a for a in declarative.declarative_apps() if a["name"] != app_name])
    deadline = time.monotonic() + timeout_s
    while app_name in (declarative.client().get_serve_details().get("applications") or {}):
        if time.monotonic() > deadline:
            raise TimeoutError(f"Serve app {app_name!r} still there {timeout_s:.0f} s after its removal")
        time.sleep(0.2)


def status(app_name: str, wait_s: float = 5.0) -> dict[str, Any]:
    """The planner's last plan for the app (waits up to wait_s for a first one)."""
    handle = board(app_name, create=False)
    if handle is None:
        raise ValueError(f"no app {app_name!r} with a latency objective on this cluster (foundry serve --slo-p99-ms)")
    import ray

    deadline = time.monotonic() + wait_s
    plan = ray.get(handle.read.remote())
    while not plan and time.monotonic() < deadline:
        time.sleep(0.2)
        plan = ray.get(handle.read.remote())
    return plan


def format_status(plan: dict[str, Any]) -> str:
    if not plan:
        return "no plan yet (the planner publishes once the app has had its first request)"
    lines = [
        f"{plan['app']}: objective p99 {plan['objective_p99_ms']:g} ms, {plan['rate']:.1f} req/s, "
        f"observed p99 {_ms(plan.get('observed_p99_ms'))}, predicted {_ms(plan.get('predicted_p99_ms'))}, "
        f"overhead {_ms(plan.get('overhead_ms'))}, budget {plan['max_replicas_total']} replicas",
        f"  {'deployment':<10} {'replicas':>8} {'running':>8} {'service':>10} {'p99 pred':>10} {'queued':>7}",
    ]
    for s in plan["stages"]:
        lines.append(
            f"  {s['name']:<10} {s['replicas']!s:>8} {s['running']!s:>8} {_ms(s['service_ms']):>10} "
            f"{_ms(s['predicted_p99_ms']):>10} {_n(s['queued']):>7}"
        )
    v = plan.get("variant")
    if v:
        lines.append(f"  {v['name']:<10} {v['replicas']!s:>8} {v['running']!s:>8} {_ms(v['service_ms']):>10}")
    lines.append(f"  variant share {plan['variant_share']:.0%}; objective {'met' if plan.get('meets') else 'at risk'}")
    return "\n".join(lines)


def _n(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} ms"
