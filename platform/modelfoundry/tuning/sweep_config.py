"""Sweep configs: a base job config plus a search space over dotted field paths, validated
before any trial starts.

    name: tune-cnn-digits
    base: cnn_digits.yaml            # a job config, relative to this file (or `job:` inline)
    overrides: {train.epochs: 12}    # fixed changes to the base
    search:
      train.lr: {loguniform: [0.0003, 0.01]}
      model.dropout: {uniform: [0.0, 0.5]}
      model.hidden: {choice: [32, 64, 128]}
      train.batch_size: {grid: [16, 32]}
      model.hidden_size: {randint: [16, 129]}     # high is exclusive
    tune: {num_samples: 8, scheduler: asha, searcher: random, workers_per_trial: 1}

Compression as a search dimension (a `compress:` section, searched as compress.* paths): each
trial trains, then prunes (and fine-tunes), distils from a teacher and/or quantizes its model,
and reports the objectives in tune.objectives (default: the task metric, p50 batch-1 latency and
size in bytes); tune.searcher nsga2 (Optuna's NSGA-II) searches all of them at once and the sweep
writes the Pareto front (pareto.csv, pareto.png) and exports its members to the model store.

    search:
      model.hidden_sizes: {choice: [[32], [64], [128]]}
      compress.prune_ratio: {choice: [0.0, 0.25, 0.5]}
      compress.quantize: {choice: [false, true]}
    compress: {finetune_epochs: 2}
    tune: {num_samples: 12, scheduler: fifo, searcher: nsga2}

tune.scheduler: asha (default; stops weak trials early), fifo (every trial to the end) or pbt
(population based training: every perturbation_interval epochs the bottom quantile_fraction of
trials continue from a top trial's checkpoint with mutated train.lr / weight_decay / momentum /
batch_size).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelfoundry.compression.quantize import Scheme, check_scheme
from modelfoundry.config import ConfigError, JobConfig, apply_overrides, load_config, parse_config, read_yaml

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")
# what PBT may change in a running trial: hyperparameters that carry over a checkpoint. Other search
# paths (widths, dropout...) are sampled once; an exploit copies them with the donor's weights.
PBT_MUTABLE = ("train.lr", "train.weight_decay", "train.momentum", "train.batch_size")


def runs_in_process(sweep: SweepConfig) -> bool:
    """One-worker trials run the training loop inside the Tune function (no TorchTrainer: ~10 s
    less per trial start); larger ones fit a TorchTrainer. Augmented data streams through Ray
    Data, so those trials use the TorchTrainer too."""
    augmented = sweep.job.data.augment or "data.augment" in sweep.search
    return sweep.tune.workers_per_trial == 1 and not augmented


def pbt_mutable(search: dict[str, Any]) -> list[str]:
    return [p for p in search if p in PBT_MUTABLE]


class TuneSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    num_samples: int = Field(default=8, gt=0)
    max_concurrent_trials: int | None = Field(default=None, gt=0)
    scheduler: Literal["asha", "fifo", "pbt"] = "asha"
    searcher: Literal["random", "optuna", "nsga2"] = "random"
    metric: str | None = None  # default: the task's metric (test_accuracy / test_mae / test_neg_elbo)
    # compression sweeps: what the searcher optimises together (the front is over these)
    objectives: list[str] | None = None
    grace_period: int = Field(default=2, gt=0)  # ASHA: epochs before a trial can be stopped
    reduction_factor: float = Field(default=3.0, gt=1.0)
    perturbation_interval: int = Field(default=2, gt=0)  # PBT: epochs between exploit/explore steps
    quantile_fraction: float = Field(default=0.25, gt=0.0, le=0.5)  # PBT: bottom share copies the top
    # PBT: false (Tune's default) exploits as each trial reaches an interval, against whoever has
    # reported by then, so what happens depends on timing; true waits for the whole population at
    # every interval (trials that arrive first pause): reproducible, and slower when trials differ
    synch: bool = False
    workers_per_trial: int = Field(default=1, gt=0)
    cpus_per_worker: float = Field(default=1.0, gt=0.0)
    gpus_per_worker: float = Field(default=0.0, ge=0.0)
    seed: int = 0


class CompressDims(BaseModel):
    """What a compression sweep does to each trial's trained model (compress.* search paths)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    prune_ratio: float = Field(default=0.0, ge=0.0, lt=1.0)  # 0: no pruning
    finetune_epochs: int = Field(default=2, ge=0)  # after pruning
    quantize: bool = False
    scheme: Scheme = "dynamic-int8"
    teacher: str | None = None  # distil from this model-store entry (NAME or NAME:VERSION)
    temperature: float = Field(default=4.0, gt=0.0, le=100.0)
    alpha: float = Field(default=0.7, ge=0.0, le=1.0)
    latency_rounds: int = Field(default=10, gt=0, le=1000)  # each: 10 batch-1 calls


