"""`foundry models list | show | alias`: the model store."""

from __future__ import annotations

import argparse
import json
from typing import Any

from modelfoundry.cli.table import Command, add_store_arg, add_tracking_arg


def _list_args(p: argparse.ArgumentParser) -> None:
    add_store_arg(p)
    p.add_argument("--json", action="store_true")


def cmd_list(args: argparse.Namespace) -> int:
    from modelfoundry.store import list_models

    rows = list_models(args.store)
    if args.json:
        print(json.dumps(rows))
        return 0
    if not rows:
        print(f"no models in {args.store}")
        return 0
    print(f"{'name':24} {'ver':>4} {'family':6} {'dataset':14} metrics / path")
    for r in rows:
        named = f"  @{', @'.join(r['aliases'])}" if r["aliases"] else ""
        print(
            f"{r['name']:24} {r['version']:>4} {r['family']:6} {str(r['dataset']):14} {_test_metrics(r)}{named}\n"
            f"{'':51}{r['path']}"
        )
    return 0


def _test_metrics(entry: dict[str, Any]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in entry["metrics"].items() if k.startswith("test_") and isinstance(v, float)}


def _show_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="NAME, NAME:VERSION or NAME@ALIAS")
    add_store_arg(p)
    p.add_argument("--json", action="store_true")


def cmd_show(args: argparse.Namespace) -> int:
    from modelfoundry.store import describe

    d = describe(args.store, args.model)
    if args.json:
        print(json.dumps(d, default=str))
        return 0
    for i, v in enumerate(d["chain"]):
        head = f"{v['name']} v{v['version']} ({v['family']}, {v['dataset']})"
        aliases = f"  aliases: {v['aliases']}" if v["aliases"] else ""
        print(("" if i == 0 else "  " * i + "<- parent ") + head + aliases)
        _print_lineage("  " * (i + 1), v)
    return 0


def _print_lineage(pad: str, v: dict[str, Any]) -> None:
    lin = v.get("lineage") or {}
    print(f"{pad}metrics: {_test_metrics(v)}")
    for key in ("run", "sweep", "trial"):
        if lin.get(key):
            print(f"{pad}{key}: {', '.join(f'{k}={x}' for k, x in lin[key].items() if x is not None)}")
    if lin:
        print(
            f"{pad}config sha256 {lin['config_sha256'][:16]}..., dataset {lin.get('dataset')} "
            f"(split seed {lin.get('split_seed')})"
        )
        if lin.get("tracking_run_id"):
            print(f"{pad}MLflow run: {lin['tracking_run_id']}")
        print(f"{pad}libraries: {lin.get('versions')}")
    else:
        print(f"{pad}lineage: not recorded (exported before lineage was recorded)")
    print(f"{pad}path: {v['path']}")


def _alias_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="the model-store name")
    p.add_argument("version", nargs="?", help="the version: a number, 'latest', or @ALIAS (copies that alias)")
    p.add_argument("alias", nargs="?", help="the alias: champion, challenger, any name")
    p.add_argument("--delete", metavar="ALIAS", help="remove this alias")
    add_store_arg(p)
    add_tracking_arg(p)


def cmd_alias(args: argparse.Namespace) -> int:
    from modelfoundry import tracking
    from modelfoundry.store import set_alias

    if args.delete:
        if args.version or args.alias:
            raise ValueError("--delete ALIAS takes no VERSION or ALIAS arguments")
        move = set_alias(args.store, args.model, args.delete, None)
        print(f"{args.model}@{args.delete} removed (was v{move['previous']})")
    else:
        if not (args.version and args.alias):
            raise ValueError("give VERSION and ALIAS (foundry models alias NAME VERSION ALIAS), or --delete ALIAS")
        move = set_alias(args.store, args.model, args.alias, args.version)
        was = f" (was v{move['previous']})" if move["previous"] is not None else ""
        print(f"{args.model}@{args.alias} -> v{move['version']}{was}")
    mirrored = tracking.mirror_registry(tracking.registry_uri(args.tracking_uri), args.store, args.model)
    if mirrored is not None:
        print(f"   mirrored to the MLflow registry: {mirrored}")
    return 0


COMMANDS = [
    Command(
        "models",
        "the model store",
        "The model store: every exported version with its family, dataset, test metrics, lineage and aliases.",
        "",
    ),
    Command(
        "models list",
        "list exported models",
        "List the model store's versions.",
        "foundry models list --store models",
        _list_args,
        cmd_list,
    ),
    Command(
        "models show",
        "one version: aliases, metrics, lineage chain",
        "One version (NAME, NAME:VERSION or NAME@ALIAS): its aliases, metrics and lineage chain (run, sweep, "
        "trial, config hash, dataset and split seed, parent versions of a compressed model).",
        "foundry models show cnn-digits@champion --store models",
        _show_args,
        cmd_show,
    ),
    Command(
        "models alias",
        "point an alias at a version (or --delete it)",
        "Point an alias (champion, challenger, any name) at a version, or move it; --delete removes it. The "
        "store holds aliases and their history (the source of truth); the MLflow registry mirrors them.",
        "foundry models alias cnn-digits 3 champion --store models",
        _alias_args,
        cmd_alias,
    ),
]
