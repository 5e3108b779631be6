"""Typed Serve application builders. Each takes pydantic args (what `serve run` / `serve deploy`
YAML passes as `args:`) and returns a bound Application. Split is a config choice, not code."""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator
from ray import serve
from ray.serve import Application

from modelfoundry.models import build_model, family_spec
from modelfoundry.models.stages import resolve_split
from modelfoundry.serving.auth import load_keys
from modelfoundry.serving.deployments import Ingress, Stage
from modelfoundry.serving.generation import MAX_NEW_TOKENS
from modelfoundry.serving.multiplex import models_deployment
from modelfoundry.serving.options import BatchingOptions, DeploymentOptions, Strict
from modelfoundry.serving.spec import Arm, IngressSpec, Limits, check_traffic
from modelfoundry.storage import absolute
from modelfoundry.store import CheckpointMeta, StoreVersion, parse_ref, resolve
from modelfoundry.store.checkpoint import read_meta

# no access log line per request (a third of a replica's time at a few thousand req/s);
# warnings and errors still reach the logs
QUIET_LOGS = {"log_level": "WARNING", "enable_access_log": False}


class AppArgs(Strict):
    kind: Literal["model", "ensemble", "vae", "multiplex"] = "model"
    model: str | None = None  # a model-store name (kind model / vae)
    # ensemble members, or the models a multiplexed app serves (NAME or NAME:VERSION each)
    models: list[str] | None = None
    # kind multiplex: models loaded at once on one replica of the models deployment (LRU beyond)
    max_models_per_replica: int = Field(default=3, gt=0)
    version: int | Annotated[str, Field(pattern=r"^(latest|@[A-Za-z][A-Za-z0-9_-]{0,31})$")] = "latest"
    store: str = "models"
    name: str | None = None  # the route name: /v1/models/<name>:<verb>
    split: None | int | str | list[list[int]] = None  # None: monolithic; "auto", "auto:K", K or groups
    batching: BatchingOptions | None = None
    max_instances: int = Field(default=256, gt=0)
    max_body_bytes: int = Field(default=1_000_000, gt=0)
    max_new_tokens: int = Field(default=MAX_NEW_TOKENS, gt=0)  # language models, per request
    # OIP v2: the largest reply, known from the outputs' shapes before the model runs (413 beyond)
    max_response_bytes: int = Field(default=8_000_000, gt=0)
    # language models: generations in progress at once per ingress replica (429 + Retry-After beyond)
    max_generations: int = Field(default=64, gt=0)
    # Host header names answered besides loopback ones ("*": any). Unset: loopback only when the app
    # has no API keys (a web page cannot reach it by DNS rebinding), any name when it has keys
    allowed_hosts: list[Annotated[str, Field(pattern=r"^(\*|[A-Za-z0-9._:-]{1,253})$")]] | None = None
    # API keys: the NAME of an env var (comma-separated keys) and/or a key file path; never keys
    api_keys_env: str | None = None
    api_keys_file: str | None = None
    ingress: DeploymentOptions = DeploymentOptions()
    stages: DeploymentOptions = DeploymentOptions()
    # split apps: custom resources per stage, in order, to place each stage on its own nodes
    # (e.g. [{zone_a: 0.01}, {zone_b: 0.01}] with nodes started with --resources)
    stage_placement: list[dict[str, float]] | None = None
    # split apps: per stage, a model-store entry (NAME or NAME:VERSION) whose stages replace the
    # model's there, e.g. [null, "cnn-digits-dynamic-int8"]: an int8 stage beside a float one. It
    # must be a compressed sibling with the same stage boundaries (same family and config).
    stage_models: list[str | None] | None = None
    # canary: the versions this app serves and the percent of requests each gets, e.g.
    # {champion: 90, challenger: 10}; keys are aliases, version numbers or latest. The weights are
    # the Ingress deployment's user_config: `foundry rollout` changes them in place.
    traffic: dict[str, int] | None = None
    # canary: a request header (a user or session id) whose value keeps a client on one version
    sticky_header: str | None = Field(default=None, pattern=r"^[A-Za-z0-9-]{1,64}$")
    # canary: the store version behind each traffic key, pinned when the app was deployed (an
    # alias may move later; a rebuilt app must serve what it served). Resolved when absent.
    arm_versions: dict[str, int] | None = None

    @model_validator(mode="after")
    def _check(self) -> AppArgs:
        if self.traffic is not None:
            check_traffic(self.traffic)
            if self.kind != "model" or self.split is not None or self.stage_models is not None:
                raise ValueError("traffic (a canary) applies to a monolithic model app (kind model, no split)")
            if self.version != "latest":
                raise ValueError("with traffic, name the versions in it (e.g. {champion: 90, '3': 10}), not in version")
            if self.arm_versions is not None and set(self.arm_versions) != set(self.traffic):
                raise ValueError(
                    f"arm_versions names {sorted(self.arm_versions)}; traffic names {sorted(self.traffic)}"
                )
        elif self.sticky_header is not None or self.arm_versions is not None:
            raise ValueError("sticky_header and arm_versions apply to a canary app (one with traffic)")
        if self.kind == "ensemble":
            if not self.models or len(self.models) < 2:
                raise ValueError("an ensemble needs models: a list of at least 2 model-store names")
        elif self.kind == "multiplex":
            if not self.models:
                raise ValueError("kind multiplex needs models: the model-store names (NAME or NAME:VERSION) it serves")
            if len(set(self.models)) != len(self.models):
                raise ValueError(f"models lists a model twice: {self.models}")
        elif not self.model:
            raise ValueError(f"kind {self.kind} needs model: a model-store name")
        if self.stage_models is not None and (self.kind != "model" or self.split is None):
            raise ValueError("stage_models applies to a split model app (kind model with split)")
        return self


