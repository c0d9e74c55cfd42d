#!/usr/bin/env python3
"""Benchmark of textstream's Python package (issue 13's "Proof").

Part 1: per-token cost of textstream's ``TextIteratorStreamer`` (eager and
``mode="words"``) and ``AsyncTextIteratorStreamer`` against transformers'
``TextIteratorStreamer`` (and ``AsyncTextIteratorStreamer``), at 100, 1,000
and 16,000 generated tokens. A producer thread drives each streamer exactly
as ``generate()`` does: the prompt first as a ``[1, n]`` numpy array, then
one id at a time as a ``[1]``-shaped array, then ``end()``; the consumer
iterates (``for`` / ``async for``) and joins the text. The figure is the wall
time from the first ``put`` to the consumer holding the whole text, divided
by the generated tokens (median of several runs). Ids are SmolLM2's real
tokenizer over a realistic mixed answer (prose, code, CJK, emoji), tiled to
the length, ending with the EOS id as ``generate()`` puts it.

Part 2: ``textstream.Model().stream(prompt, max_tokens=128, temperature=0)``
tokens per second against the command line's ``textstream run --chat
--timings`` with the same prompt and settings.

Usage (from the repository root, in a virtualenv with textstream, numpy and
transformers; transformers' streamers need no torch)::

    python crates/textstream-py/bench/bench_streamers.py
    python crates/textstream-py/bench/bench_streamers.py --sizes 100 --quick

Both parts print Markdown tables, with the machine and the date.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

import textstream

REPO = Path(__file__).resolve().parents[3]

# A realistic assistant answer: Markdown prose, code, Chinese and Japanese,
# emoji (ZWJ sequences, skin tones, flags). Encoded once, then tiled.
MIXED_TEXT = """\
Sure! Here is an overview of how streaming text generation works, with a few examples along the way.

## Why stream at all?

When a language model generates an answer, it produces one token at a time. A token is not a word: it may be a whole word, part of a word, a single byte of a multi-byte character, or a piece of punctuation. Waiting for the whole answer before showing anything makes the interface feel slow, so most applications print the text as it comes. The tricky part is that a token on its own does not always decode to valid text: an emoji such as 👩‍💻 or 👨‍👩‍👧‍👦 is made of several code points joined by zero-width joiners, and each code point may be split across several byte-level tokens. Print too early and the user sees a replacement character (�) that later turns into the right symbol; print too late and the stream stutters.

Here is a minimal Python example that reads the stream on the main thread while the model generates on another:

```python
from threading import Thread

def stream_answer(model, tokenizer, prompt: str, max_new_tokens: int = 200) -> str:
    inputs = tokenizer(prompt, return_tensors="pt")
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    thread = Thread(target=model.generate, kwargs=dict(**inputs, streamer=streamer, max_new_tokens=max_new_tokens))
    thread.start()
    parts = []
    for text in streamer:
        print(text, end="", flush=True)
        parts.append(text)
    thread.join()
    return "".join(parts)
```

And the same idea in Rust, with a channel between the two sides:

```rust
use std::sync::mpsc;

fn main() {
    let (tx, rx) = mpsc::channel::<String>();
    let worker = std::thread::spawn(move || {
        for word in ["Hello", ", ", "world", "!"] {
            tx.send(word.to_string()).expect("the reader left");
        }
    });
    let text: String = rx.iter().collect();
    worker.join().unwrap();
    assert_eq!(text, "Hello, world!");
}
```

### Other languages

Streaming matters even more for scripts that do not put spaces between words. In Chinese, for example: 流式生成可以让用户在模型完成整个回答之前就看到文字，这对于长篇回答尤其重要。每个汉字通常由三个字节组成，分词器可能会把它们拆成几个标记。 In Japanese: ストリーミングでは、ひらがなやカタカナ、漢字がまざった文章でも、文字が完成したらすぐに表示するべきです。 Korean works too: 스트리밍은 사용자 경험을 크게 개선합니다.

A few more things to keep in mind:

