"""`foundry serve` (a stored model or a Serve YAML) and `foundry rollout` (a live canary's traffic)."""

from __future__ import annotations

import argparse
import json

from modelfoundry.cli.table import Command, add_store_arg, add_tracking_arg

DEFAULT_BUDGET = 8  # --max-replicas-total


def _serve_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("target", help="a model-store name (NAME, NAME:VERSION or NAME@ALIAS), or a serve_apps/*.yaml file")
    s.add_argument("--split", help="cut the model into stage services: auto, auto:K, or JSON groups like [[0],[1,2]]")
    s.add_argument(
        "--stage-models",
        help="with --split: JSON list, per stage, of a model-store entry to run there instead (null keeps the "
        "model), e.g. '[null, \"cnn-digits-dynamic-int8\"]' for an int8 stage beside a float one",
    )
    s.add_argument(
        "--version", default="latest", help="a version number, latest, or @ALIAS (or NAME:VERSION, NAME@ALIAS)"
    )
    s.add_argument(
        "--traffic",
        help="a canary: versions and percents, e.g. champion=90,challenger=10 (aliases, version numbers or "
        "latest); change it live with foundry rollout",
    )
    s.add_argument(
        "--sticky-header",
        help="with --traffic: a request header (user or session id) that keeps a client on one version",
    )
    _slo_args(s.add_argument_group("latency objective (a split app)"))
    add_store_arg(s)
    s.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default: loopback only)")
    s.add_argument("--api-keys-env", help="NAME of an env var holding comma-separated API keys (required off loopback)")
    s.add_argument("--api-keys-file", help="a file of API keys, one per line (required off loopback)")
    s.add_argument(
        "--insecure", action="store_true", help="allow a non-loopback --host without API keys (anyone can call it)"
    )
    s.add_argument(
        "--allowed-host",
        action="append",
        dest="allowed_hosts",
        metavar="NAME",
        help="a Host header name to answer besides loopback ones (repeatable; '*' for any). Without API keys "
        "other names get 421, which stops web pages reaching the service by DNS rebinding",
    )
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--for", dest="duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    s.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local cluster)")


def _slo_args(g) -> None:
    g.add_argument(
        "--slo-p99-ms",
        type=float,
        help="a p99 objective (ms) for the whole graph: a planner sets every stage's replicas to hold it at the "
        "fewest replicas (refused at start when the stages alone take longer)",
    )
    g.add_argument("--max-replicas-total", type=int, help="the stages' and variant's replica budget (default 8)")
    g.add_argument("--min-replicas", type=int, help="replicas per stage when idle (default 1; 0 scales to zero)")
    g.add_argument(
        "--variant",
        help="a cheaper version (@ALIAS, NAME, NAME:VERSION) that answers a share of requests when the budget "
        "cannot hold the objective",
    )
    g.add_argument("--status", action="store_true", help="print the live plan of the app TARGET names")


def cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import time

    from ray import serve

    if args.status:
        return _slo_status(args)
    urls = _serve_yaml(args) if args.target.endswith((".yaml", ".yml")) else _serve_model(args)
    for url in urls:
        print(f"serving at {url}  (GET {url}/v1/models, POST {url}/v1/models/<name>:<verb>, the page at {url}/)")
    # SIGTERM (docker stop, systemd, a supervisor) shuts Serve and the local cluster down like
    # Ctrl-C, exit status 0 (without this the process died of SIGABRT, skipping Serve's shutdown)
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        deadline = time.monotonic() + args.duration if args.duration else None
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    serve.shutdown()
    return 0


def _serve_yaml(args: argparse.Namespace) -> list[str]:
    from modelfoundry.cluster import connect
    from modelfoundry.serving.auth import check_exposure
    from modelfoundry.serving.config_file import load_serve_config, run_serve_config

    if args.allowed_hosts:
        raise ValueError("with a serve YAML, set allowed_hosts in each application's args, not --allowed-host")
    data = load_serve_config(args.target)  # a bad file fails before Ray starts
    for app in data["applications"]:  # run_serve_config binds --host
        a = app.get("args") or {}
        check_exposure(args.host, bool(a.get("api_keys_env") or a.get("api_keys_file")), args.insecure)
    print(connect(args.address), flush=True)
    return run_serve_config(args.target, host=args.host, port=args.port)


