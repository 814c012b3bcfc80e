"""fastinfer-server driven by the official openai client: completions, chat,
streaming, sampling parameters, stop strings, n, errors, queue overflow and
SIGTERM. References are independent of the server: the golden greedy
continuations (../shared/golden), fastinfer-generate's output, and the
server's own answers under a different path (stream vs not, chat vs the
documented plain rendering as a completion).

Usage: test_openai_client.py SERVER_BIN GENERATE_BIN SHARED_DIR
"""
import json
import threading
import time

import openai

from server_harness import Checks, Server, golden_cases, generate_ids, require_shared

require_shared()
checks = Checks()
server = Server("--max-seqs", "8")
client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
MODEL = client.models.list().data[0].id
CASES = golden_cases()


def complete(prompt, **kw):
    kw.setdefault("temperature", 0)
    extra = kw.pop("extra_body", {})
    extra.setdefault("return_token_ids", True)
    return client.completions.create(model=MODEL, prompt=prompt, extra_body=extra, **kw)


def stream_completion(prompt, **kw):
    """(text, token ids, chunks with a token, finish reasons) of a streamed completion."""
    kw.setdefault("temperature", 0)
    extra = {"return_token_ids": True, **kw.pop("extra_body", {})}
    text, ids, token_chunks, finish = {}, {}, 0, {}
    for chunk in client.completions.create(model=MODEL, prompt=prompt, stream=True, extra_body=extra, **kw):
        for c in chunk.choices:
            text[c.index] = text.get(c.index, "") + c.text
            got = c.model_extra.get("token_ids") or []
            assert len(got) <= 1, f"one token per chunk, got {got}"
            ids.setdefault(c.index, []).extend(got)
            token_chunks += len(got)
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    return text, ids, token_chunks, finish


def check_models():
    models = client.models.list().data
    assert [m.id for m in models] == ["tinystories-656k"], models
    status, health = server.http("GET", "/health")
    assert status == 200 and health == {"status": "ok"}, health


def check_golden_greedy():
    # Every golden case: the server's greedy tokens = the golden file's =
    # fastinfer-generate's; usage and finish_reason agree.
    for case in CASES:
        r = complete(case["prompt"], max_tokens=case["max_new_tokens"])
        c = r.choices[0]
        got = c.model_extra["token_ids"]
        assert got == case["continuation"], f"{case['name']}: server {got[:8]}... != golden"
        assert got == generate_ids(case["prompt"], case["max_new_tokens"]), f"{case['name']}: != fastinfer-generate"
        want_finish = "stop" if case["stopped_by"] == "eos" else "length"
        assert c.finish_reason == want_finish, (case["name"], c.finish_reason, case["stopped_by"])
        assert r.usage.prompt_tokens == len(case["prompt"]), r.usage
        assert r.usage.completion_tokens == len(case["continuation"]), r.usage
        assert r.usage.total_tokens == len(case["prompt"]) + len(case["continuation"])


def check_text_prompt():
    # A text prompt is tokenised by the server (BOS first): the golden case
    # whose text is the prompt gives the golden tokens and text.
    case = next(c for c in CASES if c["name"] == "once_upon_a_time")
    r = complete(case["text"], max_tokens=case["max_new_tokens"])
    assert r.usage.prompt_tokens == len(case["prompt"]), (r.usage, case["prompt"])
    assert r.choices[0].model_extra["token_ids"] == case["continuation"]
    assert r.choices[0].text == case["continuation_text"].replace("\\n", "\n")[: len(r.choices[0].text)]


def check_streaming_equals_plain():
    for case in CASES[:2]:
        plain = complete(case["prompt"], max_tokens=48)
        text, ids, token_chunks, finish = stream_completion(case["prompt"], max_tokens=48)
        assert ids[0] == plain.choices[0].model_extra["token_ids"]
        assert token_chunks == plain.usage.completion_tokens, "one chunk per token"
        assert text[0] == plain.choices[0].text
        assert finish == {0: plain.choices[0].finish_reason}


