"""textstream.Model: the engine from Python, on the real SmolLM2."""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import textstream

PROMPT = "What is the capital of France?"
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def greedy(model) -> str:
    return "".join(model.stream(PROMPT, max_tokens=MAX_TOKENS))


def test_stream_is_greedy_deterministic_and_ends_by_length(model, greedy):
    assert greedy.strip(), "the model said nothing"
    iterator = model.stream(PROMPT, max_tokens=MAX_TOKENS)
    assert "".join(iterator) == greedy
    assert iterator.finish_reason in ("length", "stop")
    assert "".join(model.stream(PROMPT, max_tokens=MAX_TOKENS, mode="words")) == greedy


def test_astream_several_at_once_equal_stream(model, greedy):
    async def read():
        return "".join([text async for text in model.astream(PROMPT, max_tokens=MAX_TOKENS)])

    async def main():
        return await asyncio.gather(read(), read(), read())

    assert asyncio.run(main()) == [greedy] * 3


def test_one_token_answer_ends_by_length(model):
    iterator = model.stream(PROMPT, max_tokens=1)
    text = "".join(iterator)
    assert iterator.finish_reason == "length"
    assert len(model.tokenizer().encode(text).ids) <= 2


def test_stop_string_ends_the_answer(model, greedy):
    words = greedy.split()
    assert len(words) >= 3, greedy
    stop = words[2]
    iterator = model.stream(PROMPT, max_tokens=MAX_TOKENS, stop=[stop])
    text = "".join(iterator)
    assert text == greedy[: greedy.index(stop)]
    assert iterator.finish_reason == "stop_string"
    assert iterator.stop_string == stop


def cpu_while_idle(seconds: float) -> float:
    started = time.process_time()
    time.sleep(seconds)
    return time.process_time() - started


@pytest.mark.parametrize("how", ["close", "break"])
def test_generation_stops_when_the_consumer_leaves(model, how):
    # 2,000 tokens would keep a core busy for many seconds.
    if how == "close":
        iterator = model.stream("Tell me a very long story.", max_tokens=2000)
        next(iterator)
        iterator.close()
    else:
        for _text in model.stream("Tell me a very long story.", max_tokens=2000):
            break
        gc.collect()
    time.sleep(0.3)  # one token takes a few tens of milliseconds
    assert cpu_while_idle(0.5) < 0.1


def test_engine_errors_and_bad_settings(model):
    with pytest.raises(ValueError, match="temperature"):
        model.stream(PROMPT, temperature=-1.0)
    with pytest.raises(ValueError, match="max_tokens"):
        model.stream(PROMPT, max_tokens=0)
    with pytest.raises(ValueError, match="context"):
        model.stream(PROMPT, max_tokens=model.context_length)
    with pytest.raises(ValueError, match="mode"):
        model.stream(PROMPT, mode="sentences")
    with pytest.raises(textstream.GenerationError, match="no-such-model"):
        textstream.Model("/no-such-model.gguf")


def test_timeout_on_a_model_stream(model):
    # A prompt of thousands of tokens takes far longer than 1 ms to read.
    iterator = model.stream("word " * 3000, chat=False, max_tokens=1, timeout=0.001)
    with pytest.raises(TimeoutError):
        next(iterator)
    iterator.close()


def test_tokenizer_is_a_python_tokenizer(model, tokenizer):
    from tokenizers import Tokenizer

    assert isinstance(tokenizer, Tokenizer)
    assert tokenizer.encode("Hello, world!").ids == [19556, 28, 905, 17]  # README's example
    text = "Hello, world!"
    assert model.prompt_ids(text, chat=False)[-4:] == tokenizer.encode(text).ids
    assert 2 in model.stop_ids  # <|im_end|>


def test_streamers_take_the_model_as_tokenizer(model, tokenizer):
    streamer = textstream.TextIteratorStreamer(model)
    ids = tokenizer.encode("shared tokenizer").ids
    streamer.put(ids)
    streamer.end()
    assert "".join(streamer) == "shared tokenizer"


def cli() -> Path | None:
    """The `textstream` binary, if one is built (CI builds it for cargo test)."""
    root = Path(__file__).resolve().parents[3]
    for candidate in [os.environ.get("TEXTSTREAM_CLI"), root / "target/release/textstream", root / "target/debug/textstream", shutil.which("textstream")]:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


@pytest.mark.skipif(cli() is None, reason="no textstream binary built (cargo build -p textstream-cli)")
def test_greedy_answer_equals_the_clis(greedy):
    run = subprocess.run(
        [str(cli()), "run", "--chat", "--max-tokens", str(MAX_TOKENS), PROMPT],
        capture_output=True, text=True, timeout=300, check=True,
    )
    assert run.stdout == greedy + "\n"  # the CLI ends with a newline
