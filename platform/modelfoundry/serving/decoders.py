"""What a continuous-batching step runs on (serving/continuous.py): the model in this process, or
the stage services in order, each holding its blocks' rows of a micro-batch."""

from __future__ import annotations

import asyncio
import uuid

from modelfoundry.models.kv_cache import BatchCache
from modelfoundry.serving.batch_step import StepMessage, run_step


class DecoderLost(Exception):
    """The decoder lost the micro-batch's caches (a stage replica died or is a new one)."""


class LocalDecoder:
    """The whole model in this process; the step runs in a thread, off the event loop."""

    def __init__(self, runner) -> None:
        self.runner = runner
        self.batch = "local"
        self.cache = BatchCache()

    async def run(self, msg: StepMessage) -> StepMessage:
        out = await asyncio.to_thread(run_step, self.runner.stage_modules, self.cache, msg, True, self.runner.device)
        assert out is not None, "the local batch cache holds every row"
        return out

    def reset(self) -> None:
        self.cache = BatchCache()


class RemoteDecoder:
    """The stage services in order, each holding its blocks' rows of this micro-batch (found again
    by Serve's multiplexed routing on the batch id)."""

    def __init__(self, handles: list) -> None:
        self.handles = handles
        self.reset()

    def reset(self) -> None:
        """A new batch id: the next step starts fresh caches, wherever Serve routes it; the old
        one's rows are freed where they still live."""
        old = getattr(self, "batch", None)
        if old is not None:
            for h in self.handles:
                h.options(method_name="end_batch", multiplexed_model_id=old).remote()
        self.batch = uuid.uuid4().hex
        self.calls = [h.options(method_name="decode_step", multiplexed_model_id=self.batch) for h in self.handles]

    async def run(self, msg: StepMessage) -> StepMessage:
        for call in self.calls:
            try:
                msg = await call.remote(msg)
            except Exception as err:  # the replica died mid-call, or could not be reached
                raise DecoderLost(f"{type(err).__name__}: {str(err)[:200]}") from err
            if msg is None:
                raise DecoderLost("a stage replica does not hold the micro-batch")
        return msg
