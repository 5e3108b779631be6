"""Whether the cluster can ever hold a run's workers (fail fast instead of waiting forever)."""

from __future__ import annotations

from modelfoundry.config import JobConfig


class CapacityError(ValueError):
    """The cluster can never place the requested workers."""


def check_capacity(cfg: JobConfig) -> None:
    """Fail fast when no node set of this cluster can ever hold the workers (not wait forever)."""
    import ray

    total = ray.cluster_resources()
    n, what = cfg.train.worker_bounds[0], workers_text(cfg)  # an elastic run needs its minimum
    need_cpu = n * cfg.train.cpus_per_worker
    if need_cpu > total.get("CPU", 0):
        raise CapacityError(
            f"{what} x cpus_per_worker={cfg.train.cpus_per_worker} "
            f"needs {need_cpu:g} CPUs; the cluster has {total.get('CPU', 0):g}"
        )
    if cfg.train.use_gpu and n > total.get("GPU", 0):
        raise CapacityError(
            f"train.use_gpu with {what} needs {n} GPUs; "
            f"the cluster has {total.get('GPU', 0):g} (drop --gpu or add GPU nodes)"
        )
    for name, amount in cfg.train.worker_resources.items():
        if n * amount > total.get(name, 0):
            raise CapacityError(
                f"train.worker_resources asks {amount:g} {name!r} per worker for {n} workers; "
                f"the cluster has {total.get(name, 0):g}"
            )


def workers_text(cfg: JobConfig) -> str:
    lo, hi = cfg.train.worker_bounds
    return f"train.workers={lo}-{hi} (elastic)" if cfg.train.workers else f"train.num_workers={lo}"
