"""Load test: 64 concurrent streaming clients (asyncio, the official
AsyncOpenAI client, loopback only), every fourth one disconnecting after a
few chunks. Checks: every completed stream is exactly its prompt's greedy
reference (taken first, one request at a time), no request lost or
duplicated (64 distinct response ids; the server's request counters add
up), the disconnected ones were cancelled, the KV pool is whole at the
end. Reports p99 TTFT as the clients saw it and as the server measured it.
Stops by itself: every client has a deadline.

Usage: test_load.py SERVER_BIN GENERATE_BIN SHARED_DIR
"""
import asyncio
import json
import resource
import time

import openai

from server_harness import Checks, Server, golden_cases, require_shared

CLIENTS = 64
MAX_TOKENS = 48
DISCONNECT_EVERY = 4  # clients 0, 4, 8, ... leave after DISCONNECT_AFTER chunks
DISCONNECT_AFTER = 2
LEAVER_TOKENS = 480  # what a leaving client asks for: it is surely still running when it leaves

require_shared()
checks = Checks()
# 6 ms per step: a leaver's 480 tokens take 3 s, far longer than its client
# needs to read 2 chunks and leave (the tiny model alone would finish first).
server = Server("--max-seqs", "32", "--max-queue", "64", "--debug-step-delay-ms", "6")
prompts = [case["prompt"] for case in golden_cases()]
prompts += [p[: max(2, len(p) // 2)] for p in prompts]  # shared prefixes, for the prefix cache


def references():
    c = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    out = []
    for p in prompts:
        r = c.completions.create(model="m", prompt=p, max_tokens=MAX_TOKENS, temperature=0,
                                 extra_body={"return_token_ids": True})
        out.append((r.choices[0].text, r.choices[0].model_extra["token_ids"], r.choices[0].finish_reason))
    return out


async def one_client(client, i, result):
    leaver = i % DISCONNECT_EVERY == 0
    p = [1, 80, 247] if leaver else prompts[i % len(prompts)]
    t0 = time.perf_counter()
    stream = await client.completions.create(model="m", prompt=p, max_tokens=LEAVER_TOKENS if leaver else MAX_TOKENS,
                                             temperature=0, stream=True,
                                             extra_body={"return_token_ids": True, "ignore_eos": leaver})
    text, ids, chunks, ids_seen, finish, ttft = "", [], 0, set(), None, None
    async for chunk in stream:
        ids_seen.add(chunk.id)
        for c in chunk.choices:
            got = c.model_extra.get("token_ids") or []
            if got and ttft is None:
                ttft = time.perf_counter() - t0
            text += c.text
            ids += got
            finish = c.finish_reason or finish
        chunks += 1
        if leaver and chunks == DISCONNECT_AFTER:
            await stream.response.aclose()  # the client goes away mid-stream
            result[i] = {"disconnected": True, "ids": ids_seen, "ttft": ttft}
            return
    result[i] = {"disconnected": False, "text": text, "tokens": ids, "finish": finish, "ids": ids_seen, "ttft": ttft}


async def load():
    result = {}
    async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120) as client:
        await asyncio.wait_for(asyncio.gather(*(one_client(client, i, result) for i in range(CLIENTS))), timeout=150)
    return result


def p99(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(0.99 * len(xs)))] if xs else float("nan")


def histogram_p99(before, after, name):
    """Upper bound of the bucket holding the 99th percentile of what was
    observed between two scrapes."""
    buckets = sorted((float(k.split('le="')[1].rstrip('"}')), after[k] - before.get(k, 0))
                     for k in after if k.startswith(name + "_bucket") and "+Inf" not in k)
    total = after[name + "_count"] - before.get(name + "_count", 0)
    for le, n in buckets:
        if n >= 0.99 * total:
            return le
    return float("inf")


def check_load():
    refs = references()
    before = server.wait_idle()
    t0 = time.time()
    result = asyncio.run(load())
    wall = time.time() - t0
    assert sorted(result) == list(range(CLIENTS)), "every client got an answer"
    response_ids = [r["ids"] for r in result.values()]
    assert all(len(s) == 1 for s in response_ids), "one response id per stream"
    assert len(set().union(*response_ids)) == CLIENTS, "no two clients got the same response"
    done = {i: r for i, r in result.items() if not r["disconnected"]}
    left = CLIENTS - len(done)
    assert left == len(range(0, CLIENTS, DISCONNECT_EVERY))
    for i, r in done.items():
        text, tokens, finish = refs[i % len(prompts)]
        assert r["tokens"] == tokens, f"client {i}: tokens differ from the greedy reference"
        assert r["text"] == text and r["finish"] == finish, f"client {i}: text or finish differs"
    after = server.wait_idle()
    delta = lambda o: after[f'fastinfer_requests_total{{outcome="{o}"}}'] - before[f'fastinfer_requests_total{{outcome="{o}"}}']
    assert delta("submitted") == CLIENTS, "the server saw each request once"
    assert delta("finished") + delta("cancelled") == CLIENTS
    # Every client that left was cancelled (its stream's next writes fail),
    # long before its LEAVER_TOKENS.
    assert delta("cancelled") == left, (delta("cancelled"), left)
    completed_tokens = sum(len(r["tokens"]) for r in done.values())
    leaver_tokens = after["fastinfer_generation_tokens_total"] - before["fastinfer_generation_tokens_total"] - completed_tokens
    assert leaver_tokens < left * LEAVER_TOKENS / 2, f"leavers got {leaver_tokens} tokens: not cancelled early"
    assert delta("rejected") == 0
    kv = server.assert_pool_whole()
    client_ttft = [r["ttft"] for r in result.values() if r["ttft"] is not None]
    print(f"load: {CLIENTS} streaming clients ({left} disconnected, {delta('cancelled'):.0f} cancelled) "
          f"in {wall:.2f} s, {leaver_tokens / left:.0f} tokens per leaver; client TTFT p50 {1e3 * sorted(client_ttft)[len(client_ttft) // 2]:.1f} ms, "
          f"p99 {1e3 * p99(client_ttft):.1f} ms; server-side TTFT p99 <= "
          f"{1e3 * histogram_p99(before, after, 'fastinfer_time_to_first_token_seconds'):.0f} ms; server tokens {after['fastinfer_generation_tokens_total']:.0f}; "
          f"prefix hit rate {after['fastinfer_prefix_cache_hit_rate']:.3f}; KV pool {kv['total_blocks']} blocks whole")


async def raw_post(port, body):
    """(status, JSON) of one POST on its own connection (Connection: close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = json.dumps(body).encode()
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data))
    await writer.drain()
    response = await reader.read()
    writer.close()
    head, _, payload = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload)


def check_overflow_burst():
    # BURST connections at once, each a request of 64 tokens, against room
    # for 32 running + 64 waiting: every one is answered 200 (64 tokens) or
    # 429 (a JSON error), nothing is reset, and the server keeps serving.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    burst = min(2000, hard - 200)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, burst + 200) if soft < burst + 200 else soft, hard))
    port = int(server.url.rsplit(":", 1)[1])
    before = server.wait_idle()
    body = {"prompt": [1, 80], "max_tokens": 64, "ignore_eos": True, "temperature": 0}

    async def burst_all():
        return await asyncio.wait_for(asyncio.gather(*(raw_post(port, body) for _ in range(burst))), timeout=150)

    t0 = time.time()
    answers = asyncio.run(burst_all())
    wall = time.time() - t0
    ok = [b for s, b in answers if s == 200]
    refused = [b for s, b in answers if s == 429]
    assert len(ok) + len(refused) == burst, sorted({s for s, _ in answers})
    assert all(b["usage"]["completion_tokens"] == 64 for b in ok)
    assert all(b["error"]["type"] == "rate_limit_error" for b in refused)
    assert len(ok) >= 96, len(ok)
    after = server.wait_idle()
    assert after['fastinfer_requests_total{outcome="rejected"}'] - before['fastinfer_requests_total{outcome="rejected"}'] == len(refused)
    status, r = server.http("POST", "/v1/completions", body={"prompt": "Hi", "max_tokens": 4})
    assert status == 200, r
    server.assert_pool_whole()
    print(f"burst: {burst} connections at once in {wall:.2f} s: {len(ok)} served, {len(refused)} refused with 429")


checks.run("64 streaming clients, some leaving", check_load)
checks.run("a burst of connections overflows the queue cleanly", check_overflow_burst)
checks.run("SIGTERM exits 0", server.stop)
checks.finish()