OBJECTIVE_MODES = {"p50_ms_b1": "min", "size_bytes": "min", "parameters": "min"}


class SweepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    job: JobConfig
    search: dict[str, dict[str, list[Any]]]
    tune: TuneSection = TuneSection()
    compress: CompressDims | None = None

    def job_paths(self) -> list[str]:
        return [p for p in self.search if not p.startswith("compress.")]

    def compress_paths(self) -> list[str]:
        return [p for p in self.search if p.startswith("compress.")]


def _check_distribution(path: str, spec: Any) -> list[Any]:
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        raise ConfigError(f"search.{path}: give exactly one of {list(DISTRIBUTIONS)}, e.g. {{uniform: [0.0, 0.5]}}")
    kind, values = next(iter(spec.items()))
    if not isinstance(values, list) or not values:
        raise ConfigError(f"search.{path}.{kind}: needs a non-empty list")
    if kind in ("uniform", "loguniform", "randint"):
        if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise ConfigError(f"search.{path}.{kind}: needs [low, high] numbers, got {values}")
        low, high = values
        if low >= high:
            raise ConfigError(f"search.{path}.{kind}: low must be < high, got [{low}, {high}]")
        if kind == "loguniform" and low <= 0:
            raise ConfigError(f"search.{path}.loguniform: low must be > 0, got {low}")
        if kind == "randint" and not all(isinstance(v, int) for v in values):
            raise ConfigError(f"search.{path}.randint: needs integer bounds, got {values}")
    return values


def representatives(kind: str, values: list[Any]) -> list[Any]:
    """Values a distribution can produce, to validate each against the job config."""
    if kind in ("choice", "grid"):
        return values
    if kind == "randint":
        return [values[0], values[1] - 1]
    return [float(values[0]), float(values[1]) * (1 - 1e-9)]


def parse_sweep(data: dict[str, Any], source: str, base_dir: Path) -> SweepConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"sweep config {source}: expected a mapping")
    unknown = set(data) - {"name", "base", "job", "overrides", "search", "tune", "compress"}
    if unknown:
        raise ConfigError(
            f"sweep config {source}: unknown field(s) {sorted(unknown)}; allowed: name, base, job, overrides, search, "
            "tune, compress"
        )
    if ("base" in data) == ("job" in data):
        raise ConfigError(
            f"sweep config {source}: give either base (a job YAML path) or job (inline), not both/neither"
        )
    if "base" in data:
        base_path = base_dir / data["base"]
        job = load_config(base_path if base_path.exists() else Path(data["base"])).to_dict()
    else:
        job = data["job"]
    job = apply_overrides(job, data.get("overrides") or {})
    base = parse_config(job, f"{source} (job)")
    search = data.get("search")
    if not isinstance(search, dict) or not search:
        raise ConfigError(f"sweep config {source}: search needs at least one field path, e.g. train.lr")
    compress = data.get("compress")
    if compress is None and any(p.startswith("compress.") for p in search):
        compress = {}
    for path, spec in search.items():
        values = _check_distribution(path, spec)
        kind = next(iter(spec))
        for value in representatives(kind, values):
            try:
                if path.startswith("compress."):
                    _compress_dims({**(compress or {}), path.removeprefix("compress."): value}, f"search.{path}")
                else:
                    parse_config(apply_overrides(base.to_dict(), {path: value}), f"{source} search.{path}={value!r}")
            except ConfigError as err:
                raise ConfigError(f"search.{path}: {err}") from None
    try:
        sweep = SweepConfig(
            name=data.get("name", base.name),
            job=base,
            search=search,
            tune=data.get("tune") or {},
            compress=None if compress is None else _compress_dims(compress, "compress"),
        )
    except ValidationError as err:
        raise ConfigError(f"sweep config {source}: {err}") from None
    if sweep.tune.scheduler == "pbt":
        check_pbt(sweep, source)
    check_compression(sweep, source)
    return sweep