1. **Latency** – the time to the first token matters more than the total time 🚀.
2. **Correctness** – the concatenated chunks must equal the full decode, byte for byte ✅.
3. **Cancellation** – when the user closes the tab 🙅🏽‍♀️, generation should stop instead of burning GPU time 🔥.
4. **Errors** – if generation fails halfway, the reader must hear about it rather than wait forever ⏳.

Prices are often quoted as "$0.50 per 1M tokens" or "€0,45/1M", and temperatures as 25 °C ≈ 77 °F. Flags like 🇫🇷 🇯🇵 🇧🇷 are pairs of regional indicators, and 👍🏻👍🏿 carry skin-tone modifiers.

In short: stream eagerly, but only release text once it can no longer change. 😊
"""

PROMPT = "Explain how streaming text generation works, with examples in Python and Rust."
MODEL_PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."


# --------------------------------------------------------------------------
# Machine
# --------------------------------------------------------------------------


def machine() -> Dict[str, str]:
    info: Dict[str, str] = {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            info[key.strip()] = value.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        load = "%.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        load = "?"
    return {
        "cpu": info.get("Model name", platform.processor() or "?"),
        "cpus": info.get("CPU(s)", str(os.cpu_count())),
        "cores": str(
            int(info.get("Core(s) per socket", "0") or 0) * int(info.get("Socket(s)", "1") or 1)
            or os.cpu_count()
        ),
        "threads_per_core": info.get("Thread(s) per core", "?"),
        "load": load,
    }


def print_header() -> None:
    m = machine()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    try:
        import transformers

        tf = transformers.__version__
    except ImportError:
        tf = "not installed"
    import tokenizers

    print(f"- Date: {now}")
    print(
        f"- Machine: {m['cpu']}, {m['cores']} cores ({m['cpus']} CPUs, {m['threads_per_core']} thread(s) per core), "
        f"load average {m['load']} at start"
    )
    print(
        f"- Python {platform.python_version()}, textstream from {Path(textstream.__file__).parent}, "
        f"tokenizers {tokenizers.__version__}, transformers {tf}, numpy {np.__version__}"
    )
    print()


# --------------------------------------------------------------------------
# Part 1: streamers
# --------------------------------------------------------------------------


def tiled_ids(base: Sequence[int], n: int, eos: int) -> List[int]:
    """``n`` generated ids: ``base`` repeated, the last one ``eos``."""
    reps = (n - 1) // len(base) + 1
    return (list(base) * reps)[: n - 1] + [eos]


class Run:
    """One producer thread driving ``streamer`` as generate() does."""

    def __init__(self, streamer: Any, prompt: np.ndarray, tokens: List[np.ndarray], on_error: Callable[[Any, BaseException], None]):
        self.streamer = streamer
        self.prompt = prompt
        self.tokens = tokens
        self.on_error = on_error
        self.go = threading.Event()
        self.t0 = 0.0
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._produce, daemon=True)

    def _produce(self) -> None:
        self.go.wait()
        put = self.streamer.put
        self.t0 = time.perf_counter()
        try:
            put(self.prompt)
            for token in self.tokens:
                put(token)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self.error = e
            self.on_error(self.streamer, e)
            return
        self.streamer.end()


def _ts_error(streamer: Any, e: BaseException) -> None:
    streamer.fail(e)


def _tf_error(streamer: Any, e: BaseException) -> None:
    streamer.end()


def run_sync(make: Callable[[], Any], on_error: Callable[[Any, BaseException], None], prompt: np.ndarray, tokens: List[np.ndarray]) -> Tuple[float, str, int, float]:
    """(seconds from first put to whole text, text, chunks, construction seconds)."""
    c0 = time.perf_counter()
    streamer = make()
    construct = time.perf_counter() - c0
    run = Run(streamer, prompt, tokens, on_error)
    run.thread.start()
    iterator = iter(streamer)
    parts: List[str] = []
    append = parts.append
    run.go.set()
    for text in iterator:
        append(text)
    text = "".join(parts)
    t1 = time.perf_counter()
    run.thread.join()
    if run.error is not None:
        raise RuntimeError(f"producer failed: {run.error!r}")
    return t1 - run.t0, text, len(parts), construct


def run_async(make: Callable[[], Any], on_error: Callable[[Any, BaseException], None], prompt: np.ndarray, tokens: List[np.ndarray]) -> Tuple[float, str, int, float]:
    async def main() -> Tuple[float, str, int, float]:
        # transformers' AsyncTextIteratorStreamer must be made inside the loop.
        c0 = time.perf_counter()
        streamer = make()
        construct = time.perf_counter() - c0
        run = Run(streamer, prompt, tokens, on_error)
        run.thread.start()
        parts: List[str] = []
        append = parts.append
        run.go.set()
        async for text in streamer:
            append(text)
        text = "".join(parts)
        t1 = time.perf_counter()
        run.thread.join()
        if run.error is not None:
            raise RuntimeError(f"producer failed: {run.error!r}")
        return t1 - run.t0, text, len(parts), construct

    return asyncio.run(main())


def first_difference(a: str, b: str) -> str:
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return (
        f"lengths {len(a)} vs {len(b)}, first difference at char {i}: "
        f"{a[max(0, i - 30):i + 30]!r} vs {b[max(0, i - 30):i + 30]!r}"
    )


def part1(model: Any, tok: Any, prompt_ids: List[int], sizes: Sequence[int], reps_for: Callable[[str, int], int], one_line: bool, impls: Sequence[str]) -> List[str]:
    warnings: List[str] = []
    try:
        import transformers
        from transformers import PreTrainedTokenizerFast
        from transformers import AsyncTextIteratorStreamer as TfAsync
        from transformers import TextIteratorStreamer as TfIter

        tf_tok = PreTrainedTokenizerFast(tokenizer_object=tok)
    except ImportError:
        transformers = None
        warnings.append("transformers is not installed: its rows are left out (pip install transformers; no torch needed)")

    eos = 2  # <|im_end|>, which generate() puts last for SmolLM2-Instruct
    assert tok.id_to_token(eos) == "<|im_end|>", tok.id_to_token(eos)
    tf_kwargs = dict(skip_special_tokens=True, clean_up_tokenization_spaces=False)

    candidates: Dict[str, Tuple[str, Callable[[], Any], Callable, Callable]] = {
        "ts": ("textstream `TextIteratorStreamer`", lambda: textstream.TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True), run_sync, _ts_error),
        "ts-words": ('textstream `TextIteratorStreamer(mode="words")`', lambda: textstream.TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True, mode="words"), run_sync, _ts_error),
        "ts-async": ("textstream `AsyncTextIteratorStreamer`", lambda: textstream.AsyncTextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True), run_async, _ts_error),
    }
    if transformers is not None:
        candidates["tf"] = (f"transformers {transformers.__version__} `TextIteratorStreamer`", lambda: TfIter(tf_tok, skip_prompt=True, **tf_kwargs), run_sync, _tf_error)
        candidates["tf-async"] = (f"transformers {transformers.__version__} `AsyncTextIteratorStreamer`", lambda: TfAsync(tf_tok, skip_prompt=True, **tf_kwargs), run_async, _tf_error)
    chosen = [k for k in impls if k in candidates]

    variants = [("mixed answer", MIXED_TEXT)]
    if one_line:
        variants.append(("the same answer on one line (newlines replaced by spaces)", " ".join(MIXED_TEXT.split("\n"))))

    prompt = np.asarray(prompt_ids, dtype=np.int64).reshape(1, -1)
    for title, source in variants:
        base = tok.encode(source, add_special_tokens=False).ids
        lines = source.split("\n")
        longest = max(len(tok.encode(line, add_special_tokens=False).ids) for line in lines)
        results: Dict[str, Dict[int, Tuple[float, int, int]]] = {k: {} for k in chosen}
        makes: Dict[str, List[float]] = {k: [] for k in chosen}
        for n in sizes:
            gen = tiled_ids(base, n, eos)
            tokens = [np.array([t], dtype=np.int64) for t in gen]
            reference = tok.decode(gen, skip_special_tokens=True)
            for key in chosen:
                label, make, runner, on_error = candidates[key]
                # one untimed warm-up run (caches, allocator, event loop)
                runner(make, on_error, prompt, tokens[: min(n, 100)])
                times = []
                chunks = 0
                text = ""
                for _ in range(reps_for(key + (":line" if source is not MIXED_TEXT else ""), n)):
                    seconds, text, chunks, construct = runner(make, on_error, prompt, tokens)
                    times.append(seconds)
                    makes[key].append(construct)
                if text != reference:
                    warnings.append(f"{label}, {title}, {n} tokens: text differs from tokenizer.decode(ids): {first_difference(text, reference)}")
                results[key][n] = (statistics.median(times) / n * 1e6, len(times), chunks)
                print(f"  [{key} {n}: {results[key][n][0]:.2f} µs/token, {len(times)} runs]", file=sys.stderr, flush=True)
        print(f"### Part 1: streamer cost per token, {title}")
        print()
        print(
            f"Source text: {len(source)} characters, {len(base)} tokens (longest line {longest} tokens), "
            f"tiled to the length; prompt {len(prompt_ids)} tokens (`skip_prompt=True`), "
            f"`skip_special_tokens=True`, EOS put last. µs/token = wall time from the first `put` to the "
            f"consumer holding the whole text ÷ generated tokens, median of the runs shown; "
            f"chunks = texts the consumer received; make = constructing the streamer."
        )
        print()
        header = "| streamer | " + " | ".join(f"{n:,} tok µs/token" for n in sizes) + " | " + " | ".join(f"{n:,} runs / chunks" for n in sizes) + " | make ms |"
        print(header)
        print("|" + "---|" * (1 + 2 * len(sizes) + 1))
        for key in chosen:
            label = candidates[key][0]
            cells = [f"{results[key][n][0]:,.2f}" for n in sizes]
            runs = [f"{results[key][n][1]} / {results[key][n][2]:,}" for n in sizes]
            make_ms = statistics.median(makes[key]) * 1e3
            print(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(runs) + f" | {make_ms:.1f} |")
        if "tf" in results and "ts" in results:
            ratios = ", ".join(f"{n:,}: ×{results['tf'][n][0] / results['ts'][n][0]:.1f}" for n in sizes)
            print()
            print(f"transformers `TextIteratorStreamer` ÷ textstream `TextIteratorStreamer`, µs/token: {ratios}.")
        print()
    # What "make ms" is made of: textstream serializes the tokenizer
    # (to_str(), ~1.5 MB of JSON) to find its cached Detokenizer.
    def median_ms(fn: Callable[[], Any], k: int = 11) -> float:
        samples = []
        for _ in range(k):
            t = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t)
        return statistics.median(samples) * 1e3

    print(
        f"Constructing textstream's `TextIteratorStreamer`: {median_ms(lambda: textstream.TextIteratorStreamer(tok, skip_prompt=True)):.1f} ms "
        f"from the `tokenizers.Tokenizer` (of which `tokenizer.to_str()`: {median_ms(tok.to_str):.1f} ms), "
        f"{median_ms(lambda: textstream.TextIteratorStreamer(model, skip_prompt=True)):.3f} ms from the `textstream.Model`."
    )
    print()
    return warnings


# --------------------------------------------------------------------------
# Part 2: Model.stream against the command line
# --------------------------------------------------------------------------

CLI_TIMINGS = re.compile(
    r"load (?P<load>[\d.]+) ms \| prompt (?P<prompt>\d+) tokens, prefill (?P<prefill>[\d.]+) tok/s \| "
    r"TTFT (?P<ttft>[\d.]+) ms \| (?P<generated>\d+) tokens, decode (?P<decode>[\d.]+) tok/s \| total (?P<total>[\d.]+) s"
)


def find_cli(explicit: Optional[str]) -> Tuple[Optional[Path], str]:
    if explicit:
        return Path(explicit), "given with --cli"
    release = REPO / "target" / "release" / "textstream"
    debug = REPO / "target" / "debug" / "textstream"
    if release.exists():
        return release, "release profile"
    if debug.exists():
        return debug, (
            "dev profile (target/debug): dependencies and textstream-engine at opt-level 3, "
            "the textstream and textstream-cli crates at opt-level 0, debug assertions and overflow checks on"
        )
    return None, "none found"


def run_cli(cli: Path, prompt: str, max_tokens: int) -> Dict[str, Any]:
    cmd = [str(cli), "run", "--chat", "--timings", "-n", str(max_tokens), "--temperature", "0", prompt]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    m = CLI_TIMINGS.search(proc.stderr)
    if m is None:
        raise RuntimeError(f"no timings in the CLI's stderr: {proc.stderr[-500:]!r}")
    out = {k: float(v) for k, v in m.groupdict().items()}
    out["wall"] = wall
    out["text"] = proc.stdout[:-1] if proc.stdout.endswith("\n") else proc.stdout
    return out


def run_model(model: Any, tok: Any, prompt: str, max_tokens: int, use_async: bool) -> Dict[str, Any]:
    parts: List[str] = []
    stamps: List[float] = []

    if use_async:

        async def main() -> Any:
            t0 = time.perf_counter()
            it = model.astream(prompt, max_tokens=max_tokens, temperature=0.0)
            async for text in it:
                stamps.append(time.perf_counter())
                parts.append(text)
            return t0, it

        t0, it = asyncio.run(main())
    else:
        t0 = time.perf_counter()
        it = model.stream(prompt, max_tokens=max_tokens, temperature=0.0)
        for text in it:
            stamps.append(time.perf_counter())
            parts.append(text)
    t_end = time.perf_counter()
    text = "".join(parts)
    reason = it.finish_reason
    if reason == "length":
        generated, exact = max_tokens, True
    else:
        # ended by EOS: the text's tokens, plus the EOS id (an estimate:
        # re-encoding need not give the ids the model generated)
        generated, exact = len(tok.encode(text, add_special_tokens=False).ids) + 1, False
    first, last = stamps[0], stamps[-1]
    decode = (generated - 1) / (last - first) if last > first else float("nan")
    return {
        "text": text,
        "reason": reason,
        "generated": generated,
        "exact": exact,
        "decode": decode,
        "ttft": (first - t0) * 1e3,
        "total": t_end - t0,
        "chunks": len(parts),
    }


def part2(model: Any, tok: Any, load_s: float, reps: int, max_tokens: int, cli_arg: Optional[str]) -> List[str]:
    warnings: List[str] = []
    cli, profile = find_cli(cli_arg)
    prompt_len = len(model.prompt_ids(MODEL_PROMPT))
    print(f"### Part 2: `Model.stream` against `textstream run`, SmolLM2-135M-Instruct Q4_1")
    print()
    print(
        f"Prompt {MODEL_PROMPT!r} under the chat template ({prompt_len} tokens), `max_tokens={max_tokens}`, "
        f"greedy (`temperature=0`), default threads (one per core) on both sides; median of {reps} runs, "
        "interleaved. CLI: `decode tok/s`, `TTFT` and `total` as `--timings` prints them (decode = "
        "(generated − 1) ÷ decode time, measured in the engine; total excludes loading). Python: "
        "(generated − 1) ÷ (last text − first text) as the consumer sees them; TTFT and total from the "
        "`stream()` call; each CLI run is a fresh process (its first forward pass also pages the weights in), "
        "Python reuses one loaded `Model`."
    )
    if cli is not None:
        print(f"CLI binary: `{cli.relative_to(REPO) if cli.is_relative_to(REPO) else cli}` ({profile}).")
    print()
    rows: Dict[str, List[Dict[str, Any]]] = {"cli": [], "stream": [], "astream": []}
    run_model(model, tok, MODEL_PROMPT, 16, use_async=False)  # warm-up
    for _ in range(reps):
        if cli is not None:
            rows["cli"].append(run_cli(cli, MODEL_PROMPT, max_tokens))
        rows["stream"].append(run_model(model, tok, MODEL_PROMPT, max_tokens, use_async=False))
        rows["astream"].append(run_model(model, tok, MODEL_PROMPT, max_tokens, use_async=True))
    print("| path | prompt tokens | generated tokens | decode tok/s (median) | decode tok/s (min–max) | TTFT ms | total s | load ms |")
    print("|---|---|---|---|---|---|---|---|")
    labels = {
        "cli": "`textstream run --chat --timings` (CLI)",
        "stream": "`textstream.Model().stream(...)` (Python `for`)",
        "astream": "`textstream.Model().astream(...)` (Python `async for`)",
    }
    for key in ("cli", "stream", "astream"):
        runs = rows[key]
        if not runs:
            continue
        decodes = [r["decode"] for r in runs]
        gen = runs[0]["generated"]
        exact = runs[0].get("exact", True)
        load = (
            f"{statistics.median(r['load'] for r in runs):.0f} (each run)" if key == "cli" else f"{load_s * 1e3:.0f} (once)"
        )
        prompt_tokens = int(runs[0]["prompt"]) if key == "cli" else prompt_len
        print(
            f"| {labels[key]} | {prompt_tokens} | {int(gen)}{'' if exact else ' (≈, re-encoded)'} | {statistics.median(decodes):.1f} | "
            f"{min(decodes):.1f}–{max(decodes):.1f} | {statistics.median(r['ttft'] for r in runs):.0f} | "
            f"{statistics.median(r['total'] for r in runs):.2f} | {load} |"
        )
    if rows["cli"]:
        cli_rate = statistics.median(r["decode"] for r in rows["cli"])
        py_rate = statistics.median(r["decode"] for r in rows["stream"])
        print()
        print(f"`Model.stream` ÷ CLI decode rate: {py_rate / cli_rate:.2f}.")
        cli_text = rows["cli"][0]["text"]
        for key in ("stream", "astream"):
            if rows[key][0]["text"] != cli_text:
                warnings.append(f"Model.{key} text differs from the CLI's: {first_difference(rows[key][0]['text'], cli_text)}")
    else:
        warnings.append("no CLI binary (target/release/textstream or target/debug/textstream): CLI row left out")
    for key in ("stream", "astream"):
        texts = {r["text"] for r in rows[key]}
        if len(texts) > 1:
            warnings.append(f"Model.{key}: greedy runs gave different texts")
    print()
    return warnings


# --------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000,16000", help="generated tokens, comma-separated")
    parser.add_argument("--part", choices=["1", "2", "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="few repetitions (to try the script)")
    parser.add_argument("--no-one-line", action="store_true", help="skip part 1's one-line variant")
    parser.add_argument("--impls", default="ts,ts-words,ts-async,tf,tf-async", help="part 1's streamers")
    parser.add_argument("--model-reps", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--cli", default=None, help="the textstream binary (default: target/release, else target/debug)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]

    def reps_for(key: str, n: int) -> int:
        if args.quick:
            return 3 if n <= 1000 else 1
        if key.startswith("tf"):
            if n >= 16000:
                return 2 if key.endswith(":line") else 5
            return 20 if n <= 100 else 7
        return 30 if n <= 100 else (10 if n <= 1000 else 5)

    print_header()
    t0 = time.perf_counter()
    model = textstream.Model()
    load_s = time.perf_counter() - t0
    tok = model.tokenizer()
    warnings: List[str] = []
    if args.part in ("1", "all"):
        prompt_ids = model.prompt_ids(PROMPT)
        warnings += part1(model, tok, prompt_ids, sizes, reps_for, not args.no_one_line, args.impls.split(","))
    if args.part in ("2", "all"):
        warnings += part2(model, tok, load_s, 2 if args.quick else args.model_reps, args.max_tokens, args.cli)
    for w in warnings:
        print(f"WARNING: {w}")


if __name__ == "__main__":
    main()
