"""A batch streamer fans [batch, n] puts out to one stream per row."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

import textstream
from test_exact import HARD_TEXTS

PAD = 2  # SmolLM2's <|im_end|>: what generate() puts for finished rows


def batch_generate(streamer, prompts, answers, pad=PAD):
    """generate() with a batch: the left-padded prompts as [batch, n], then
    one [batch] array per step, finished rows padded."""
    width = max(len(p) for p in prompts)
    streamer.put(np.array([[pad] * (width - len(p)) + p for p in prompts]))
    for step in range(max(len(a) for a in answers)):
        streamer.put(np.array([a[step] if step < len(a) else pad for a in answers]))


def test_rows_fan_out_and_equal_their_decode(tokenizer):
    texts = [HARD_TEXTS["thai"], HARD_TEXTS["cjk"], "short", HARD_TEXTS["emoji_zwj"]]
    answers = [tokenizer.encode(t).ids for t in texts]
    prompts = [tokenizer.encode(p).ids for p in ["a", "b c", "d e f", "g"]]
    streamer = textstream.BatchTextIteratorStreamer(
        tokenizer, len(texts), skip_prompt=True, skip_special_tokens=True
    )
    thread = textstream.run_in_thread(batch_generate, prompts=prompts, answers=answers, streamer=streamer)
    results = [None] * len(texts)

    def read(i):
        results[i] = "".join(streamer.streams[i])

    readers = [threading.Thread(target=read, args=(i,)) for i in range(len(texts))]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(10)
    thread.join(10)
    assert results == [tokenizer.decode(a, skip_special_tokens=True) for a in answers]


def test_a_row_that_leaves_is_skipped_and_all_gone_raises(tokenizer):
    streamer = textstream.BatchTextIteratorStreamer(tokenizer, 2)
    first, second = iter(streamer.streams[0]), iter(streamer.streams[1])
    streamer.put([[1, 2], [3, 4]])
    first.close()
    streamer.put([5, 6])  # row 0 is skipped, row 1 goes on
    assert streamer.closed_rows() == [True, False]
    second.close()
    with pytest.raises(textstream.ConsumerGone):
        streamer.put([7, 8])


def test_batch_stopping_criteria_flags_each_row(tokenizer):
    streamer = textstream.BatchTextIteratorStreamer(tokenizer, 2)
    criteria = streamer.stopping_criteria()
    first, second = iter(streamer.streams[0]), iter(streamer.streams[1])
    assert criteria(np.array([[1], [2]]), None) == [False, False]
    first.close()
    streamer.put([5, 6])
    assert criteria(np.array([[1], [2]]), None) == [True, False]
    second.close()
    streamer.put([7, 8])  # quiet once a criterion was taken
    assert criteria(np.array([[1], [2]]), None) == [True, True]


def test_wrong_batch_size_is_refused(tokenizer):
    streamer = textstream.BatchTextIteratorStreamer(tokenizer, 3)
    with pytest.raises(ValueError, match="3"):
        streamer.put(np.zeros((2, 4), dtype=np.int64))
    with pytest.raises(ValueError):
        textstream.BatchTextIteratorStreamer(tokenizer, 0)


def test_batch_fail_reaches_every_row(tokenizer):
    streamer = textstream.BatchTextIteratorStreamer(tokenizer, 2)
    error = MemoryError("batch too big")
    streamer.put([[tokenizer.token_to_id("a")], [tokenizer.token_to_id("b")]])
    streamer.fail(error)
    for row in streamer.streams:
        iterator = iter(row)
        assert next(iterator) in ("a", "b")
        with pytest.raises(MemoryError) as raised:
            next(iterator)
        assert raised.value is error


def test_async_batch_rows(tokenizer):
    answers = [tokenizer.encode(t).ids for t in ["one row", "another, longer row", "x"]]
    streamer = textstream.AsyncBatchTextIteratorStreamer(tokenizer, 3, skip_prompt=True, skip_special_tokens=True)
    textstream.run_in_thread(batch_generate, prompts=[[1], [1], [1]], answers=answers, streamer=streamer)

    async def read(row):
        return "".join([text async for text in row])

    async def main():
        return await asyncio.gather(*(read(row) for row in streamer.streams))

    assert asyncio.run(main()) == ["one row", "another, longer row", "x"]
