"""The model store and the checkpoint format it holds.

  refs.py        StoreVersion (store, name, version) and the references users type
  meta.py        CheckpointMeta: model.json, typed and frozen
  codecs.py      weight codecs (fp32 here; compression/ registers the int8 ones)
  checkpoint.py  a checkpoint directory: write, read, verify, load
  catalog.py     export, list, resolve, describe; lineage records
  aliases.py     aliases.json: alias -> version, with the history of every move

A location is a local path or a pyarrow filesystem URI (s3://, gs://, file://): every function
here takes the same code path for both. The store is the source of truth for versions and
aliases; the MLflow Model Registry mirrors it (modelfoundry.tracking.mirror_registry)."""

from modelfoundry.store.aliases import alias_history, aliases
from modelfoundry.store.catalog import (
    describe,
    entry,
    export,
    lineage_record,
    list_models,
    names,
    resolve,
    set_alias,
    versions,
)
from modelfoundry.store.meta import CheckpointError, CheckpointMeta
from modelfoundry.store.refs import StoreVersion, check_alias, parse_ref

__all__ = [
    "CheckpointError",
    "CheckpointMeta",
    "StoreVersion",
    "alias_history",
    "aliases",
    "check_alias",
    "describe",
    "entry",
    "export",
    "lineage_record",
    "list_models",
    "names",
    "parse_ref",
    "resolve",
    "set_alias",
    "versions",
]
