"""Run a Serve config file (the `serve run` / `serve deploy` YAML) through the platform: each
application's import_path builder is called with its args, HTTP bound to loopback by default."""

from __future__ import annotations

import importlib
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from ray import serve

from modelfoundry.serving.app_args import CanaryArgs, parse_args
from modelfoundry.serving.apps import QUIET_LOGS


def load_serve_config(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"serve config {path!r} does not exist")
    data = yaml.safe_load(p.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("applications"), list) or not data["applications"]:
        raise ValueError(f"serve config {path!r} needs a non-empty 'applications' list")
    return data


def run_serve_config(path: str, host: str | None = None, port: int | None = None) -> list[str]:
    data = load_serve_config(path)
    http = data.get("http_options") or {}
    host, port = host or http.get("host", "127.0.0.1"), port or http.get("port", 8000)
    serve.start(http_options={"host": host, "port": port}, logging_config=QUIET_LOGS)
    urls = []
    for app in data["applications"]:
        module_name, _, attr = app["import_path"].partition(":")
        builder = getattr(importlib.import_module(module_name), attr)
        # as Serve calls a builder: the args validated by its pydantic annotation, else as a dict
        # (the platform's own builder validates a dict by the app's kind)
        arg_type = next(iter(typing.get_type_hints(builder).values()), None)
        raw = app.get("args") or {}
        given = arg_type.model_validate(raw) if isinstance(arg_type, type) and issubclass(arg_type, BaseModel) else raw
        args = parse_args(given)  # every mistake fails here, before anything is deployed
        prefix = app.get("route_prefix", "/")
        logs = app.get("logging_config") or data.get("logging_config") or QUIET_LOGS
        if isinstance(args, CanaryArgs):  # declarative, its weights changed in place
            from modelfoundry.serving.rollout import deploy_canary

            urls.append(deploy_canary(args, app["name"], prefix, host, port))
            continue
        if getattr(args, "slo", None) is not None:  # declarative, its planner the app's policy
            from modelfoundry.serving.slo_app import deploy_slo

            urls.append(deploy_slo(args, app["name"], host, port, prefix))
            continue
        serve.run(builder(given), name=app["name"], route_prefix=prefix, logging_config=logs)
        urls.append(f"http://{host}:{port}{prefix.rstrip('/')}")
    return urls
