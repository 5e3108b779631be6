"""Adaptive request batching for a replica: requests that arrive while a batch runs go together in
the next one, and a request that finds nothing else queued runs at once.

Serve's `@serve.batch` waits `batch_wait_timeout_s` after the first request of every batch, so a
lone request always pays the whole wait (at one client in flight, 2 ms on a 0.5 ms model). Here
the wait is spent only when there is evidence of concurrent traffic: when the batch being formed
already holds more than one request and is not full, it may wait up to `wait_s` for more. Under
load batches still fill, because requests queue up while the previous batch runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class AdaptiveBatcher(Generic[In, Out]):
    def __init__(self, run: Callable[[list[In]], Awaitable[list[Out]]], max_batch_size: int, wait_s: float) -> None:
        if max_batch_size < 1 or wait_s < 0:
            raise ValueError(f"max_batch_size must be >= 1 and wait_s >= 0, got {max_batch_size}, {wait_s}")
        self.run = run
        self.max_batch_size = max_batch_size
        self.wait_s = wait_s
        self.queue: asyncio.Queue[tuple[In, asyncio.Future]] = asyncio.Queue()
        self.batch_sizes: list[int] = []  # the size of each batch run so far (the last 1000)
        self.arrived = asyncio.Event()
        self._worker: asyncio.Task | None = None

    async def __call__(self, item: In) -> Out:
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._loop())
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((item, future))
        self.arrived.set()
        return await future  # a cancelled caller cancels its future: the batch skips it

    async def _next_batch(self) -> list[tuple[In, asyncio.Future]]:
        batch = [await self.queue.get()]
        while len(batch) < self.max_batch_size and not self.queue.empty():
            batch.append(self.queue.get_nowait())
        if 1 < len(batch) < self.max_batch_size and self.wait_s > 0:
            deadline = time.monotonic() + self.wait_s  # requests are arriving together: let it fill
            while len(batch) < self.max_batch_size and (left := deadline - time.monotonic()) > 0:
                self.arrived.clear()
                with contextlib.suppress(TimeoutError):  # waits on an event, never on the queue:
                    await asyncio.wait_for(self.arrived.wait(), left)  # a timeout loses no request
                while len(batch) < self.max_batch_size and not self.queue.empty():
                    batch.append(self.queue.get_nowait())
        return [(item, fut) for item, fut in batch if not fut.done()]  # callers that went away

    async def _loop(self) -> None:
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            self.batch_sizes = [*self.batch_sizes[-999:], len(batch)]
            try:
                outs: Any = await self.run([item for item, _ in batch])
                if len(outs) != len(batch):
                    raise RuntimeError(f"the batch function returned {len(outs)} results for {len(batch)} inputs")
            except Exception as err:  # every caller of the batch gets the error; the loop goes on
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(err)
                continue
            for (_, fut), out in zip(batch, outs):
                if not fut.done():
                    fut.set_result(out)
