"""Continuous (iteration-level) batching of `:generate`: the requests on an ingress replica share
each decode step. A scheduler admits waiting sequences between steps (their prompts run in the
step they join), drops finished and abandoned ones at once, and budgets the KV cache the batch
holds (rows x the longest reservation, models/kv_cache.BatchCache), not a request count; beyond
the running rows a bounded queue waits, beyond the queue a 429 with Retry-After.

What a step runs on is a decoder (serving/decoders.py): the model in this process, or the stage
services in order (RemoteDecoder: each stage holds its blocks' rows of the micro-batch). A split
app runs several schedulers, one per micro-batch, whose steps overlap in the stages (pipeline
parallel). Each sequence's token ids live here (models.transformer.Sequence), so a decoder that
loses its caches (a stage replica died) costs a re-feed of every row of that micro-batch, never a
token: the stream goes on exactly where it was.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np
import torch

from modelfoundry.models.transformer import Sequence, next_token
from modelfoundry.serving.batch_step import Prefill, StepMessage
from modelfoundry.serving.decoders import DecoderLost
from modelfoundry.serving.generation import GenerateRequest
from modelfoundry.serving.requests import RequestError

RETRY_AFTER_S = 1  # what a 429 tells the client to wait
PREFILL_TOKENS_PER_STEP = 1024  # prompt positions one step admits (at least one prompt), bounding the stall
RECOVERY_S = 120.0  # how long a micro-batch keeps re-trying stages that fail before failing its streams
_END = object()

log = logging.getLogger("ray.serve")


@dataclass(eq=False)
class Job:
    """One generation in a scheduler: its sequence, its sampler, the queue its tokens go to."""

    request: GenerateRequest
    seq: Sequence
    reserve: int  # KV positions it may hold
    generator: torch.Generator | None
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    key: str = field(default_factory=lambda: uuid.uuid4().hex)
    made: int = 0
    feeding: int = 0  # positions this step feeds
    gone: bool = False  # finished, or its client left

    def cancel(self) -> None:
        self.gone = True


class Limits:
    def __init__(self, context: int, max_rows: int, kv_tokens: int, max_queued: int) -> None:
        self.context, self.max_rows, self.kv_tokens, self.max_queued = context, max_rows, kv_tokens, max_queued


class Scheduler:
    """One micro-batch's continuous batching loop (an asyncio task while it has work)."""

    def __init__(self, decoder, limits: Limits) -> None:
        self.decoder, self.limits = decoder, limits
        self.waiting: deque[Job] = deque()
        self.running: list[Job] = []  # in the decoder's row order
        self.leaving: set[str] = set()  # rows to drop at the next step
        self.task: asyncio.Task | None = None
        self.steps = 0

    @property
    def active(self) -> int:
        """Generations running or waiting; one that finished or whose client left no longer
        counts, though its row leaves the batch at the next step."""
        return sum(not j.gone for j in self.running) + sum(not j.gone for j in self.waiting)

    def submit(self, request: GenerateRequest) -> Job:
        ctx = self.limits.context
        generator = torch.Generator().manual_seed(request.seed) if request.seed is not None else None
        reserve = min(ctx, len(request.prompt_ids) + request.max_new_tokens)
        job = Job(request, Sequence(request.prompt_ids, ctx), reserve, generator)
        self.waiting.append(job)
        if self.task is None or self.task.done():
            # in a context of its own: the task outlives the request that started it, and Serve
            # cancels the calls a request made (the stage steps, here) when its client leaves
            self.task = asyncio.get_running_loop().create_task(self._loop(), context=contextvars.Context())
        return job

    async def _loop(self) -> None:
        self.failing_since: float | None = None
        try:
            while self.waiting or self.running:
                msg, stepped = self._plan()
                if stepped:
                    try:
                        await self._step(msg, stepped)
                    except Exception as err:  # a bug or a bad model: these streams end with an error
                        log.error("generation step failed", exc_info=err)
                        self._fail(stepped, err)
        finally:  # cancelled (the replica is stopping): no stream waits forever
            if self.running or self.waiting:
                self._fail([*self.running, *self.waiting], RuntimeError("the generation engine stopped"))
                self.waiting.clear()

    async def _step(self, msg: StepMessage, stepped: list[Job]) -> None:
        try:
            out = await self.decoder.run(msg)
        except DecoderLost as err:  # re-feed every row, on whatever replica answers now
            self.failing_since = self.failing_since or time.monotonic()
            if time.monotonic() - self.failing_since > RECOVERY_S:
                raise
            log.warning("generation micro-batch lost its caches (%s); re-feeding %d rows", err, len(stepped))
            self._refeed(stepped)
            await asyncio.sleep(0.05)
            return
        self.failing_since = None
        self.steps += 1
        self._deliver(out, stepped)

    def _plan(self) -> tuple[StepMessage, list[Job]]:
        """Leave, admit, and what each row feeds: one token, or (joining, or its cache restarts at
        the context's end) its current segment."""
        for job in [j for j in self.running if j.gone]:
            self.running.remove(job)
            self.leaving.add(job.key)
        while self.waiting and self.waiting[0].gone:
            self.waiting.popleft()
        self._admit()
        if not self.running:  # nothing to step: the rows that left are dropped with the next step
            return StepMessage(self.decoder.batch, (), (), None), []
        keys, x, prefill = [], [], []
        for job in self.running:
            ids, start = job.seq.next_input()
            job.feeding = len(ids)
            if start == 0:
                prefill.append(Prefill(job.key, np.asarray([ids], dtype=np.int64), job.reserve))
            else:
                keys.append(job.key)
                x.append(ids)
        order = {k: i for i, k in enumerate(keys)}
        stepped = sorted(self.running, key=lambda j: order.get(j.key, len(order)))
        self.running = stepped  # rows first (the cache's order), then the prompts that join, in order
        drop, self.leaving = tuple(self.leaving), set()
        tokens = np.asarray(x, dtype=np.int64) if keys else None
        return StepMessage(self.decoder.batch, drop, tuple(keys), tokens, tuple(prefill)), stepped

    def _admit(self) -> None:
        lim, budget = self.limits, PREFILL_TOKENS_PER_STEP
        capacity = max((j.reserve for j in self.running), default=0)
        while self.waiting and len(self.running) < lim.max_rows:
            job = self.waiting[0]
            if job.gone:
                self.waiting.popleft()
                continue
            capacity = max(capacity, job.reserve)
            prompt = len(job.request.prompt_ids)
            if self.running and ((len(self.running) + 1) * capacity > lim.kv_tokens or prompt > budget):
                break
            budget -= prompt
            self.running.append(self.waiting.popleft())

    def _deliver(self, out: StepMessage, stepped: list[Job]) -> None:
        logits = [*(out.x if out.x is not None else []), *(p.x for p in out.prefill)]
        for job, row in zip(stepped, logits, strict=True):
            job.seq.fed(job.feeding)
            if job.gone:  # its client left during the step
                continue
            r = job.request
            token = next_token(torch.from_numpy(row), r.temperature, r.top_k, job.generator, r.top_p)
            job.seq.append(token)
            job.made += 1
            job.queue.put_nowait(token)
            if job.made == job.request.max_new_tokens:
                job.queue.put_nowait(_END)
                job.gone = True

    def _refeed(self, stepped: list[Job]) -> None:
        for job in stepped:
            job.seq.miss()
        self.decoder.reset()

    def _fail(self, stepped: list[Job], err: Exception) -> None:
        for job in stepped:
            job.queue.put_nowait(err)
            job.gone = True
        self.running = [j for j in self.running if j not in stepped]
        self.decoder.reset()


