"""The reply of the OpenAI-compatible API (serving/openai_api.py parses the request): the choices
run on the ingress's continuous-batching engine, stop strings held back until they cannot match,
one JSON object or server-sent events ending in `data: [DONE]`."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

from fastapi.responses import JSONResponse, StreamingResponse

from modelfoundry.serving.openai_api import Completion, error_body, fail
from modelfoundry.serving.requests import RequestError


class StopText:
    """The text of one choice as its tokens come: what may be sent now (held back while its tail
    could begin a stop string), and whether a stop string ended it (never sent)."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops, self.text, self.sent, self.stopped = stops, "", 0, False

    def add(self, piece: str) -> str:
        self.text += piece
        for s in self.stops:
            at = self.text.find(s, max(0, self.sent - len(s)))
            if at >= 0:
                self.text, self.stopped = self.text[:at], True
                return self.flush()
        hold = max((k for s in self.stops for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
        out = self.text[self.sent : len(self.text) - hold]
        self.sent += len(out)
        return out

    def flush(self) -> str:
        out = self.text[self.sent :]
        self.sent = len(self.text)
        return out


async def answer(ing, c: Completion) -> JSONResponse | StreamingResponse:
    """Run the choices on the ingress's engine; one JSON reply, or the SSE stream."""
    jobs = []
    try:
        for i in range(c.n):
            seed = None if c.request.seed is None else c.request.seed + i
            jobs.append(ing.engine.submit(replace(c.request, seed=seed)))
    except RequestError:
        for job in jobs:
            job.cancel()
        raise
    head = {
        "id": f"{'chatcmpl' if c.chat else 'cmpl'}-{uuid.uuid4().hex}",
        "created": int(time.time()),
        "model": ing.name,
    }
    pieces = _pieces(ing, c, jobs)
    if c.stream:
        return StreamingResponse(_events(c, head, pieces), media_type="text/event-stream")
    texts, finish, made = [""] * c.n, [None] * c.n, [0] * c.n
    async for i, piece, reason, count in pieces:
        texts[i] += piece
        finish[i], made[i] = reason, count
    choices = [_choice(c.chat, i, texts[i], finish[i]) for i in range(c.n)]
    obj = "chat.completion" if c.chat else "text_completion"
    return JSONResponse({**head, "object": obj, "choices": choices, "usage": _usage(c, sum(made))})


async def _pieces(ing, c: Completion, jobs) -> AsyncIterator[tuple[int, str, str | None, int]]:
    """(choice, text to send, finish reason or None, tokens so far) as the choices' tokens come,
    merged; leaving early cancels every choice."""
    queue: asyncio.Queue = asyncio.Queue()

    async def run(i: int, job) -> None:
        text, made = StopText(c.stop), 0
        try:
            async for run in ing._counted(ing.engine.tokens(job)):
                piece = ""
                for token in run:
                    made += 1
                    piece += text.add(ing.tokenizer.decode([token]))
                    if text.stopped:
                        break
                if piece:
                    await queue.put((i, piece, None, made))
                if text.stopped:
                    break
            await queue.put((i, text.flush(), "stop" if text.stopped else "length", made))
        except Exception as err:  # the engine failed this choice
            await queue.put(err)
        finally:
            job.cancel()

    tasks = [asyncio.create_task(run(i, job)) for i, job in enumerate(jobs)]
    try:
        for _ in range(len(jobs)):
            while True:
                item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                yield item
                if item[2] is not None:
                    break
    finally:
        for task in tasks:
            task.cancel()
        for job in jobs:
            job.cancel()


async def _events(c: Completion, head: dict, pieces) -> AsyncIterator[bytes]:
    obj = "chat.completion.chunk" if c.chat else "text_completion"
    made = [0] * c.n
    try:
        if c.chat:  # the role first, as OpenAI's streams do
            for i in range(c.n):
                yield _sse({**head, "object": obj, "choices": [_delta(i, {"role": "assistant", "content": ""}, None)]})
        async for i, piece, reason, count in pieces:
            made[i] = count
            if piece or reason:
                if c.chat:
                    delta = {"content": piece} if piece else {}
                    choice = _delta(i, delta, None)
                    chunks = [choice] if piece else []
                    if reason:
                        chunks.append(_delta(i, {}, reason))
                else:
                    chunks = [{"index": i, "text": piece, "logprobs": None, "finish_reason": reason}]
                for ch in chunks:
                    yield _sse({**head, "object": obj, "choices": [ch]})
        if c.include_usage:
            yield _sse({**head, "object": obj, "choices": [], "usage": _usage(c, sum(made))})
    except Exception:  # headers are sent: the error goes in the stream, in OpenAI's shape
        yield _sse(error_body(fail(500, f"generation failed (request id {head['id']})")))
    yield b"data: [DONE]\n\n"


def _delta(i: int, delta: dict, reason: str | None) -> dict:
    return {"index": i, "delta": delta, "logprobs": None, "finish_reason": reason}


def _choice(chat: bool, i: int, text: str, reason: str | None) -> dict:
    if chat:
        return {
            "index": i,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": reason,
        }
    return {"index": i, "text": text, "logprobs": None, "finish_reason": reason}


def _usage(c: Completion, completion_tokens: int) -> dict:
    prompt = len(c.request.prompt_ids)
    return {"prompt_tokens": prompt, "completion_tokens": completion_tokens, "total_tokens": prompt + completion_tokens}


def _sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"