def _serve_model(args: argparse.Namespace) -> list[str]:
    from modelfoundry.cluster import connect
    from modelfoundry.serving.apps import build_app, parse_args, run_app
    from modelfoundry.serving.auth import check_exposure, is_loopback
    from modelfoundry.store import parse_ref, resolve

    name, version = parse_ref(args.target)
    if version != "latest" and args.version != "latest":
        raise ValueError(f"give the version once: {args.target} or --version {args.version}")
    version = version if version != "latest" else args.version
    split = json.loads(args.split) if args.split and args.split.startswith("[") else args.split
    given = {
        "model": name,
        "version": int(version) if version.isdigit() else version,
        "split": split,
        "stage_models": json.loads(args.stage_models) if args.stage_models else None,
        "traffic": parse_traffic(args.traffic) if args.traffic else None,
        "sticky_header": args.sticky_header,
        "slo": _slo(args),
    }
    app_args = parse_args(
        {
            **{k: v for k, v in given.items() if v is not None},
            "store": args.store,
            "api_keys_env": args.api_keys_env,
            "api_keys_file": args.api_keys_file,
            "allowed_hosts": args.allowed_hosts,
        }
    )
    canary = app_args.kind == "canary"
    keyed = bool(args.api_keys_env or args.api_keys_file)
    check_exposure(args.host, keyed, args.insecure)
    if args.insecure and not (keyed or args.allowed_hosts) and not is_loopback(args.host):
        print(
            "note: without API keys the service answers loopback Host names only (a web page cannot "
            "reach it by DNS rebinding); add --allowed-host NAME for the names clients use, or '*'",
            flush=True,
        )
    resolve(args.store, name, "latest" if canary else app_args.version)  # an unknown model first
    build_app(app_args)  # an unknown version or alias, bad keys: all fail before Ray starts
    print(connect(args.address), flush=True)
    if getattr(app_args, "slo", None) is not None:
        from modelfoundry.serving.slo_app import deploy_slo

        url = deploy_slo(app_args, name, host=args.host, port=args.port)
        print(f"{name}: p99 objective {app_args.slo.p99_ms:g} ms; see the plan with: foundry serve {name} --status")
        return [url]
    if not canary:
        return [run_app(app_args, host=args.host, port=args.port)]
    from modelfoundry.serving.rollout import deploy_canary

    url = deploy_canary(app_args, name, host=args.host, port=args.port)
    print(f"canary {name}: {app_args.traffic}; change it with: foundry rollout {name} --weight ARM=PERCENT")
    return [url]


def _slo(args: argparse.Namespace) -> dict | None:
    given = {"max_replicas_total": args.max_replicas_total, "min_replicas": args.min_replicas, "variant": args.variant}
    if args.slo_p99_ms is None:
        named = [f"--{k.replace('_', '-')}" for k, v in given.items() if v is not None]
        if named:
            raise ValueError(f"{', '.join(named)} apply with --slo-p99-ms (a latency objective)")
        return None
    return {"p99_ms": args.slo_p99_ms, **{k: v for k, v in given.items() if v is not None}} | (
        {} if args.max_replicas_total is not None else {"max_replicas_total": DEFAULT_BUDGET}
    )


def _slo_status(args: argparse.Namespace) -> int:
    import os

    from modelfoundry.cluster import LOOPBACK_ENV, connect

    if not (args.address or os.environ.get("RAY_ADDRESS")):  # the local cluster lives on 127.0.0.1
        os.environ.setdefault(LOOPBACK_ENV, "0")
    from modelfoundry.serving.slo_app import format_status, status

    try:
        connect(args.address or os.environ.get("RAY_ADDRESS") or "auto", log_to_driver=False)
    except ConnectionError as err:
        raise ValueError(f"no Ray cluster to reach ({str(err).splitlines()[0]}); is foundry serve running?") from None
    print(format_status(status(args.target)))
    return 0