def check_chat_is_plain_concatenation():
    # The model has no chat template: messages render as "content\n" each
    # (docs/server.md), so chat = a completion of that text.
    messages = [{"role": "system", "content": "Tell a story."}, {"role": "user", "content": "Tom had a red ball."}]
    chat = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0)
    plain = complete("Tell a story.\nTom had a red ball.\n", max_tokens=24)
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content == plain.choices[0].text
    assert chat.usage.prompt_tokens == plain.usage.prompt_tokens
    assert chat.choices[0].finish_reason == plain.choices[0].finish_reason
    parts, roles, finish = [], [], None
    for chunk in client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0,
                                                stream=True, stream_options={"include_usage": True}):
        if chunk.usage:
            assert chunk.usage.completion_tokens == chat.usage.completion_tokens
        for c in chunk.choices:
            if c.delta.role:
                roles.append(c.delta.role)
            parts.append(c.delta.content or "")
            finish = c.finish_reason or finish
    assert roles == ["assistant"], roles
    assert "".join(parts) == chat.choices[0].message.content
    assert finish == chat.choices[0].finish_reason


def check_stop_strings():
    case = CASES[0]
    full = complete(case["prompt"], max_tokens=64).choices[0].text
    stop = full[20:27]  # a piece that starts inside the text: cut at its first occurrence
    want = full[: full.find(stop)]
    r = complete(case["prompt"], max_tokens=64, stop=[stop, "never appears zzz"])
    assert r.choices[0].text == want and r.choices[0].finish_reason == "stop", (r.choices[0].text, want)
    text, _, _, finish = stream_completion(case["prompt"], max_tokens=64, stop=stop)
    assert text[0] == want and finish[0] == "stop", (text, want)


def check_sampling():
    # Long enough that two seeds must part (ignore_eos: no early end).
    prompt, eb = "Lily and Ben", {"ignore_eos": True}
    a = complete(prompt, max_tokens=32, temperature=0.9, seed=7, extra_body=dict(eb))
    b = complete(prompt, max_tokens=32, temperature=0.9, seed=7, extra_body=dict(eb))
    c = complete(prompt, max_tokens=32, temperature=0.9, seed=8, extra_body=dict(eb))
    ids = lambda r, i=0: r.choices[i].model_extra["token_ids"]
    assert len(ids(a)) == 32 and a.choices[0].finish_reason == "length"
    assert ids(a) == ids(b), "same seed, same tokens"
    assert ids(a) != ids(c), "another seed, other tokens"
    _, streamed, _, _ = stream_completion(prompt, max_tokens=32, temperature=0.9, seed=7, extra_body=dict(eb))
    assert streamed[0] == ids(a), "streaming samples the same tokens"
    greedy = ids(complete(prompt, max_tokens=32, extra_body=dict(eb)))
    assert greedy != ids(a)
    # top_k 1 and a tiny top_p keep only the argmax: sampling = greedy.
    assert ids(complete(prompt, max_tokens=32, temperature=1.0, seed=3, extra_body={"top_k": 1, **eb})) == greedy
    assert ids(complete(prompt, max_tokens=32, temperature=1.0, seed=3, top_p=1e-6, extra_body=dict(eb))) == greedy
    # n choices: choice i draws with seed + i (docs/server.md).
    n = complete(prompt, max_tokens=32, temperature=0.9, seed=7, n=3, extra_body=dict(eb))
    assert [ch.index for ch in n.choices] == [0, 1, 2]
    assert ids(n, 0) == ids(a) and ids(n, 1) == ids(c)
    assert ids(n, 2) == ids(complete(prompt, max_tokens=32, temperature=0.9, seed=9, extra_body=dict(eb)))
    assert n.usage.completion_tokens == 3 * 32
    _, streamed, _, finish = stream_completion(prompt, max_tokens=32, temperature=0.9, seed=7, n=3, extra_body=dict(eb))
    assert [streamed[i] for i in range(3)] == [ids(n, i) for i in range(3)] and len(finish) == 3