def arm_ref(label: str) -> str:
    """A traffic key as a store version: a number or latest as is, else an alias."""
    return label if label.isdigit() or label == "latest" else f"@{label}"


def _load_meta(store: str, name: str, version: int | str) -> tuple[StoreVersion, CheckpointMeta]:
    """A version and its model.json (read alone: replicas fetch and verify the weights)."""
    found = resolve(store, name, version)
    return found, read_meta(found.uri)


def build_app(args: AppArgs | dict) -> Application:
    args = args if isinstance(args, AppArgs) else AppArgs.model_validate(args)
    if args.api_keys_env or args.api_keys_file:  # fail here, not in a replica that never starts
        load_keys(args.api_keys_env, args.api_keys_file)
    store = absolute(args.store)
    batching = args.batching.model_dump() if args.batching else None
    ingress = Ingress.options(**args.ingress.serve_options())
    limits = Limits(
        args.max_instances, args.max_body_bytes, args.max_new_tokens, args.max_response_bytes, args.max_generations
    )
    common = {
        "batching": batching,
        "api_keys_env": args.api_keys_env,
        "api_keys_file": args.api_keys_file,
        "allowed_hosts": tuple(h.lower() for h in args.allowed_hosts) if args.allowed_hosts is not None else None,
    }

    if args.kind == "ensemble":
        members, metas = [], []
        for i, m in enumerate(args.models or []):
            path, meta = _load_meta(store, m, args.version)
            if meta.task != "classification":
                raise ValueError(f"ensemble member {m!r} is a {meta.task} model; members must be classifiers")
            metas.append(meta)
            members.append(
                Stage.options(name=f"member-{i}-{m}", **args.stages.serve_options()).bind(path.uri, None, batching)
            )
        shapes = {m.input_spec.shape for m in metas}
        if len(shapes) > 1:
            raise ValueError(f"ensemble members take different input shapes {sorted(shapes)}; they must agree")
        spec = IngressSpec(
            name=args.name or "ensemble",
            kind="ensemble",
            family="ensemble",
            task="classification",
            verbs=("predict",),
            version="",
            model_path="",
            input_spec=metas[0].input_spec.model_dump(mode="json"),
            config={},
            metrics={},
            dataset=metas[0].dataset_name,
            limits=limits,
            members=args.models,
            **common,
        )
        return ingress.bind(spec, None, members)

    if args.kind == "multiplex":
        return _multiplex_app(args, store, ingress, limits, common)

    if args.traffic is not None:
        return _canary_app(args, store, ingress, limits, common)
    path, meta = _load_meta(store, args.model or "", args.version)
    name = args.name or args.model or ""
    family = family_spec(meta.family)
    if args.kind == "vae" and meta.family != "vae":
        raise ValueError(f"kind vae needs a VAE; model {args.model!r} is a {meta.family}")
    if family.services:  # verbs served by named stage groups (the VAE's encoder and decoder)
        services = [
            Stage.options(name=n, **args.stages.serve_options()).bind(path.uri, list(g), batching)
            for n, g in family.services
        ]
        groups = [list(g) for _, g in family.services]
        return ingress.bind(
            IngressSpec.from_meta(name, "services", path, meta, limits, groups=groups, **common), services
        )

    model = build_model(meta.family, "default", **meta.config)  # structure only, to cut it
    groups = resolve_split(model, args.split)
    if len(groups) == 1:
        return ingress.bind(IngressSpec.from_meta(name, "model", path, meta, limits, groups=groups, **common))
    placement = args.stage_placement or [{}] * len(groups)
    if len(placement) != len(groups):
        raise ValueError(f"stage_placement has {len(placement)} entries; the split has {len(groups)} stages {groups}")
    paths = _stage_paths(args, store, path, meta, len(groups))
    stages = [
        Stage.options(name=f"stage-{i}", **args.stages.serve_options(extra_resources=placement[i])).bind(
            paths[i].uri, g, batching
        )
        for i, g in enumerate(groups)
    ]
    return ingress.bind(IngressSpec.from_meta(name, "split", path, meta, limits, groups=groups, **common), stages)


