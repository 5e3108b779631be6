"""The verbs that are more than a model call (the ingress answers predict and OIP v2 infer from
its backend's output): the VAE's encode / decode / reconstruct / sample through its services,
and a language model's generate, streamed as JSON lines from the replica's batching engine.
`Ingress` (serving/ingress.py) inherits them."""

import logging
import weakref

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from modelfoundry.serving.generation import json_lines, line, parse_generate
from modelfoundry.serving.requests import RequestError, png_grid
from modelfoundry.serving.runner import sigmoid

MAX_SAMPLES = 64

log = logging.getLogger("ray.serve")


def request_id() -> str:
    """Serve's id of the request being handled (HAProxy sets x-request-id), for logs and errors."""
    from ray.serve.context import _get_serve_request_context

    return _get_serve_request_context().request_id or "-"


class Verbs:
    """Mixed into Ingress: uses its spec, backend, tokenizer, engine and generated_tokens."""

    async def verb_encode(self, x: np.ndarray) -> dict:
        stats = await self.backend.service(0, x)
        mu, logvar = np.split(stats, 2, axis=1)
        return {"predictions": [{"mu": m.tolist(), "logvar": lv.tolist()} for m, lv in zip(mu, logvar)]}

    async def verb_decode(self, z: np.ndarray) -> dict:
        return {"predictions": sigmoid(await self.backend.service(1, z)).tolist()}

    async def verb_reconstruct(self, x: np.ndarray) -> dict:
        return {"predictions": (await self.reconstruction(x)).tolist()}

    async def reconstruction(self, x: np.ndarray) -> np.ndarray:
        mu = np.split(await self.backend.service(0, x), 2, axis=1)[0]  # the latent's mean (eval mode)
        return sigmoid(await self.backend.service(1, mu))

    async def sample(self, data: dict, request: Request) -> Response:
        n = data.get("n", 8)
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_SAMPLES:
            raise RequestError(400, f"n must be an integer from 1 to {MAX_SAMPLES}, got {n!r}")
        seed = data.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
            raise RequestError(400, f"seed must be a non-negative integer, got {seed!r}")
        z = np.random.default_rng(seed).standard_normal((n, self.spec.config["latent_dim"])).astype(np.float32)
        images = sigmoid(await self.backend.service(1, z))
        if data.get("format") == "png" or "image/png" in request.headers.get("accept", ""):
            return Response(png_grid(images), media_type="image/png")
        return JSONResponse({"predictions": images.tolist()})

    async def generate(self, data: dict) -> Response:
        """Language models: new text for a prompt, streamed as JSON lines (one per token, then a
        summary line), or as one JSON object with "stream": false. Everything is checked before
        the first byte is sent; a failure after it ends the stream with an error line that names
        the request id only (the exception goes to the log)."""
        request = parse_generate(data, self.tokenizer, self.spec.config["context"], self.spec.limits.max_new_tokens)
        job = self.engine.submit(request)
        token_ids = self._counted(self.engine.tokens(job))
        if not request.stream:
            try:
                ids = [t async for run in token_ids for t in run]
            finally:
                job.cancel()
            return JSONResponse(self._summary(ids))
        stream = self._stream(token_ids, request_id())
        weakref.finalize(stream, job.cancel)  # a stream never started (client gone first) frees its row too
        return StreamingResponse(stream, media_type="application/x-ndjson")

    async def _stream(self, token_ids, rid: str):
        # a client that disconnects cancels this generator at its next await (Serve cancels the
        # request): the engine drops its row at the next step
        try:
            async for chunk in json_lines(token_ids, self.tokenizer, self._summary):
                yield chunk
        except Exception as err:  # headers are sent: the error goes in the stream, as JSON
            log.error("generation of request %s failed", rid, exc_info=err)
            yield line({"error": f"generation failed (request id {rid})"})
        finally:
            await token_ids.aclose()

    async def _counted(self, runs):
        """The runs of tokens, counted as they are made (metadata's generated_tokens)."""
        async for run in runs:
            self.generated_tokens += len(run)
            yield run

    def _summary(self, ids: list[int]) -> dict:
        return {
            "done": True,
            "text": self.tokenizer.decode(ids),
            "tokens": len(ids),
            "finish_reason": "length",
            "model": self.name,
            "version": self.spec.version,
        }
