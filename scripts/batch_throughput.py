#!/usr/bin/env python3
"""Aggregate decode throughput of an OpenAI-compatible server with 1, 2, 4,
8 and 16 concurrent streams: `textstream serve` and llama.cpp's
`llama-server` measured alike.

usage: batch_throughput.py URL [TOKENS] [COUNTS] [EOS_IDS]
       (defaults: 128 tokens, counts 1,2,4,8,16, EOS ids 0,1,2: SmolLM2's)

Each stream is one streamed /v1/completions request of TOKENS tokens,
greedy, with the end-of-sequence ids biased away (logit_bias -100) so that
every stream generates exactly TOKENS tokens on both servers; each stream's
prompt differs (a number in it), so nothing is shared between them. The
clock runs from the first request sent to the last stream's end; tokens/s
= all generated tokens / that time, so queueing and prefill (a 20-token
prompt) are included. Also reports the median time to first token. Standard
library only. Prints one JSON line per count.
"""
import json
import statistics
import sys
import threading
import time
import urllib.request

URL = sys.argv[1].rstrip("/")
TOKENS = int(sys.argv[2]) if len(sys.argv) > 2 else 128
COUNTS = [int(c) for c in (sys.argv[3] if len(sys.argv) > 3 else "1,2,4,8,16").split(",")]
EOS = [int(i) for i in (sys.argv[4] if len(sys.argv) > 4 else "0,1,2").split(",")]


def stream(k, results):
    body = json.dumps({
        "model": "default",
        "prompt": f"Story number {k}. Once upon a time, in a small village by the sea,",
        "max_tokens": TOKENS,
        "temperature": 0,
        "stream": True,
        "logit_bias": {str(i): -100 for i in EOS},
    }).encode()
    request = urllib.request.Request(URL + "/v1/completions", body,
                                     {"content-type": "application/json"})
    start = time.perf_counter()
    first, chunks = None, 0
    with urllib.request.urlopen(request, timeout=600) as response:
        for line in response:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            choices = event.get("choices") or []
            if choices and choices[0].get("text"):
                first = first or time.perf_counter() - start
                chunks += 1
    results[k] = (first, chunks)


def run(count):
    results = {}
    threads = [threading.Thread(target=stream, args=(k, results)) for k in range(count)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ttfts = [r[0] for r in results.values() if r[0] is not None]
    return {
        "streams": count,
        "tokens_per_stream": TOKENS,
        "text_events": sum(r[1] for r in results.values()),
        "wall_s": round(wall, 3),
        "tokens_per_s": round(count * TOKENS / wall, 1),
        "ttft_median_s": round(statistics.median(ttfts), 3) if ttfts else None,
    }


run(1)  # warm up
for count in COUNTS:
    print(json.dumps(run(count)), flush=True)
