"""Typed Serve application builders. `build_app` takes an app's args (what `serve run` / `serve
deploy` YAML passes as `args:`, typed per kind in serving/app_args.py) and returns a bound
Application: one Ingress (serving/ingress.py) over the app shape's deployments, made by the
kind's builder (serving/backends/). Split is a config choice, not code."""

from __future__ import annotations

import logging
from typing import Any

from ray import serve
from ray.serve import Application

from modelfoundry.serving.app_args import AnyAppArgs, AppArgs, parse_args
from modelfoundry.serving.auth import load_keys
from modelfoundry.serving.backends import BUILDERS, BuildContext
from modelfoundry.serving.backends.canary import arm_ref
from modelfoundry.serving.ingress import Ingress
from modelfoundry.serving.spec import Limits
from modelfoundry.storage import absolute

# no access log line per request (a third of a replica's time at a few thousand req/s);
# warnings and errors still reach the logs
QUIET_LOGS = {"log_level": "WARNING", "enable_access_log": False}


def build_app(args: AnyAppArgs | dict[str, Any]) -> Application:
    args = parse_args(args)
    if args.api_keys_env or args.api_keys_file:  # fail here, not in a replica that never starts
        load_keys(args.api_keys_env, args.api_keys_file)
    batching = args.batching.model_dump() if args.batching else None
    ingress = args.ingress.serve_options()
    if getattr(args, "slo", None) is not None:  # the planner scales the ingress too (to zero with the rest)
        ingress = args.slo.ingress_options(ingress)
    ctx = BuildContext(
        store=absolute(args.store),
        ingress=Ingress.options(**ingress),
        limits=Limits(
            args.max_instances,
            args.max_body_bytes,
            args.max_new_tokens,
            args.max_response_bytes,
            args.max_generations,
            args.max_kv_tokens,
            args.max_queued_generations,
            args.micro_batches,
        ),
        common={
            "batching": batching,
            "api_keys_env": args.api_keys_env,
            "api_keys_file": args.api_keys_file,
            "allowed_hosts": tuple(h.lower() for h in args.allowed_hosts) if args.allowed_hosts is not None else None,
        },
        batching=batching,
        stages=args.stages,
    )
    return BUILDERS[args.kind](args, ctx)


def app(args: dict[str, Any]) -> Application:
    """The import path `modelfoundry.serving.apps:app` for `serve deploy` configs (declarative
    apps; a canary's traffic is changed in place through them, serving/rollout.py). Serve hands
    the YAML's args as a dict; parse_args validates them by their kind."""
    return build_app(args)


def run_app(
    args: AnyAppArgs | dict,
    app_name: str = "default",
    route_prefix: str = "/",
    host: str = "127.0.0.1",
    port: int = 8000,
) -> str:
    """Deploy on the connected cluster (HTTP bound to loopback unless told); returns the base URL.
    Serve's driver-side INFO lines ("Started Serve", "Application ... is ready") stay out of the
    console: the caller prints where the app is."""
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    serve.start(http_options={"host": host, "port": port}, logging_config=QUIET_LOGS)
    serve.run(build_app(args), name=app_name, route_prefix=route_prefix, logging_config=QUIET_LOGS)
    return f"http://{host}:{port}{route_prefix.rstrip('/')}"


__all__ = ["QUIET_LOGS", "AppArgs", "app", "arm_ref", "build_app", "parse_args", "run_app"]
