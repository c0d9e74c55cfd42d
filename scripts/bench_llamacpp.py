#!/usr/bin/env python3
"""llama.cpp's figures for the comparison with `textstream_engine::bench`.

A benchmark tool only, never a dependency of textstream. Install it from
source (about 20 minutes on 2 cores) for AVX2, AVX-512 and AVX-512 VNNI,
without the AMX kernels that crash on some Xeons:
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON \
    -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON \
    -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF" \
    python3 -m pip install --no-binary llama-cpp-python llama-cpp-python==0.3.36

Measures what bench.rs measures, the same way: load time; then, after one
warm-up run of 8 tokens, for prompts of 8, 128 and 1024 tokens (the tokens of
PROMPT_TEXT repeated) the time to the first greedy token, prefill tokens/s,
and decode tokens/s over 256 generated tokens (stop tokens ignored), each the
median of REPEATS runs (3; of an even count, the higher of the middle two);
peak RSS (VmHWM). 2 threads. Prints one JSON object.

usage: bench_llamacpp.py MODEL.gguf [NEW_TOKENS] [THREADS] [REPEATS]
"""
import json
import sys
import time

import numpy as np
from llama_cpp import Llama

# The same text as textstream_engine::bench::PROMPT_TEXT.
PROMPT_TEXT = ("The sky is blue because molecules in the air scatter "
               "short wavelengths of sunlight more strongly than long ones. ")
PROMPT_LENGTHS = [8, 128, 1024]
NEW_TOKENS = 256
THREADS = 2
REPEATS = 3
WARMUP_TOKENS = 8
# Room for the longest prompt and its generated tokens.
CONTEXT_TOKENS = 2048


def peak_rss_mib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def measure(llm, prompt, new_tokens):
    llm.reset()
    start = time.perf_counter()
    llm.eval(prompt)
    prefill = time.perf_counter() - start
    token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    ttft = time.perf_counter() - start
    decode_start = time.perf_counter()
    for _ in range(new_tokens - 1):
        llm.eval([token])
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    decode = time.perf_counter() - decode_start
    return {
        "prompt_tokens": len(prompt),
        "new_tokens": new_tokens,
        "ttft_ms": ttft * 1e3,
        "prefill_tok_s": len(prompt) / prefill,
        "decode_tok_s": (new_tokens - 1) / decode if new_tokens > 1 else None,
    }


def median(runs):
    """Each figure's median over runs, as bench.rs takes it."""
    middle = lambda key: sorted(r[key] for r in runs)[len(runs) // 2]
    return dict(runs[0], ttft_ms=middle("ttft_ms"), prefill_tok_s=middle("prefill_tok_s"),
                decode_tok_s=middle("decode_tok_s") if runs[0]["decode_tok_s"] else None)


def main():
    path = sys.argv[1]
    new_tokens = int(sys.argv[2]) if len(sys.argv) > 2 else NEW_TOKENS
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else THREADS
    repeats = int(sys.argv[4]) if len(sys.argv) > 4 else REPEATS
    start = time.perf_counter()
    llm = Llama(model_path=path, n_ctx=CONTEXT_TOKENS, n_batch=CONTEXT_TOKENS,
                n_threads=threads, n_threads_batch=threads, verbose=False)
    load = time.perf_counter() - start
    text_ids = llm.tokenize(PROMPT_TEXT.encode(), add_bos=False, special=False)
    prompt = lambda n: [text_ids[i % len(text_ids)] for i in range(n)]
    measure(llm, prompt(WARMUP_TOKENS), WARMUP_TOKENS)
    runs = [median([measure(llm, prompt(n), new_tokens) for _ in range(repeats)])
            for n in PROMPT_LENGTHS]
    print(json.dumps({
        "engine": "llama.cpp",
        "load_ms": load * 1e3,
        "peak_rss_mib": peak_rss_mib(),
        "runs": runs,
    }))


if __name__ == "__main__":
    main()
