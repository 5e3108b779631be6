"""The `foundry` command, built from one table of commands (cli/table.py): each command module
holds its commands' help, arguments and handlers together.

  training.py  train, tune, run        compress.py  compress, export
  serve.py     serve, rollout          models.py    models list | show | alias
  jobs.py      submit, jobs

Nothing heavy at import: `foundry --help` and `--version` answer without loading torch or Ray."""

from __future__ import annotations

import argparse
import sys

from modelfoundry.cli import compress, jobs, models, serve, training
from modelfoundry.cli.serve import parse_traffic
from modelfoundry.cli.table import Command

TABLE: list[Command] = [*training.COMMANDS, *compress.COMMANDS, *serve.COMMANDS, *jobs.COMMANDS, *models.COMMANDS]
BY_NAME: dict[str, Command] = {c.name: c for c in TABLE}
# each subcommand's --help: what it does, and a command to copy (run from the project root)
ABOUT: dict[str, tuple[str, str]] = {c.name: (c.description, c.example) for c in TABLE}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("modelfoundry")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="foundry",
        description="Train, tune, compress, export and serve model families on Ray.",
        epilog="example: foundry run --config jobs/configs/cnn_digits.yaml   (foundry COMMAND --help for each)",
    )
    parser.add_argument("--version", action="version", version=f"foundry {_version()}")
    groups = {"": parser.add_subparsers(dest="command", required=True)}
    for c in TABLE:  # a group ("models") comes before its subcommands ("models list")
        parent, _, leaf = c.name.rpartition(" ")
        p = groups[parent].add_parser(
            leaf, help=c.help, description=c.description, epilog=f"example: {c.example}" if c.example else None
        )
        if c.run is None:
            groups[c.name] = p.add_subparsers(dest=f"{c.name.replace(' ', '_')}_command", required=True)
        c.arguments(p)
        p.set_defaults(_command=c.name)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    command = BY_NAME[args._command]
    if rest and not command.passes_rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if command.passes_rest:
            return command.run(args, rest)  # the rest are the job's own options (submit)
        return command.run(args)
    except ValueError as err:  # config.ConfigError is one
        print(f"foundry {command.name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"foundry {command.name}: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as err:
        code = getattr(err, "exit_code", 1)  # an interrupted sweep: 130, as for Ctrl-C
        print(f"foundry {command.name}: {'interrupted' if code == 130 else 'failed'}: {err}", file=sys.stderr)
        return code


__all__ = ["ABOUT", "TABLE", "build_parser", "main", "parse_traffic"]