def _multiplex_app(args: AppArgs, store: str, ingress, limits: Limits, common: dict[str, Any]) -> Application:
    """Many models of one family behind one ingress, on the shared replicas of one deployment."""
    paths, metas = {}, []
    for ref in args.models or []:
        name, version = parse_ref(ref)
        path, meta = _load_meta(store, name, version if ":" in ref else args.version)
        if meta.task not in ("classification", "regression"):
            raise ValueError(f"multiplexed model {ref!r} is a {meta.task} model; only predict models multiplex")
        paths[ref] = path.uri
        metas.append(meta)
    kinds = {(m.family, m.task, m.input_spec.shape) for m in metas}
    if len(kinds) > 1:
        raise ValueError(f"multiplexed models must share family, task and input shape; they have {sorted(kinds)}")
    models = models_deployment(args.max_models_per_replica).options(**args.stages.serve_options()).bind(paths)
    first = metas[0]
    spec = IngressSpec(
        name=args.name or "multiplex",
        kind="multiplex",
        family=first.family,
        task=first.task or "classification",
        verbs=("predict",),
        version="",
        model_path="",
        input_spec=first.input_spec.model_dump(mode="json"),
        config={},
        metrics={},
        dataset=first.dataset_name,
        limits=limits,
        members=list(paths),
        **common,
    )
    return ingress.bind(spec, [models])


def _canary_app(args: AppArgs, store: str, ingress, limits: Limits, common: dict[str, Any]) -> Application:
    """One ingress serving several versions of one model, each request routed by the traffic
    weights (the Ingress deployment's user_config, changed in place by `foundry rollout`)."""
    arms, metas, found = [], [], []
    pinned = args.arm_versions or {}
    for label in args.traffic or {}:
        path, meta = _load_meta(store, args.model or "", pinned.get(label) or arm_ref(label))
        if family_spec(meta.family).verbs != ("predict",):
            raise ValueError(f"a canary serves predict models; {args.model} is a {meta.family} ({meta.task})")
        arms.append(Arm(label, str(path.version), path.uri))
        metas.append(meta)
        found.append(path)
    shapes = {(m.family, m.input_spec.shape, m.task) for m in metas}
    if len(shapes) > 1:
        raise ValueError(f"the versions in traffic must share family, input shape and task; they have {sorted(shapes)}")
    name = args.name or args.model or ""
    spec = IngressSpec.from_meta(
        name, "model", found[0], metas[0], limits, arms=tuple(arms), sticky_header=args.sticky_header, **common
    )
    return ingress.options(user_config={"traffic": dict(args.traffic or {})}).bind(spec)


def _stage_paths(args: AppArgs, store: str, path: StoreVersion, meta: CheckpointMeta, n: int) -> list[StoreVersion]:
    """The model each stage loads: the app's, or a compressed sibling named in stage_models."""
    if args.stage_models is None:
        return [path] * n
    if len(args.stage_models) != n:
        raise ValueError(f"stage_models has {len(args.stage_models)} entries; the split has {n} stages")
    paths = []
    for ref in args.stage_models:
        if ref is None:
            paths.append(path)
            continue
        other, other_meta = _load_meta(store, *parse_ref(ref))
        if (other_meta.family, other_meta.config) != (meta.family, meta.config):
            raise ValueError(
                f"stage_models: {ref!r} ({other_meta.family} {other_meta.config}) does not have the stage "
                f"boundaries of {args.model!r} ({meta.family} {meta.config}); use a quantized copy of it"
            )
        paths.append(other)
    return paths


def app(args: AppArgs) -> Application:
    """The import path `modelfoundry.serving.apps:app` for `serve deploy` configs (declarative
    apps; a canary's traffic is changed in place through them, serving/rollout.py)."""
    return build_app(args)


# real classes (not this module's postponed strings): Serve validates `args:` into AppArgs by them
app.__annotations__ = {"args": AppArgs, "return": Application}


def run_app(
    args: AppArgs | dict, app_name: str = "default", route_prefix: str = "/", host: str = "127.0.0.1", port: int = 8000
) -> str:
    """Deploy on the connected cluster (HTTP bound to loopback unless told); returns the base URL.
    Serve's driver-side INFO lines ("Started Serve", "Application ... is ready") stay out of the
    console: the caller prints where the app is."""
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    serve.start(http_options={"host": host, "port": port}, logging_config=QUIET_LOGS)
    serve.run(build_app(args), name=app_name, route_prefix=route_prefix, logging_config=QUIET_LOGS)
    return f"http://{host}:{port}{route_prefix.rstrip('/')}"
