"""The adaptive batcher: a lone request runs at once (no wait), requests queued while a batch runs
go together, a batch with company waits for more up to its bound, errors and departed callers
are handled. Events order every step: no sleeps, no timing."""

from __future__ import annotations

import asyncio

import pytest

from aio import run_async
from modelfoundry.serving.batching import AdaptiveBatcher

HOUR = 3600.0  # a wait no test could sit out: a test that passes did not wait


class Gate:
    """A batch function that records each batch and holds it until released."""

    def __init__(self, hold: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        if not hold:
            self.release.set()

    async def __call__(self, xs: list[int]) -> list[int]:
        self.batches.append(list(xs))
        self.started.set()
        await self.release.wait()
        return [2 * x for x in xs]


async def _held(max_batch_size: int, wait_s: float) -> tuple[Gate, AdaptiveBatcher, asyncio.Future]:
    """A batcher whose first batch, [0], is running and held until gate.release is set."""
    gate = Gate(hold=True)
    batcher = AdaptiveBatcher(gate, max_batch_size=max_batch_size, wait_s=wait_s)
    first = asyncio.ensure_future(batcher(0))
    await gate.started.wait()
    return gate, batcher, first


async def _queued(batcher: AdaptiveBatcher, n: int) -> None:
    """Until n requests wait in the batcher's queue (each task needs a turn of the loop)."""
    while batcher.queue.qsize() < n:
        await asyncio.sleep(0)


def test_a_lone_request_runs_at_once_even_with_a_long_wait_bound():
    async def main():
        gate = Gate()
        batcher = AdaptiveBatcher(gate, max_batch_size=32, wait_s=HOUR)
        assert await asyncio.wait_for(batcher(21), HOUR / 2) == 42  # no wait: far sooner than the bound
        assert await batcher(5) == 10
        assert gate.batches == [[21], [5]]

    run_async(main())


def test_requests_queued_while_a_batch_runs_go_together_up_to_max_batch_size():
    async def main():
        gate, batcher, first = await _held(max_batch_size=4, wait_s=0.0)
        rest = [asyncio.ensure_future(batcher(i)) for i in range(1, 10)]
        await _queued(batcher, 9)
        gate.release.set()
        assert await asyncio.gather(first, *rest) == [2 * i for i in range(10)]  # each gets its own
        assert gate.batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9]]
        assert batcher.batch_sizes == [1, 4, 4, 1]

    run_async(main())


def test_a_batch_with_company_waits_for_more_until_it_is_full():
    async def main():
        gate, batcher, first = await _held(max_batch_size=3, wait_s=HOUR)
        two = [asyncio.ensure_future(batcher(i)) for i in (1, 2)]
        await _queued(batcher, 2)
        gate.release.set()  # [1, 2] is formed with company: it waits for a third
        while len(gate.batches) < 1 or batcher.queue.qsize():
            await asyncio.sleep(0)
        for _ in range(100):  # the loop gets many turns, and still no batch runs short
            await asyncio.sleep(0)
        assert gate.batches == [[0]]
        third = asyncio.ensure_future(batcher(3))
        assert await asyncio.gather(first, *two, third) == [0, 2, 4, 6]
        assert gate.batches == [[0], [1, 2, 3]]

    run_async(main())


def test_a_failing_batch_fails_its_callers_and_the_batcher_goes_on():
    async def main():
        calls = []

        async def run(xs):
            calls.append(xs)
            if len(calls) == 1:
                raise ValueError("bad batch")
            return xs

        batcher = AdaptiveBatcher(run, max_batch_size=8, wait_s=0.0)
        with pytest.raises(ValueError, match="bad batch"):
            await batcher(1)
        assert await batcher(2) == 2

        async def short(xs):
            return xs[:-1]

        wrong = AdaptiveBatcher(short, max_batch_size=8, wait_s=0.0)
        with pytest.raises(RuntimeError, match="returned 0 results for 1 inputs"):
            await wrong(1)

    run_async(main())


def test_a_caller_that_went_away_is_left_out_of_the_next_batch():
    async def main():
        gate, batcher, first = await _held(max_batch_size=8, wait_s=0.0)
        gone, kept = asyncio.ensure_future(batcher(1)), asyncio.ensure_future(batcher(2))
        await _queued(batcher, 2)
        gone.cancel()  # the client disconnected while its request waited
        gate.release.set()
        assert await asyncio.gather(first, kept) == [0, 4]
        assert gate.batches == [[0], [2]]

    run_async(main())


def test_bad_settings_are_refused():
    async def run(xs):
        return xs

    with pytest.raises(ValueError, match="max_batch_size must be >= 1"):
        AdaptiveBatcher(run, max_batch_size=0, wait_s=0.0)