class Engine:
    """The schedulers of an ingress replica (one per micro-batch) behind one door: the 429 when
    rows and queue are full, a new request to the least busy micro-batch, its tokens as they come."""

    def __init__(self, decoders: list, limits: Limits) -> None:
        self.limits = limits
        self.schedulers = [Scheduler(d, limits) for d in decoders]

    @property
    def active(self) -> int:
        return sum(s.active for s in self.schedulers)

    @property
    def capacity(self) -> int:
        return len(self.schedulers) * self.limits.max_rows + self.limits.max_queued

    def check(self) -> None:
        if self.active >= self.capacity:
            raise RequestError(
                429,
                f"{self.active} generations are running or queued on this replica, its limit; "
                f"retry in {RETRY_AFTER_S} s",
                {"retry-after": str(RETRY_AFTER_S)},
            )

    def submit(self, request: GenerateRequest) -> Job:
        self.check()
        return min(self.schedulers, key=lambda s: s.active).submit(request)

    async def tokens(self, job: Job) -> AsyncIterator[list[int]]:
        """The job's new token ids as they come, in runs: every token made since the last read
        (one per step while the reader keeps up; more when it lags, so a loaded replica sends
        fewer, larger chunks). Leaving early (the client went) frees its row at the next step."""
        try:
            while True:
                items = [await job.queue.get()]
                while not job.queue.empty():
                    items.append(job.queue.get_nowait())
                run = [t for t in items if isinstance(t, int)]
                if run:
                    yield run
                last = items[-1]
                if last is _END:
                    return
                if isinstance(last, BaseException):
                    raise last
        finally:
            job.cancel()

    def stats(self) -> dict:
        return {
            "running": sum(len(s.running) for s in self.schedulers),
            "queued": sum(len(s.waiting) for s in self.schedulers),
            "micro_batches": len(self.schedulers),
            "steps": sum(s.steps for s in self.schedulers),
        }