def parse_traffic(text: str) -> dict[str, int]:
    """champion=90,challenger=10 -> {"champion": 90, "challenger": 10}."""
    out: dict[str, int] = {}
    for part in text.split(","):
        label, sep, weight = part.strip().partition("=")
        if not sep or not weight.strip().isdigit() or not label.strip():
            raise ValueError(f"--traffic/--weight {part.strip()!r}: give ARM=PERCENT, e.g. champion=90,challenger=10")
        if label.strip() in out:
            raise ValueError(f"--traffic/--weight names {label.strip()!r} twice")
        out[label.strip()] = int(weight)
    return out


def _rollout_args(ro: argparse.ArgumentParser) -> None:
    ro.add_argument("app", help="the canary app: the model name foundry serve --traffic deployed")
    act = ro.add_mutually_exclusive_group(required=True)
    act.add_argument(
        "--weight", action="append", metavar="ARM=PERCENT", help="e.g. challenger=25 (the other arm takes the rest)"
    )
    act.add_argument(
        "--promote",
        nargs="?",
        const="challenger",
        metavar="ARM",
        help="ARM (default challenger) becomes champion and takes all traffic",
    )
    act.add_argument(
        "--rollback", action="store_true", help="all traffic back to the champion arm, and the champion alias with it"
    )
    act.add_argument("--status", action="store_true", help="print the live weights")
    ro.add_argument("--address", help="the Ray cluster serving the app (default: $RAY_ADDRESS, else the local one)")
    add_tracking_arg(ro)


def cmd_rollout(args: argparse.Namespace) -> int:
    import os
    import time

    from modelfoundry.cluster import LOOPBACK_ENV, connect

    if not (args.address or os.environ.get("RAY_ADDRESS")):  # the local cluster lives on 127.0.0.1
        os.environ.setdefault(LOOPBACK_ENV, "0")  # read by Ray at import (cluster.keep_on_loopback)
    from modelfoundry.serving import rollout

    weights = {}
    for w in args.weight or []:
        weights.update(parse_traffic(w))
    # the app's cluster: --address, $RAY_ADDRESS, else the local cluster foundry serve started
    try:
        connect(args.address or os.environ.get("RAY_ADDRESS") or "auto", log_to_driver=False)
    except ConnectionError as err:
        raise ValueError(
            f"no Ray cluster to reach ({str(err).splitlines()[0]}); is `foundry serve ... --traffic` running? "
            "Pass --address for a remote cluster"
        ) from None
    if args.status:
        _, _, live = rollout.live_canary(args.app)
        print(f"{args.app}: {live}")
        return 0
    t0 = time.perf_counter()
    if args.promote:
        out = rollout.promote(args.app, args.promote, tracking_uri=args.tracking_uri)
        weights, note = out["weights"], f"; champion -> v{out['alias']['version']} (was v{out['alias']['previous']})"
    elif args.rollback:
        out = rollout.rollback(args.app, tracking_uri=args.tracking_uri)
        weights, note = out["weights"], f"; champion back to v{out['alias']['version']}" if out["alias"] else ""
    else:
        weights, note = rollout.set_traffic(args.app, weights), ""
    print(f"{args.app}: {weights}{note} (in place, every replica serving it after {time.perf_counter() - t0:.2f}s)")
    return 0


COMMANDS = [
    Command(
        "serve",
        "serve a model-store name or a Serve config YAML on Ray Serve",
        "Serve a model-store entry (monolithic or split into stage services) or a Serve YAML over "
        "HTTP: the v1 REST API, Open Inference Protocol v2, and a demo page at /.",
        "foundry serve cnn-digits --store models --port 8000",
        _serve_args,
        cmd_serve,
    ),
    Command(
        "rollout",
        "change a live canary app's traffic, promote or roll back",
        "Change a live canary app's traffic between its versions in place (no replica restarts, no dropped "
        "requests), or --promote the challenger to champion, or --rollback to the champion.",
        "foundry rollout cnn-digits --weight challenger=25",
        _rollout_args,
        cmd_rollout,
    ),
]
