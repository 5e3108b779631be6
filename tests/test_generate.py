"""Language-model generation: the driver and its cache recovery (no Ray), then the `:generate`
verb on a real local Serve app over HTTP on 127.0.0.1: streaming, split == monolithic, bad
input, a client that disconnects."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import random
import statistics
import time
import types
from dataclasses import replace

import httpx
import numpy as np
import pytest
import torch

from aio import run_async
from modelfoundry.config import DataSection
from modelfoundry.data import load_splits
from modelfoundry.data.text import CharTokenizer
from modelfoundry.models import build_model
from modelfoundry.models.transformer import generate
from modelfoundry.serving.continuous import Engine, Limits
from modelfoundry.serving.decoders import LocalDecoder
from modelfoundry.serving.generation import GenerateRequest
from modelfoundry.store import export
from modelfoundry.store.checkpoint import write_checkpoint

PORT = 18125
URL = f"http://127.0.0.1:{PORT}"
PROMPT = "The try statement "


def lively_model(vocab_size: int, **overrides):
    """A tiny transformer whose greedy output varies from token to token (random weights at
    GPT's 0.02 init give nearly constant argmaxes, which would make equality tests weak)."""
    torch.manual_seed(0)
    model = build_model("transformer", "tiny", vocab_size=vocab_size, **overrides).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:  # matrices and embeddings; LayerNorms keep their identity init
                p.normal_(0, 0.6)
    return model


def engine_outputs(model, requests, decoder=None, limits=None, arrive_s=0.2):
    """Each request's token ids from one continuous-batching engine, the requests arriving at
    random times within `arrive_s` (no Ray: the scheduler and the model in this process)."""
    runner = types.SimpleNamespace(stage_modules=model.stages(), device=torch.device("cpu"))
    ctx = model.config.context
    rng = random.Random(1)

    async def run():
        engine = Engine([decoder or LocalDecoder(runner)], limits or Limits(ctx, 64, 64 * ctx, 256))

        async def one(request, delay):
            await asyncio.sleep(delay)
            return [t async for run in engine.tokens(engine.submit(request)) for t in run]

        out = await asyncio.gather(*(one(r, rng.random() * arrive_s) for r in requests))
        return out, engine.stats()

    return run_async(run())


def mixed_requests(vocab: int, n: int, seed: int = 0) -> list[GenerateRequest]:
    """Prompts of 1..60 tokens and 1..150 new ones (past the 64-token context: the cache
    restarts), every third sampled with its own seed."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        prompt = [rng.randrange(vocab) for _ in range(rng.randint(1, 60))]
        sampled = i % 3 == 0
        out.append(
            GenerateRequest(
                prompt,
                rng.randint(1, 150),
                0.9 if sampled else 0.0,
                5 if sampled else None,
                i if sampled else None,
                True,
            )
        )
    return out


def alone(model, r: GenerateRequest) -> list[int]:
    return list(generate(model, r.prompt_ids, r.max_new_tokens, r.temperature, r.top_k, r.seed))


def test_continuous_batching_equals_each_request_alone_token_for_token():
    """32 requests of different lengths arriving at random times share the decode steps; each
    one's tokens equal its generation alone (greedy, and seeded sampling), and the steps are
    shared: far fewer than the tokens made."""
    model = lively_model(40)
    requests = mixed_requests(40, 32)
    expected = [alone(model, r) for r in requests]
    assert len({t for e in expected for t in e}) > 5
    out, stats = engine_outputs(model, requests)
    assert out == expected
    assert stats["steps"] < sum(len(e) for e in expected) / 4, stats
    assert stats["running"] == stats["queued"] == 0


def test_a_decoder_that_loses_its_caches_costs_a_refeed_never_a_token():
    """A decoder that loses the micro-batch's caches every 7th step (a stage replica replaced):
    the scheduler re-feeds every row and each text is still its text alone."""
    from modelfoundry.serving.decoders import DecoderLost

    model = lively_model(40)
    runner = types.SimpleNamespace(stage_modules=model.stages(), device=torch.device("cpu"))

    class Losing(LocalDecoder):
        calls = 0

        async def run(self, msg):
            Losing.calls += 1
            if Losing.calls % 7 == 0:
                self.reset()
                raise DecoderLost("replaced")
            return await super().run(msg)

    requests = mixed_requests(40, 8, seed=3)
    out, _ = engine_outputs(model, requests, decoder=Losing(runner))
    assert out == [alone(model, r) for r in requests] and Losing.calls > 20


def test_the_kv_budget_bounds_the_rows_and_the_queue_bounds_the_rest():
    """8 rows allowed but a KV budget of 2 x 64 positions: at most 2 rows per step (the prompts
    and new tokens reserve the whole context); 8 rows + 1 queued accepted, the next a 429 with
    Retry-After; each text equals its generation alone."""
    from modelfoundry.serving.continuous import RequestError

    model = lively_model(40)
    requests = [replace(r, max_new_tokens=r.max_new_tokens + 64) for r in mixed_requests(40, 9, seed=5)]
    runner = types.SimpleNamespace(stage_modules=model.stages(), device=torch.device("cpu"))
    widest = []

    class Counting(LocalDecoder):
        async def run(self, msg):
            widest.append(len(msg.keys) + len(msg.prefill))
            return await super().run(msg)

    async def run():
        engine = Engine([Counting(runner)], Limits(64, 8, 128, 1))
        jobs = [engine.submit(r) for r in requests]
        with pytest.raises(RequestError) as refused:
            engine.submit(requests[0])
        assert refused.value.status == 429 and refused.value.headers == {"retry-after": "1"}
        return [[t async for run in engine.tokens(j) for t in run] for j in jobs]

    assert run_async(run()) == [alone(model, r) for r in requests]
    assert max(widest) == 2, widest


def test_stop_strings_are_held_back_until_they_cannot_match_and_never_sent():
    from modelfoundry.serving.openai_reply import StopText

    def run(stops, text):
        st, sent = StopText(tuple(stops)), []
        for ch in text:
            sent.append(st.add(ch))
            if st.stopped:
                break
        return "".join(sent) + ("" if st.stopped else st.flush()), st.stopped, sent

    assert run(["aab"], "xaaab!")[:2] == ("xa", True)
    assert run(["ab", "bc"], "zzbc")[:2] == ("zz", True)
    assert run(["END"], "the ENDgame")[:2] == ("the ", True)
    out, stopped, sent = run(["\n\n", "User:"], "Hi Us. ok\nUse\n\nrest")
    assert (out, stopped) == ("Hi Us. ok\nUse", True)
    assert "".join(sent) == out  # the held "\n" of "\n\n" never went out
    assert run(["zz"], "abc") == ("abc", False, ["a", "b", "c"])  # nothing held without a possible match


@pytest.fixture(scope="module")
def lm(ray_cluster, tmp_path_factory):
    from ray import serve

    tmp = tmp_path_factory.mktemp("lm")
    store = str(tmp / "store")
    splits = load_splits(DataSection(dataset="pydocs", window=64))
    tokenizer = CharTokenizer.from_spec(splits.spec.tokenizer)
    model = lively_model(len(tokenizer.vocab))
    write_checkpoint(
        tmp / "lm", model, dataset=splits.spec.to_dict(), metrics={"test_bpc": 9.9}, extra={"task": "language-model"}
    )
    export(str(tmp / "lm"), store, "lm")
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    expected = tokenizer.decode(list(generate(model, tokenizer.encode(PROMPT), 100)))
    yield {"store": store, "model": model, "tokenizer": tokenizer, "expected": expected}
    serve.shutdown()


def deploy(lm, **args):
    from ray import serve

    from modelfoundry.serving.apps import build_app

    serve.run(build_app({"store": lm["store"], "model": "lm", **args}), name="lm", route_prefix="/")
    return httpx.Client(base_url=URL, timeout=120)


def stream_lines(client, body):
    with client.stream("POST", "/v1/models/lm:generate", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        return [json.loads(line) for line in r.iter_lines() if line]


def test_greedy_generation_streams_and_split_equals_monolithic(lm):
    texts = {}
    for split in (None, "auto", "auto:4"):
        c = deploy(lm, split=split)
        meta = c.get("/v1/models/lm").json()
        assert meta["verbs"] == ["generate"] and meta["generate"]["context"] == 64
        lines = stream_lines(c, {"prompt": PROMPT, "max_new_tokens": 100})
        assert [x["index"] for x in lines[:-1]] == list(range(100))
        summary = lines[-1]
        assert summary["done"] and summary["tokens"] == 100
        assert "".join(x["token"] for x in lines[:-1]) == summary["text"]
        texts[str(split)] = summary["text"]
        whole = c.post("/v1/models/lm:generate", json={"prompt": PROMPT, "max_new_tokens": 100, "stream": False})
        assert whole.status_code == 200 and whole.json()["text"] == summary["text"]
    assert texts == {k: lm["expected"] for k in texts}, texts


def test_split_generation_with_two_replicas_per_stage_equals_monolithic(lm):
    """Two replicas per stage, concurrent requests: Serve's multiplexed routing keeps a request on
    the replica holding its cache, and when it does not the request re-feeds its segment (that
    recovery is tested directly, losing caches on purpose, in the driver test above)."""
    c = deploy(lm, split="auto", stages={"num_replicas": 2, "num_cpus": 0.1})

    async def one():
        async with httpx.AsyncClient(base_url=URL, timeout=120) as ac:
            body = {"prompt": PROMPT, "max_new_tokens": 100, "stream": False}
            r = await ac.post("/v1/models/lm:generate", json=body)
            assert r.status_code == 200, r.text
            return r.json()["text"]

    async def many():
        return await asyncio.gather(*(one() for _ in range(6)))

    assert run_async(many()) == [lm["expected"]] * 6
    assert c.get("/healthz").status_code == 200


def test_the_first_chunk_comes_before_the_end_and_a_disconnect_stops_the_work(lm):
    # split into 4 stage services: each token takes 4 hops, so 1024 tokens take seconds (the tiny
    # model alone makes them in well under one, which could end before the first check), and the
    # disconnect also has to release the stages' caches
    c = deploy(lm, split="auto:4")
    before = c.get("/v1/models/lm").json()["generate"]["generated_tokens"]
    with c.stream("POST", "/v1/models/lm:generate", json={"prompt": PROMPT, "max_new_tokens": 1024}) as r:
        it = r.iter_lines()
        first = json.loads(next(it))
        assert first == {"token": first["token"], "index": 0}
        # the stream is open and the replica is still generating it
        now = c.get("/v1/models/lm").json()["generate"]
        if now["active"] != 1:  # say what the stream held, to tell an early end from an error
            rest = list(it)
            raise AssertionError(f"active {now['active']}, made {now['generated_tokens']}, then {rest[-3:]}")
    # the client went away: the generation ends without finishing its 1024 tokens
    deadline = time.monotonic() + 120
    while (g := c.get("/v1/models/lm").json()["generate"])["active"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert g["active"] == 0
    assert g["generated_tokens"] - before < 1024
    assert stream_lines(c, {"prompt": PROMPT, "max_new_tokens": 5})[-1]["tokens"] == 5


BAD = [
    ({"prompt": ""}, "prompt must be a non-empty string"),
    ({"prompt": 5}, "prompt must be a non-empty string"),
    ({}, "prompt must be a non-empty string"),
    ({"prompt": "snow \u2603"}, "characters the model does not know: ['\u2603']"),
    ({"prompt": "x" * 65}, "prompt is 65 characters; this model's context is 64"),
    ({"prompt": "a", "max_new_tokens": 0}, "max_new_tokens must be an integer from 1 to 200"),
    ({"prompt": "a", "max_new_tokens": 201}, "max_new_tokens must be an integer from 1 to 200"),
    ({"prompt": "a", "max_new_tokens": 2.5}, "max_new_tokens must be an integer"),
    ({"prompt": "a", "temperature": -0.1}, "temperature must be a number from 0"),
    ({"prompt": "a", "temperature": 2.5}, "temperature must be a number from 0"),
    ({"prompt": "a", "temperature": "hot"}, "temperature must be a number from 0"),
    ({"prompt": "a", "top_k": 0}, "top_k must be an integer from 1"),
    ({"prompt": "a", "seed": -1}, "seed must be an integer from 0"),
    ({"prompt": "a", "stream": "yes"}, "stream must be true or false"),
    ({"prompt": "a", "max_tokens": 3}, "unknown field(s) ['max_tokens']"),
    ([1, 2], "must be a JSON object"),
]


def test_bad_generate_requests_get_a_400_and_the_replica_survives(lm):
    c = deploy(lm, max_new_tokens=200)
    for body, fragment in BAD:
        r = c.post("/v1/models/lm:generate", json=body)
        assert r.status_code == 400 and fragment in r.json()["error"], (body, r.status_code, r.text)
    r = c.post("/v1/models/lm:generate", content=b'{"prompt": NaN}', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "NaN is not a JSON number" in r.json()["error"]
    assert c.post("/v1/models/lm:predict", json={"instances": [[1]]}).status_code == 404
    ok = c.post("/v1/models/lm:generate", json={"prompt": "a", "max_new_tokens": 3, "stream": False})
    assert ok.status_code == 200 and ok.json()["tokens"] == 3


def test_sampling_with_a_seed_is_reproducible_over_http(lm):
    c = deploy(lm)
    body = {"prompt": PROMPT, "max_new_tokens": 40, "temperature": 1.0, "top_k": 10, "stream": False}
    a, b, other = (c.post("/v1/models/lm:generate", json={**body, "seed": s}).json()["text"] for s in (7, 7, 8))
    assert a == b != other
    expected = list(generate(lm["model"], lm["tokenizer"].encode(PROMPT), 40, 1.0, 10, seed=7))
    assert a == lm["tokenizer"].decode(expected)
    assert np.isfinite(c.get("/v1/models/lm").json()["metrics"]["test_bpc"])


def test_the_web_page_streams_generation_under_a_route_prefix(lm, browser):
    from playwright.sync_api import expect
    from ray import serve

    from modelfoundry.serving.apps import build_app

    serve.run(build_app({"store": lm["store"], "model": "lm"}), name="writer", route_prefix="/writer")
    page = browser.new_page()
    page.goto(f"{URL}/writer")  # the page and its API calls under the app's prefix
    expect(page.locator("#panel-generate")).to_be_visible()
    page.fill("#prompt", PROMPT)
    page.fill("#max-new", "100")
    page.click("#generate")
    out = page.locator("#generated")
    expect(out).to_have_attribute("data-done", "true")
    assert out.inner_text() == PROMPT + lm["expected"]
    assert out.get_attribute("data-text") == lm["expected"]
    assert int(out.get_attribute("data-chunks")) > 1  # read as a stream, not as one body
    page.fill("#prompt", "caf\u00e9 \u20ac")
    page.click("#generate")
    expect(page.locator("#message")).to_contain_text("The service answered 400: prompt holds characters")
    page.close()
    serve.delete("writer")


def wait_for_no_active_generation(c: httpx.Client) -> None:
    """Until the replica reports no generation in progress (a condition, bounded)."""
    deadline = time.monotonic() + 120
    while c.get("/v1/models/lm").json()["generate"]["active"]:
        assert time.monotonic() < deadline, "a generation's slot never came back"
        time.sleep(0.05)


def test_generation_limits_tiny_temperatures_and_content_types(lm):
    """A generation cap per replica (429 with Retry-After beyond it, the slot freed when a stream
    ends), sampling that stays finite at any temperature the API admits, JSON only."""
    c = deploy(lm, split="auto:4", max_generations=1, max_queued_generations=0, micro_batches=1)
    for stream in (False, True):
        body = {"prompt": PROMPT, "max_new_tokens": 8, "temperature": 1e-300, "stream": stream}
        if stream:
            assert stream_lines(c, body)[-1]["text"] == lm["expected"][:8]  # greedy below the floor
        else:
            r = c.post("/v1/models/lm:generate", json=body)
            assert r.status_code == 200 and r.json()["text"] == lm["expected"][:8], r.text
    # one slot, no queue: of a burst of 6 requests arriving together, those that find the slot
    # taken are refused at once (a generation here takes 300 steps of 4 stage hops each)
    wait_for_no_active_generation(c)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        body = {"prompt": PROMPT, "max_new_tokens": 300, "stream": False}
        burst = list(pool.map(lambda _: c.post("/v1/models/lm:generate", json=body), range(6)))
    busy = [r for r in burst if r.status_code == 429]
    assert busy and all(r.status_code == 200 for r in burst if r not in busy), [r.status_code for r in burst]
    assert all(r.json()["text"][:100] == lm["expected"] for r in burst if r not in busy)  # greedy: its prefix
    assert busy[0].headers["retry-after"] == "1", busy[0].text
    assert "1 generations are running or queued on this replica" in busy[0].json()["error"]
    wait_for_no_active_generation(c)  # the slot comes back
    assert stream_lines(c, {"prompt": PROMPT, "max_new_tokens": 3})[-1]["tokens"] == 3
    r = c.post("/v1/models/lm:generate", content=json.dumps({"prompt": "a"}), headers={"content-type": "text/plain"})
    assert r.status_code == 415


def test_ending_an_evicted_micro_batch_never_evicts_a_live_one(lm):
    """A stage replica holds MAX_BATCHES_PER_REPLICA micro-batches' caches (an LRU). Ending one the
    LRU already dropped must not load it again: that would evict the least recent live one."""
    from ray import serve

    from modelfoundry.serving.batch_step import Prefill, StepMessage
    from modelfoundry.serving.stage import MAX_BATCHES_PER_REPLICA

    deploy(lm, split="auto")
    ids = np.asarray([lm["tokenizer"].encode(PROMPT)], dtype=np.int64)
    n = MAX_BATCHES_PER_REPLICA + 1

    async def run():  # the handle routes on its caller's event loop (Serve's fast path)
        stage = serve.get_deployment_handle("stage-0", app_name="lm")
        for i in range(n):  # batch 0 is evicted by the last one
            msg = StepMessage(f"b{i}", (), (), None, (Prefill("seq", ids, 64),))
            assert await stage.options(method_name="decode_step", multiplexed_model_id=f"b{i}").remote(msg)
        await stage.options(method_name="end_batch", multiplexed_model_id="b0").remote()
        return await stage.options(method_name="batch_ids").remote()

    # a loop left open (Serve's shutdown reaches the handles made on it), in a thread of its own
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        live = pool.submit(lambda: asyncio.new_event_loop().run_until_complete(run())).result()
    assert "b0" not in live and "b1" in live and len(live) == MAX_BATCHES_PER_REPLICA, sorted(live)


def test_a_failure_mid_stream_ends_it_with_the_request_id_never_the_exception():
    """After the first byte the error goes in the stream: one JSON line naming the request id;
    the exception's text stays in the log, and the failed row leaves the engine."""
    from modelfoundry.serving.ingress import Ingress

    cls = Ingress.func_or_class  # the replica's class; its methods on a stand-in for a replica
    spec = types.SimpleNamespace(config={"context": 16}, version="1")
    ingress = types.SimpleNamespace(spec=spec, name="lm", tokenizer=CharTokenizer("abc"), generated_tokens=0)
    for method in ("_stream", "_counted", "_summary"):
        setattr(ingress, method, types.MethodType(getattr(cls, method), ingress))

    class Failing:
        batch, calls = "b", 0

        async def run(self, msg):
            Failing.calls += 1
            if Failing.calls > 2:
                raise RuntimeError("/secret/path/to/weights.pt: internal detail")
            rows = len(msg.keys)
            return replace(
                msg,
                x=np.tile(np.float32([0, 5, 1]), (rows, 1)) if rows else None,
                prefill=tuple(replace(p, x=np.float32([0, 5, 1])) for p in msg.prefill),
            )

        def reset(self):
            pass

    async def run():
        engine = Engine([Failing()], Limits(16, 4, 64, 0))
        job = engine.submit(GenerateRequest([0], 10, 0.0, None, None, True))
        ingress.engine = engine
        chunks = [x async for x in ingress._stream(ingress._counted(engine.tokens(job)), "req-7")]
        lines = [json.loads(x) for x in b"".join(chunks).splitlines()]
        return lines, engine.active

    lines, active = run_async(run())
    assert [x.get("token") for x in lines[:2]] == ["b", "b"]
    assert lines[-1] == {"error": "generation failed (request id req-7)"} and active == 0


# ---- the OpenAI-compatible API, through the official openai client (sync and async)
KEY = "sk-test-0123456789"


def text_alone(lm, prompt: str, n: int, temperature: float = 0.0, seed: int | None = None, top_p=None) -> str:
    tok = lm["tokenizer"]
    return tok.decode(list(generate(lm["model"], tok.encode(prompt), n, temperature, None, seed, top_p)))


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "keys"
    keys.write_text(KEY + "\n")
    return str(keys)


@pytest.fixture
def openai_app(lm, keys_file):
    """Deployed for each test (another test may have replaced the app; an unchanged config is
    left running as it is)."""
    deploy(lm, max_generations=2, max_queued_generations=0, api_keys_file=keys_file)
    return lm


def test_openai_completions_sync_streaming_stop_seed_and_usage(openai_app):
    import openai

    lm = openai_app
    client = openai.OpenAI(base_url=f"{URL}/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in client.models.list()] == ["lm"]
    r = client.completions.create(model="lm", prompt=PROMPT, max_tokens=100, temperature=0)
    assert r.choices[0].text == lm["expected"] and r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (
        len(PROMPT),
        100,
        len(PROMPT) + 100,
    )
    chunks = list(
        client.completions.create(
            model="lm",
            prompt=PROMPT,
            max_tokens=100,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == lm["expected"]
    assert len(chunks) > 10 and chunks[-1].usage.completion_tokens == 100
    stop = lm["expected"][30:33]
    r = client.completions.create(model="lm", prompt=PROMPT, max_tokens=100, temperature=0, stop=[stop, "\x00"])
    assert r.choices[0].text == lm["expected"][: lm["expected"].find(stop)] and r.choices[0].finish_reason == "stop"
    streamed = client.completions.create(
        model="lm", prompt=PROMPT, max_tokens=100, temperature=0, stop=stop, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == r.choices[0].text
    r = client.completions.create(model="lm", prompt=PROMPT, max_tokens=30, temperature=1.0, seed=7, n=2, top_p=0.9)
    got = sorted((c.index, c.text) for c in r.choices)
    assert got == [(0, text_alone(lm, PROMPT, 30, 1.0, 7, 0.9)), (1, text_alone(lm, PROMPT, 30, 1.0, 8, 0.9))]
    assert got[0][1] != got[1][1]


def test_openai_chat_sync_and_async_streaming(openai_app):
    import openai

    lm = openai_app
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "with"}]
    expected = text_alone(lm, "System: Be brief.\nUser: with\nAssistant:", 40)
    client = openai.OpenAI(base_url=f"{URL}/v1", api_key=KEY, max_retries=0)
    r = client.chat.completions.create(model="lm", messages=messages, max_tokens=40, temperature=0)
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content == expected
    assert r.object == "chat.completion" and r.usage.completion_tokens == 40
    stream = client.chat.completions.create(model="lm", messages=messages, max_tokens=40, temperature=0, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "length"

    async def run():
        aclient = openai.AsyncOpenAI(base_url=f"{URL}/v1", api_key=KEY, max_retries=0)
        whole = await aclient.completions.create(model="lm", prompt=PROMPT, max_tokens=100, temperature=0)
        parts = []
        async for c in await aclient.chat.completions.create(
            model="lm", messages=messages, max_tokens=40, temperature=0, stream=True
        ):
            parts.append(c.choices[0].delta.content or "")
        await aclient.close()
        return whole.choices[0].text, "".join(parts)

    assert run_async(run()) == (lm["expected"], expected)


def test_the_shipped_writer_config_starts_and_answers_the_openai_client(lm, monkeypatch):
    """serve_apps/writer.yaml's application, built as `serve run` builds it (Serve's own import of
    the import_path and its call of the builder with the YAML's args, pointed at this store and
    model)."""
    from pathlib import Path

    import openai
    import yaml
    from ray import serve
    from ray._common.utils import import_attr
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    root = Path(__file__).resolve().parent.parent
    monkeypatch.syspath_prepend(str(root))  # import_path modules, as `serve` finds them from the project root
    app_cfg = yaml.safe_load((root / "serve_apps" / "writer.yaml").read_text())["applications"][0]
    args = {**app_cfg["args"], "store": lm["store"], "model": "lm"}
    app = call_user_app_builder_with_args_if_necessary(import_attr(app_cfg["import_path"]), args)
    serve.run(app, name="lm", route_prefix="/")
    client = openai.OpenAI(base_url=f"{URL}/v1", api_key="none", max_retries=0)
    r = client.completions.create(model="lm", prompt=PROMPT, max_tokens=100, temperature=0)
    assert r.choices[0].text == lm["expected"]
    meta = httpx.get(f"{URL}/v1/models/lm").json()["generate"]
    assert (meta["max_new_tokens"], meta["max_generations"], meta["max_queued_generations"]) == (512, 64, 256)


def test_openai_errors_have_openai_types_and_shape(openai_app):
    import openai

    client = openai.OpenAI(base_url=f"{URL}/v1", api_key=KEY, max_retries=0)
    r = httpx.post(f"{URL}/v1/completions", json={"model": "lm", "prompt": "a"})  # no key (the client insists on one)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error", r.text
    with pytest.raises(openai.PermissionDeniedError):
        openai.OpenAI(base_url=f"{URL}/v1", api_key="wrong", max_retries=0).completions.create(model="lm", prompt="a")
    with pytest.raises(openai.NotFoundError) as err:
        client.completions.create(model="gpt-4", prompt="a")
    assert err.value.code == "model_not_found" and err.value.param == "model"
    bad = [
        ({"prompt": "a", "max_tokens": 0}, "max_tokens", None),
        ({"prompt": "a", "temperature": 3}, "temperature", None),
        ({"prompt": "a", "top_p": 0}, "top_p", None),
        ({"prompt": "a", "n": 9}, "n", None),
        ({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, "stop", None),
        ({"prompt": "x" * 65}, "prompt", "context_length_exceeded"),
        ({"prompt": "snow \u2603"}, "prompt", None),
        ({"prompt": "a", "logprobs": 2}, "logprobs", None),
        ({"prompt": "a", "extra_body": None, "frobnicate": 1}, "frobnicate", "unsupported_parameter"),
    ]
    for body, param, code in bad:
        extra = {
            k: v
            for k, v in body.items()
            if k not in ("prompt", "max_tokens", "temperature", "top_p", "n", "stop", "logprobs", "extra_body")
        }
        kwargs = {k: v for k, v in body.items() if k not in extra and k != "extra_body"}
        with pytest.raises(openai.BadRequestError) as err:
            client.completions.create(model="lm", extra_body=extra or None, **kwargs)
        assert (err.value.param, err.value.code) == (param, code), (body, err.value.body)
        assert err.value.type == "invalid_request_error" and err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="lm", messages=[{"role": "robot", "content": "hi"}])
    assert err.value.param == "messages"

    # two rows, no queue: of a burst of 8 completions arriving together, those beyond the two
    # running are refused with 429 (the client's RateLimitError), the others answer in full
    def complete(_):
        try:
            return client.completions.create(model="lm", prompt=PROMPT, max_tokens=400, temperature=0)
        except openai.RateLimitError as e:
            return e

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        burst = list(pool.map(complete, range(8)))
    refused = [r for r in burst if isinstance(r, openai.RateLimitError)]
    assert refused and refused[0].type == "rate_limit_error", burst
    assert all(
        r.choices[0].text[:100] == openai_app["expected"] and r.usage.completion_tokens == 400
        for r in burst
        if r not in refused
    )
    c = httpx.Client(base_url=URL, timeout=60, headers={"authorization": f"Bearer {KEY}"})
    wait_for_no_active_generation(c)
    assert client.completions.create(model="lm", prompt="a", max_tokens=2).usage.completion_tokens == 2


def test_continuous_batching_over_http_equals_alone_monolithic_and_split(lm):
    """32 requests of different prompts and lengths, arriving at random times, greedy and seeded:
    each text equals its generation alone, on a monolithic app and a split one (2 micro-batches
    in flight through 2 stages)."""
    rng = random.Random(11)
    text = PROMPT + lm["expected"]
    bodies = []
    for i in range(32):
        start = rng.randrange(0, len(text) - 40)
        body = {"prompt": text[start : start + rng.randint(1, 40)], "max_new_tokens": rng.randint(1, 90)}
        if i % 4 == 0:
            body.update(temperature=0.8, top_k=8, seed=i)
        bodies.append(body)
    tok = lm["tokenizer"]
    expected = [
        tok.decode(
            alone(
                lm["model"],
                GenerateRequest(
                    tok.encode(b["prompt"]),
                    b["max_new_tokens"],
                    b.get("temperature", 0.0),
                    b.get("top_k"),
                    b.get("seed"),
                    True,
                ),
            )
        )
        for b in bodies
    ]

    async def one(ac, body, delay):
        await asyncio.sleep(delay)
        r = await ac.post("/v1/models/lm:generate", json={**body, "stream": False})
        assert r.status_code == 200, r.text
        return r.json()["text"]

    async def many():
        async with httpx.AsyncClient(base_url=URL, timeout=120, limits=httpx.Limits(max_connections=40)) as ac:
            return await asyncio.gather(*(one(ac, b, rng.random() * 0.3) for b in bodies))

    for split in (None, "auto"):
        c = deploy(lm, split=split)
        before = c.get("/v1/models/lm").json()["generate"]["steps"]
        assert run_async(many()) == expected, split
        steps = c.get("/v1/models/lm").json()["generate"]["steps"] - before
        assert steps < sum(b["max_new_tokens"] for b in bodies) / 2, (split, steps)  # the steps were shared


def test_streams_survive_stage_replicas_killed_20_times(lm):
    """8 concurrent streams on a split app (2 replicas per stage) while stage replicas are
    SIGKILLed 20 times (a stage's next victim only once Serve has replaced its last; the other
    stage's may still be starting): no stream fails, each text equals its generation alone (the
    scheduler re-feeds the prompt and the tokens sent on a live replica). Prints the stall: the
    longest gap between tokens after each kill."""
    import os
    import signal
    import threading

    from ray.util.state import list_actors

    stage_names = ("stage-0", "stage-1")
    deploy(lm, split="auto", stages={"num_replicas": 2, "num_cpus": 0.1}, max_new_tokens=1024)
    prompts = [PROMPT[:k] for k in range(6, 14)]
    tok, n_new = lm["tokenizer"], 400
    refs = {p: tok.decode(list(generate(lm["model"], tok.encode(p), n_new))) for p in prompts}

    def stage_replicas() -> list:
        alive = list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
        return [a for a in alive if a.class_name.startswith(tuple(f"ServeReplica:lm:{s}" for s in stage_names))]

    stop, lock = threading.Event(), threading.Lock()
    streams: list[dict] = []  # prompt, token times, text, error
    tokens_seen = [0]

    def client(i: int) -> None:
        with httpx.Client(base_url=URL, timeout=120) as http:
            for k in range(40):  # bounded in count; the test stops it when the kills are done
                if stop.is_set():
                    return
                prompt = prompts[(i + k) % len(prompts)]
                s = {"prompt": prompt, "times": [], "text": "", "error": None}
                with lock:
                    streams.append(s)
                try:
                    body = {"prompt": prompt, "max_new_tokens": n_new}
                    with http.stream("POST", "/v1/models/lm:generate", json=body) as r:
                        for raw in r.iter_lines():
                            msg = json.loads(raw) if raw else {}
                            if "token" in msg:
                                s["times"].append(time.monotonic())
                                s["text"] += msg["token"]
                                with lock:
                                    tokens_seen[0] += 1
                            elif "error" in msg:
                                s["error"] = msg["error"]
                except httpx.HTTPError as err:
                    s["error"] = f"{type(err).__name__}: {err}"

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    kills: list[float] = []
    rng = random.Random(5)
    try:
        deadline = time.monotonic() + 600
        while len(kills) < 20 and time.monotonic() < deadline:
            replicas = stage_replicas()
            # a victim in a stage whose last victim Serve has replaced (the other stage's may
            # still be starting: the stages take turns), while the streams flow
            by_stage = {
                s: [a for a in replicas if a.class_name.startswith(f"ServeReplica:lm:{s}")] for s in stage_names
            }
            ready = [a for group in by_stage.values() if len(group) == 2 for a in group]
            if not ready or tokens_seen[0] < (len(kills) + 1) * 200:
                time.sleep(0.1)
                continue
            victim = rng.choice(ready)
            kills.append(time.monotonic())
            os.kill(victim.pid, signal.SIGKILL)
            while victim.actor_id in {a.actor_id for a in stage_replicas()} and time.monotonic() < deadline:
                time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=180)
    done = [s for s in streams if s["error"] or len(s["times"]) == n_new]
    failed = [(s["prompt"], s["error"], len(s["times"])) for s in streams if s["error"]]
    wrong = [s["prompt"] for s in done if not s["error"] and s["text"] != refs[s["prompt"]]]
    stalls = []
    for t_kill in kills:
        gaps = [b - a for s in streams for a, b in zip(s["times"], s["times"][1:]) if t_kill <= b <= t_kill + 30]
        stalls.append(max(gaps, default=0.0))
    q = statistics.quantiles(stalls, n=20, method="inclusive") if len(stalls) > 1 else stalls * 19
    print(
        f"stage kills: {len(kills)}, streams {len(streams)} ({len(done)} ended), failed {len(failed)}, "
        f"stall after a kill p50 {statistics.median(stalls):.3f} s p95 {q[18]:.3f} s max {max(stalls):.3f} s"
    )
    assert len(kills) == 20
    assert failed == [] and wrong == [], (failed[:3], wrong[:3])
    assert len(done) >= 16