def expect_400(param, **kw):
    try:
        client.completions.create(model=MODEL, **kw)
    except openai.BadRequestError as e:
        assert e.status_code == 400 and e.body["param"] == param, (e.status_code, e.body)
        return
    raise AssertionError(f"no 400 for {kw}")


def check_errors():
    expect_400("max_tokens", prompt="Hi", max_tokens="many")
    expect_400("temperature", prompt="Hi", temperature="hot")
    expect_400("temperature", prompt="Hi", temperature=5)
    expect_400("temperature", prompt="Hi", temperature=1e-40)
    expect_400("top_p", prompt="Hi", top_p=[1])
    expect_400("n", prompt="Hi", n=1000)
    expect_400("stop", prompt="Hi", stop=7)
    expect_400("seed", prompt="Hi", seed="x")
    expect_400("stream", prompt="Hi", extra_body={"stream": "yes"})
    expect_400("prompt", prompt=[1] * 600)  # the context is 512
    expect_400("prompt", prompt=[1, 5000])  # outside the vocabulary of 2048
    expect_400("prompt", prompt={"a": 1})
    expect_400("max_tokens", prompt=[1] * 500, max_tokens=100)
    try:
        client.chat.completions.create(model=MODEL, messages="hello")
        raise AssertionError("no 400 for messages='hello'")
    except openai.BadRequestError as e:
        assert e.body["param"] == "messages", e.body
    for raw in (b'{"prompt": "Hi", "max_tokens": 4', b"not json", b"[1, 2]", b"\xff\xfe"):
        status, body = server.http("POST", "/v1/completions", raw=raw)
        assert status == 400 and body["error"]["param"] == "body", (raw, status, body)
    status, body = server.http("POST", "/v1/completions", raw=b'{"prompt": "' + b"a" * (10 << 20) + b'"}')
    assert status == 400 and body["error"]["param"] == "body", (status, body)
    status, body = server.http("GET", "/v1/nothing")
    assert status == 404 and "error" in body, body
    # ...and the server still serves.
    assert complete(CASES[0]["prompt"], max_tokens=8).choices[0].model_extra["token_ids"] == CASES[0]["continuation"][:8]


def check_metrics():
    # A prompt of three full KV blocks, twice: the second finds them cached.
    long_prompt = CASES[0]["prompt"] + CASES[0]["continuation"][:40]
    assert complete(long_prompt, max_tokens=4).choices[0].model_extra["token_ids"] == CASES[0]["continuation"][40:44]
    complete(long_prompt, max_tokens=4)
    m = server.wait_idle()
    for name in ("fastinfer_requests_running", "fastinfer_requests_waiting", "fastinfer_generation_tokens_per_second",
                 "fastinfer_time_to_first_token_seconds_count", "fastinfer_inter_token_latency_seconds_count",
                 "fastinfer_kv_utilisation", "fastinfer_prefix_cache_hit_rate", "fastinfer_spec_acceptance_rate"):
        assert name in m, f"{name} missing from /metrics"
    assert m["fastinfer_time_to_first_token_seconds_count"] > 0
    assert m['fastinfer_time_to_first_token_seconds_bucket{le="+Inf"}'] == m["fastinfer_time_to_first_token_seconds_count"]
    assert m["fastinfer_prefix_cache_hit_rate"] > 0, "a prompt of full blocks was sent twice"
    sub, fin, can = (m[f'fastinfer_requests_total{{outcome="{o}"}}'] for o in ("submitted", "finished", "cancelled"))
    assert sub == fin + can, m
    server.assert_pool_whole()


