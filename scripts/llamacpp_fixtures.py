#!/usr/bin/env python3
"""llama.cpp's greedy continuations, for textstream's agreement tests.

A benchmark and reference tool only, never a dependency of textstream.
Install llama-cpp-python as the README says (section "llama.cpp, for
comparison"). For each prompt (raw text, tokenized by llama.cpp with BOS as
the GGUF says, special tokens parsed) it records the prompt ids, NEW_TOKENS
greedy ids (stop tokens not honoured) and, at each step, the logit margin
between llama.cpp's top two candidates, so that a test can tell a real
disagreement from a near tie. Prints one JSON object.

usage: llamacpp_fixtures.py MODEL.gguf [NEW_TOKENS] < prompts.txt
       (one prompt per line; "\\n" in a line stands for a newline)
"""
import json
import sys

import numpy as np
from llama_cpp import Llama

NEW_TOKENS = 32
THREADS = 2
CONTEXT_TOKENS = 512


def main():
    path = sys.argv[1]
    new_tokens = int(sys.argv[2]) if len(sys.argv) > 2 else NEW_TOKENS
    prompts = [line.rstrip("\n").replace("\\n", "\n") for line in sys.stdin if line.strip()]
    llm = Llama(model_path=path, n_ctx=CONTEXT_TOKENS, n_threads=THREADS,
                logits_all=True, verbose=False)
    cases = []
    for prompt in prompts:
        ids = llm.tokenize(prompt.encode(), add_bos=llm.metadata.get(
            "tokenizer.ggml.add_bos_token", "false") == "true", special=True)
        llm.reset()
        llm.eval(ids)
        tokens, margins = [], []
        for _ in range(new_tokens):
            logits = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float32)
            top2 = np.argsort(logits)[-2:]
            token = int(top2[1])
            tokens.append(token)
            margins.append(float(logits[top2[1]] - logits[top2[0]]))
            llm.eval([token])
        cases.append({"prompt": prompt, "prompt_ids": ids, "ids": tokens,
                      "margins": [round(m, 4) for m in margins]})
    json.dump({"engine": "llama.cpp (llama-cpp-python 0.3.36)", "model": path.rsplit("/", 1)[-1],
               "cases": cases}, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
