"""Model families from outside the platform. `model.family` may name

  package.module:ATTR   a FamilySpec in an importable module (installed on every node, on the
                        PYTHONPATH Ray's processes start with, or inside the project directory
                        `foundry submit` uploads as the job's working_dir)
  NAME                  a FamilySpec an installed package registers in the entry-point group
                        `modelfoundry.families` (pyproject: [project.entry-points."modelfoundry.families"])

The spec is checked when it is loaded, so a mistake is one clear error at config time, not a crash
in a worker. Checkpoints record the reference, so a Serve replica or a Train worker imports the
family by the same name."""

from __future__ import annotations

import importlib
import re
from importlib import metadata
from typing import get_args

from torch import nn

from modelfoundry.models.spec import FamilyConfig, FamilySpec, InputKind, Task

ENTRY_POINT_GROUP = "modelfoundry.families"
REFERENCE_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")
REQUIRED_PRESETS = ("tiny", "default")
KNOWN_VERBS = ("predict", "encode", "decode", "reconstruct", "sample", "generate")

_loaded: dict[str, FamilySpec] = {}  # reference -> spec, in this process


def loaded() -> dict[str, FamilySpec]:
    return dict(_loaded)


def load(reference: str, builtin: list[str]) -> FamilySpec:
    if reference in _loaded:
        return _loaded[reference]
    if not isinstance(reference, str):
        raise ValueError(f"model family must be a name, got {reference!r}")
    if ":" in reference:
        obj = _import(reference)
    else:
        obj = _entry_point(reference, builtin)
    spec = check(obj, reference)
    _loaded[reference] = spec
    return spec


def _import(reference: str) -> object:
    if not REFERENCE_RE.match(reference):
        raise ValueError(f"model family {reference!r} must be package.module:ATTR (dotted names, one ':')")
    module_name, _, attr = reference.partition(":")
    try:
        obj: object = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(
            f"model family {reference!r}: module {module_name!r} cannot be imported ({err}). Install the package "
            "that holds it where the job runs (every node), put its directory on PYTHONPATH, or keep it in the "
            "project directory `foundry submit` uploads (the job's working_dir)"
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"model family {reference!r}: {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _entry_point(name: str, builtin: list[str]) -> object:
    found = metadata.entry_points(group=ENTRY_POINT_GROUP, name=name)
    if not found:
        installed = sorted(ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP))
        raise ValueError(
            f"unknown model family {name!r}; choose one of {builtin}"
            + (f", the installed {installed}" if installed else "")
            + ", or name your own FamilySpec as package.module:ATTR"
        )
    try:
        return next(iter(found)).load()
    except Exception as err:  # the package is broken: say which entry point
        raise ValueError(
            f"model family {name!r} (entry point {next(iter(found)).value}) fails to load: {err}"
        ) from None


def check(obj: object, reference: str) -> FamilySpec:
    """A FamilySpec the platform can train, tune, compress, export and serve; else one ValueError
    naming every problem."""
    if not isinstance(obj, FamilySpec):
        raise ValueError(
            f"model family {reference!r} is a {type(obj).__name__}, not a modelfoundry FamilySpec "
            "(from modelfoundry.models import FamilySpec)"
        )
    problems = []
    if not (isinstance(obj.model, type) and issubclass(obj.model, nn.Module)):
        problems.append(f"model must be an nn.Module class, got {obj.model!r}")
    if not (isinstance(obj.config, type) and issubclass(obj.config, FamilyConfig)):
        problems.append(f"config must be a FamilyConfig subclass, got {obj.config!r}")
    else:
        fields = set(obj.config.model_fields)
        missing = [f for f in obj.data_fields if f not in fields]
        if missing:
            problems.append(f"config {obj.config.__name__} lacks the fields the dataset sets: {missing}")
        if "input_shape" not in fields and not hasattr(obj.config, "input_shape"):
            problems.append(f"config {obj.config.__name__} has no input_shape (a field or a property)")
        for preset, values in obj.presets.items():
            unknown = sorted(set(values) - fields)
            if unknown:
                problems.append(f"preset {preset!r} sets unknown fields {unknown}")
    lacking = [p for p in REQUIRED_PRESETS if p not in obj.presets]
    if lacking:
        problems.append(f"presets must include {list(REQUIRED_PRESETS)}; missing {lacking}")
    kinds = set(get_args(InputKind))
    if not obj.inputs or not set(obj.inputs) <= kinds:
        problems.append(f"inputs must be a non-empty subset of {sorted(kinds)}, got {sorted(obj.inputs)}")
    if obj.task is not None and obj.task not in get_args(Task):
        problems.append(f"task must be one of {list(get_args(Task))} or None, got {obj.task!r}")
    if not obj.verbs or not set(obj.verbs) <= set(KNOWN_VERBS):
        problems.append(f"verbs must be among {list(KNOWN_VERBS)}, got {list(obj.verbs)}")
    if problems:
        raise ValueError(f"model family {reference!r} is not usable: " + "; ".join(problems))
    return obj
