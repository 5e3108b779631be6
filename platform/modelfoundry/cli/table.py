"""One table of commands: each `Command` holds its help, its arguments and its handler together,
and `foundry` is built from the table (cli/__init__.py). Nothing heavy is imported here or by the
command modules at import: `foundry --help` loads neither torch nor Ray (handlers import lazily)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Command:
    name: str  # "train", or "models alias" for a subcommand of `models`
    help: str  # one line, in `foundry --help`
    description: str  # the paragraph at the top of `foundry NAME --help`
    example: str  # a command to copy (run from the project root); "" for a group
    arguments: Callable[[argparse.ArgumentParser], None] = lambda p: None
    run: Callable[..., int] | None = None  # None: a group of subcommands
    passes_rest: bool = False  # unknown options go to the handler (submit: the job's own options)
    aliases: tuple[str, ...] = field(default_factory=tuple)


def add_tracking_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<run storage>/mlflow.db; "
        "open it with `mlflow ui --backend-store-uri sqlite:///runs/mlflow.db`)",
    )


def add_cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local cluster)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument(
        "--verbose", action="store_true", help="show the workers' and Ray's own log lines (always in Ray's log files)"
    )


def add_store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default="models", help="model store directory or URI (default: models)")


def print_json(obj: object) -> None:
    """The --json object as the very last line of stdout. Ray forwards worker log lines (its
    deduplicated "[repeated Nx]" lines among them) from a background thread until the driver
    disconnects: disconnect first, so nothing can follow the JSON."""
    import json
    import sys

    import ray

    if ray.is_initialized():
        ray.shutdown()
    sys.stderr.flush()
    print(json.dumps(obj, default=str), flush=True)