def check_queue_overflow():
    # 2 running + 2 waiting allowed: of 48 concurrent long requests most are
    # refused with 429 and a JSON error, every admitted one completes, and
    # the server keeps serving.
    small = Server("--max-seqs", "2", "--max-queue", "2")
    results = []
    body = {"prompt": [1, 80], "max_tokens": 200, "temperature": 0, "ignore_eos": True}

    def one():
        results.append(small.http("POST", "/v1/completions", body=body))

    threads = [threading.Thread(target=one) for _ in range(48)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = [b for s, b in results if s == 200]
    refused = [b for s, b in results if s == 429]
    assert len(ok) + len(refused) == 48, [s for s, _ in results]
    assert refused and all(b["error"]["type"] == "rate_limit_error" for b in refused)
    assert len(ok) >= 4 and all(len(b["choices"][0]["text"]) > 0 and b["usage"]["completion_tokens"] == 200 for b in ok)
    status, body = small.http("POST", "/v1/completions", body={"prompt": "Hi", "max_tokens": 4})
    assert status == 200, body
    m = small.wait_idle()
    assert m['fastinfer_requests_total{outcome="rejected"}'] == len(refused), m
    small.assert_pool_whole()
    small.stop()


def check_speculation():
    # Prompt-lookup speculation and EAGLE trees inside the batch: greedy
    # tokens unchanged, drafts counted in /metrics.
    s = Server("--spec", "prompt-lookup", "--spec-k", "4")
    c = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0)
    for case in CASES:
        r = c.completions.create(model=MODEL, prompt=case["prompt"], max_tokens=case["max_new_tokens"], temperature=0,
                                 extra_body={"return_token_ids": True})
        assert r.choices[0].model_extra["token_ids"] == case["continuation"], case["name"]
    m = s.metrics()
    assert m["fastinfer_spec_drafted_tokens_total"] > 0 and m["fastinfer_spec_accepted_tokens_total"] > 0, m
    assert 0 < m["fastinfer_spec_acceptance_rate"] <= 1
    s.assert_pool_whole()
    s.stop()
    # EAGLE trees (a random head: a poor drafter, still verified exactly),
    # three levels of two children.
    s = Server("--spec", "eagle", "--eagle-head", "random:1", "--spec-k", "4", "--eagle-depth", "3", "--eagle-top-k",
               "2")
    c = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0)
    for case in CASES:
        r = c.completions.create(model=MODEL, prompt=case["prompt"], max_tokens=case["max_new_tokens"], temperature=0,
                                 extra_body={"return_token_ids": True})
        assert r.choices[0].model_extra["token_ids"] == case["continuation"], case["name"]
    assert s.metrics()["fastinfer_spec_drafted_tokens_total"] > 0
    s.assert_pool_whole()
    s.stop()


def check_sigterm_finishes_in_flight():
    # SIGTERM during a stream: the stream still ends properly ([DONE]; the
    # grace period lets it finish) and the server exits 0.
    s = Server("--shutdown-grace", "30")
    c = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0)
    stream = c.completions.create(model=MODEL, prompt=[1, 80], max_tokens=300, temperature=0, stream=True,
                                  extra_body={"ignore_eos": True})
    first = next(iter(stream))
    s.proc.send_signal(15)
    time.sleep(0.2)
    status, _ = s.http("GET", "/health") if s.proc.poll() is None else (503, None)
    assert status == 503, "health says shutting down"
    finish = [c.finish_reason for chunk in stream for c in chunk.choices if c.finish_reason]
    assert finish == ["length"], finish
    assert s.proc.wait(timeout=60) == 0
    assert first.choices[0].text is not None


for name, check in [
    ("models and health", check_models),
    ("greedy = golden = fastinfer-generate", check_golden_greedy),
    ("text prompt", check_text_prompt),
    ("streaming = non-streaming", check_streaming_equals_plain),
    ("chat = plain concatenation", check_chat_is_plain_concatenation),
    ("stop strings", check_stop_strings),
    ("seed, top_k, top_p, n", check_sampling),
    ("errors are clean 400s", check_errors),
    ("metrics and KV pool", check_metrics),
    ("queue overflow gives 429", check_queue_overflow),
    ("speculation keeps greedy tokens", check_speculation),
    ("SIGTERM finishes in-flight streams", check_sigterm_finishes_in_flight),
    ("SIGTERM exits 0", server.stop),
]:
    checks.run(name, check)
checks.finish()
