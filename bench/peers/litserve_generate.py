"""The LitServe peer for bench/generate.py: LitServe's own continuous-batching loop
(`litserve.loops.ContinuousBatchingLoop`: an API-server process and an inference-worker process,
the worker adding requests between steps and streaming each step's tokens) over the same
checkpoint. LitServe leaves the model step to the user; this one is the batched step a LitServe
user would write with the platform's batched KV cache (models/kv_cache.BatchCache through
serving/batch_step.run_step: the same kernels as the platform's, so what differs is the serving
stack). Greedy, `max_new_tokens` as in `:generate`; lines {"token": ...} as the platform streams.

    MODEL_PATH=... MODEL_NAME=lm PORT=8300 .venv-peers/bin/python bench/peers/litserve_generate.py
"""

import os
import threading

import litserve as ls
import numpy as np
import torch
from fastapi import HTTPException
from litserve.loops import ContinuousBatchingLoop, Output
from litserve.utils import LitAPIStatus

from modelfoundry.data.text import CharTokenizer
from modelfoundry.models.kv_cache import BatchCache
from modelfoundry.models.transformer import Sequence, next_token
from modelfoundry.serving.batch_step import Prefill, StepMessage, run_step
from modelfoundry.serving.generation import MAX_NEW_TOKENS, parse_generate
from modelfoundry.serving.requests import RequestError
from modelfoundry.serving.runner import ModelRunner

MAX_ROWS = 64


class Generate(ls.LitAPI):
    def setup(self, device):
        torch.set_grad_enabled(False)
        self.runner = ModelRunner(os.environ["MODEL_PATH"], device="cpu")
        self.tokenizer = CharTokenizer.from_spec(self.runner.meta.tokenizer)
        self.context = self.runner.meta.config["context"]
        self.cache, self.lock = BatchCache(), threading.Lock()
        self.joining: dict[str, list] = {}  # uid -> [request, sequence, made]
        self.running: dict[str, list] = {}
        self.leaving: list[str] = []

    def add_request(self, uid, request):
        try:
            req = parse_generate(request, self.tokenizer, self.context, MAX_NEW_TOKENS)
        except RequestError as err:
            raise HTTPException(err.status, err.message) from None
        with self.lock:
            self.joining[uid] = [req, Sequence(req.prompt_ids, self.context), 0]

    def has_active_requests(self):
        return bool(self.joining or self.running)

    def has_capacity(self):
        return len(self.joining) + len(self.running) < MAX_ROWS

    def step(self, prev_outputs):
        with self.lock:
            joining, self.joining = self.joining, {}
        self.running.update(joining)
        keys, x, prefill = [], [], []
        for uid, (req, seq, _) in self.running.items():
            ids, start = seq.next_input()
            if start == 0:
                reserve = min(self.context, len(req.prompt_ids) + req.max_new_tokens)
                prefill.append(Prefill(uid, np.asarray([ids], dtype=np.int64), reserve))
            else:
                keys.append(uid)
                x.append(ids)
        msg = StepMessage(
            "b", tuple(self.leaving), tuple(keys), np.asarray(x, dtype=np.int64) if keys else None, tuple(prefill)
        )
        self.leaving = []
        out = run_step(self.runner.stage_modules, self.cache, msg, True, self.runner.device)
        # the cache's row order: the rows that decoded, then those that (re)fed a window (a
        # sequence past the context re-feeds its last window and moves to the end)
        self.running = {k: self.running[k] for k in (*keys, *(p.key for p in prefill))}
        rows = [*zip(keys, out.x if out.x is not None else []), *((p.key, p.x) for p in out.prefill)]
        outputs = []
        for uid, logits in rows:
            entry = self.running[uid]
            req, seq = entry[0], entry[1]
            seq.fed(len(seq.next_input()[0]))
            token = next_token(torch.from_numpy(logits), req.temperature, req.top_k, None)
            seq.append(token)
            entry[2] += 1
            outputs.append(Output(uid, self.tokenizer.decode([token]), LitAPIStatus.OK))
            if entry[2] == req.max_new_tokens:
                outputs.append(Output(uid, "", LitAPIStatus.FINISH_STREAMING))
                del self.running[uid]
                self.leaving.append(uid)
        return outputs

    def encode_response(self, output):
        return {"token": output} if output else ""


if __name__ == "__main__":
    api = Generate(
        api_path=f"/v1/models/{os.environ['MODEL_NAME']}:generate",
        stream=True,
        loop=ContinuousBatchingLoop(max_sequence_length=MAX_NEW_TOKENS),
    )
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(host="127.0.0.1", port=int(os.environ.get("PORT", "8300")), generate_client_file=False)
