"""The stage service: one group of a model's stages as a Serve deployment (numpy in, numpy out).
For a language model it also runs continuous-batching steps, holding a micro-batch's KV cache for
its blocks (found again by Serve's multiplexed routing on the micro-batch's id)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
from ray import serve

from modelfoundry.models.kv_cache import BatchCache
from modelfoundry.serving.batch_step import StepMessage, run_step
from modelfoundry.serving.batching import AdaptiveBatcher
from modelfoundry.serving.explain import vjp
from modelfoundry.serving.metrics import StageMetrics
from modelfoundry.serving.runner import ModelRunner, run_model
from modelfoundry.serving.slo import Window
from modelfoundry.store import StoreVersion

# micro-batches of generation whose KV caches one stage replica holds at once (least recently
# used go first; a micro-batch whose cache went is re-fed by its scheduler, serving/continuous.py)
MAX_BATCHES_PER_REPLICA = 64


class HeldBatch:
    """One generation micro-batch's rows on a stage replica. Serve's multiplex LRU calls __del__
    when it evicts it (and Python may again at collection: harmless)."""

    def __init__(self) -> None:
        self.cache = BatchCache()
        self.evicted = False

    def __del__(self) -> None:
        self.evicted = True
        self.cache = BatchCache()


async def run_model_batch(runner: ModelRunner, xs: list[np.ndarray]) -> list[np.ndarray]:
    if runner.inline(sum(len(x) for x in xs)):
        return runner.run_batch(xs)
    return await asyncio.to_thread(runner.run_batch, xs)


def batcher(runner: ModelRunner, batching: dict | None) -> AdaptiveBatcher | None:
    if not batching:
        return None
    return AdaptiveBatcher(
        lambda xs: run_model_batch(runner, xs), batching["max_batch_size"], batching["batch_wait_timeout_s"]
    )


async def run(runner: ModelRunner, batched: AdaptiveBatcher | None, x: np.ndarray) -> np.ndarray:
    """The model on x, through the batcher when there is one."""
    return await batched(x) if batched else await run_model(runner, x)


def replica_transport(handle):
    """The handle, calling the way THIS replica's Serve settings say. A handle given to a
    deployment as an init argument keeps the transport chosen in the process that built the app,
    fixed when that process imported `ray.serve`: a driver that imported it before the platform's
    Serve settings were in its environment (`foundry serve`, any script that imports Serve before
    `connect()`, a client of a remote cluster) gave every stage hop Ray's actor-call path, ~2x the
    cost of the gRPC path the fast path sets (docs/results.md, issue 17). The replica's own
    setting is the cluster's."""
    from ray.serve._private.constants import RAY_SERVE_USE_GRPC_BY_DEFAULT

    return handle.options(_by_reference=not RAY_SERVE_USE_GRPC_BY_DEFAULT)


@serve.deployment
class Stage:
    """One group of a model's stages as a service: numpy in, numpy out."""

    def __init__(
        self, model_path: str, group: list[int] | None, batching: dict | None, synthetic_ms: float = 0.0
    ) -> None:
        self.runner = ModelRunner(model_path, group)
        self.batches: dict[str, HeldBatch] = {}  # generation micro-batches this replica holds, by id
        self.batcher = batcher(self.runner, batching)
        where = StoreVersion.from_uri(model_path)
        self.metrics = StageMetrics(where.name, str(where.version), "-".join(map(str, self.runner.group)))
        self.window = Window()  # what the latency-objective planner reads (serving/slo.py)
        # a bench's slower, accelerator-bound model: each call holds the replica this long more
        self.synthetic_s, self.busy = synthetic_ms / 1000.0, asyncio.Lock()

    async def __call__(self, x: np.ndarray) -> np.ndarray:
        self.window.arrive()
        if self.synthetic_s:
            async with self.busy:  # one request at a time, like a device
                t0 = time.perf_counter()
                await asyncio.sleep(self.synthetic_s)
                out = await run(self.runner, self.batcher, x)
        else:
            t0 = time.perf_counter()
            out = await run(self.runner, self.batcher, x)
        took = time.perf_counter() - t0
        self.metrics.observe(took)
        self.window.add(took)
        return out

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's custom autoscaling metrics: this replica's calls/s and service times."""
        return self.window.stats()

    async def vjp(self, x: np.ndarray, grad_out: np.ndarray) -> np.ndarray:
        """:explain's backward pass through this stage: grad_out^T d stage(x) / dx."""
        return await asyncio.to_thread(vjp, self.runner.module, x, grad_out, self.runner.device)

    # ---- language-model generation: a micro-batch's rows live on this replica; Serve's
    # multiplexed routing (the batch id as model id) sends its later steps here
    @serve.multiplexed(max_num_models_per_replica=MAX_BATCHES_PER_REPLICA)
    async def _batch(self, batch_id: str) -> HeldBatch:
        for bid in [k for k, v in self.batches.items() if v.evicted]:  # forget what the LRU dropped
            del self.batches[bid]
        held = self.batches[batch_id] = HeldBatch()
        return held

    async def decode_step(self, msg: StepMessage) -> StepMessage | None:
        """One continuous-batching step over this stage's blocks (serving/batch_step.py); None
        when this replica does not hold the micro-batch's rows (its scheduler re-feeds them)."""
        held = await self._batch(serve.get_multiplexed_model_id())
        runner = self.runner
        return await asyncio.to_thread(run_step, runner.stage_modules, held.cache, msg, runner.last, runner.device)

    async def end_batch(self) -> None:
        """The micro-batch's scheduler started a new one: free this one's rows. One the LRU evicted
        (or that never reached this replica) is not loaded again just to be ended: that would
        evict a live one."""
        held = self.batches.pop(serve.get_multiplexed_model_id(), None)
        if held is not None:
            held.cache = BatchCache()

    def batch_ids(self) -> list[str]:
        """The micro-batches this replica holds live rows of (tests, stats)."""
        return [k for k, v in self.batches.items() if not v.evicted]