def _compress_dims(data: Any, where: str) -> CompressDims:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of compression settings")
    try:
        return CompressDims.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(x) for x in first["loc"])
        raise ConfigError(f"{where}: {field}: {first['msg']}") from None


def check_compression(sweep: SweepConfig, source: str) -> None:
    t = sweep.tune
    if sweep.compress is None:
        if t.searcher == "nsga2" or t.objectives:
            raise ConfigError(
                f"sweep config {source}: tune.searcher nsga2 and tune.objectives are for compression sweeps; "
                "add a compress: section or compress.* search paths"
            )
        return
    if t.scheduler != "fifo":
        raise ConfigError(
            f"sweep config {source}: a compression sweep measures each trial's compressed model at its end; "
            f"early stopping ({t.scheduler}) ranks unfinished trials by one metric. Set tune.scheduler: fifo"
        )
    if not runs_in_process(sweep):
        raise ConfigError(
            f"sweep config {source}: a compression sweep runs one-worker trials (tune.workers_per_trial: 1)"
        )
    if sweep.job.model.family not in ("mlp", "cnn", "rnn"):
        raise ConfigError(f"sweep config {source}: compression sweeps take classifier/regressor families, not vae")
    try:
        check_scheme(sweep.compress.scheme, sweep.job.model.family)
    except ValueError as err:
        raise ConfigError(f"sweep config {source}: compress.scheme: {err}") from None


def check_pbt(sweep: SweepConfig, source: str) -> None:
    if not pbt_mutable(sweep.search):
        raise ConfigError(
            f"sweep config {source}: tune.scheduler pbt mutates running trials and needs at least one of "
            f"{list(PBT_MUTABLE)} in search (got {list(sweep.search)})"
        )
    if sweep.tune.searcher != "random":
        raise ConfigError(
            f"sweep config {source}: tune.scheduler pbt samples its own configs; use tune.searcher random"
        )
    if any("grid" in sweep.search[p] for p in pbt_mutable(sweep.search)):
        raise ConfigError(
            f"sweep config {source}: PBT cannot mutate a grid; use choice for {pbt_mutable(sweep.search)}"
        )
    if sweep.job.train.lr_schedule != "none" and "train.lr" in sweep.search:
        raise ConfigError(
            f"sweep config {source}: PBT sets train.lr itself; with train.lr_schedule "
            f"{sweep.job.train.lr_schedule!r} the two would fight. Set train.lr_schedule: none"
        )
    if sweep.tune.perturbation_interval >= sweep.job.train.epochs:
        raise ConfigError(
            f"sweep config {source}: tune.perturbation_interval ({sweep.tune.perturbation_interval}) must be below "
            f"train.epochs ({sweep.job.train.epochs}) or PBT never acts"
        )


def load_sweep(path: str | Path) -> SweepConfig:
    return parse_sweep(read_yaml(path, "sweep config"), str(path), Path(path).parent)
