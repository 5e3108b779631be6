"""What `--resume` reads and writes on a run's storage: the run directories of a job, the config
a run started with (refused on resume when it differs, naming the fields), its newest complete
checkpoint."""

from __future__ import annotations

import pyarrow.fs as pafs

from modelfoundry.config import JobConfig
from modelfoundry.config_flat import config_sha256, flatten
from modelfoundry.storage import absolute, filesystem, is_uri, join
from modelfoundry.store.checkpoint import run_checkpoints

RUN_CONFIG_FILE = "job.json"
# where a run's files go, not what it computes: never compared on --resume
RESUME_IGNORED = {"train.storage", "train.model_store", "train.placement_timeout_s", "train.max_failures"}
# may change on --resume when asked for by name (--allow-change): how long and on what the run goes
# on, not its model, data split or optimisation
RESUME_SAFE = {
    "train.epochs",
    "train.num_workers",
    "train.workers",
    "train.checkpoint_every_steps",
    "train.use_gpu",
    "train.cpus_per_worker",
    "train.keep_checkpoints",
    "train.worker_resources",
    "train.placement_strategy",
    "train.fail_at_epoch",
}


def config_hash(cfg: JobConfig) -> str:
    return config_sha256(cfg.to_dict())


def write_run_config(run_path: str, cfg: JobConfig) -> None:
    """The run's config and its hash, beside its checkpoints: what --resume compares against."""
    import json

    fs, path = filesystem(run_path)
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(f"{path}/{RUN_CONFIG_FILE}") as f:
        f.write(json.dumps({"config": cfg.to_dict(), "sha256": config_hash(cfg)}, indent=1).encode())


def check_resume_config(run_path: str, cfg: JobConfig, allow_changes: set[str]) -> None:
    """Refuse to resume `run_path` with a config that differs from the one it started with,
    naming the changed fields; fields in RESUME_SAFE may change when listed in allow_changes."""
    import json

    fs, path = filesystem(run_path)
    try:
        with fs.open_input_stream(f"{path}/{RUN_CONFIG_FILE}") as f:
            saved = json.loads(f.read())
    except OSError:  # FileNotFoundError included
        print(f"[{cfg.name}] warning: {run_path} has no {RUN_CONFIG_FILE} (an older run); config not checked")
        return
    if saved.get("sha256") == config_hash(cfg):
        return
    old, new = (flatten(c, keep=frozenset({"worker_resources"})) for c in (saved["config"], cfg.to_dict()))
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k) and k not in RESUME_IGNORED)
    unsafe = [k for k in changed if k not in RESUME_SAFE]
    unasked = [k for k in changed if k in RESUME_SAFE and k not in allow_changes]
    if not unsafe and not unasked:
        return
    lines = [f"  {k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed]
    hint = (
        f"{', '.join(unsafe)} change the model, the data split or the optimisation: start a new run (no --resume)"
        if unsafe
        else "to go on with " + " ".join(f"--allow-change {k}" for k in unasked)
    )
    raise ValueError(
        f"--resume: the config differs from the one run {run_path} started with:\n" + "\n".join(lines) + f"\n{hint}"
    )


def run_dirs(storage: str, name: str) -> list[str]:
    """Existing run directories of `name`, oldest first (run ids sort by time)."""
    fs, root = filesystem(join(absolute(storage), name))
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith("run-"))


def latest_checkpoint(run_path: str) -> str | None:
    """The newest complete checkpoint of a run on its storage, by epoch (None when there is none).
    What `--resume` falls back on when Ray Train's own record of the run's checkpoints lags the
    files: a driver killed between a checkpoint's upload and the controller's registering of it
    left complete checkpoints that Ray Train does not know about. Local checkpoints are verified
    (sha256) here; on a URI, a readable model.json (workers verify what they load)."""
    from modelfoundry.store.checkpoint import CheckpointError, verify

    found = []
    for location, meta in run_checkpoints(run_path):
        try:
            if not is_uri(run_path):
                verify(location)
            found.append((int(meta.metrics["epoch"]), location))
        except (CheckpointError, KeyError, TypeError, ValueError):
            continue  # damaged, or not a training checkpoint: not one to resume from
    return max(found)[1] if found else None
