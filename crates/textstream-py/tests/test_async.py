"""async for: several streams on one event loop, woken by the Rust side
without busy-waiting and without a thread per stream."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

import textstream
from conftest import fake_generate, produce
from test_exact import HARD_TEXTS


async def collect(streamer) -> str:
    return "".join([text async for text in streamer])


def test_async_stream_equals_decode(tokenizer):
    ids = tokenizer.encode(HARD_TEXTS["emoji_zwj"]).ids
    streamer = textstream.AsyncTextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    thread = textstream.run_in_thread(fake_generate, [1, 2], ids, streamer=streamer, delay=0.001)
    assert asyncio.run(collect(streamer)) == tokenizer.decode(ids, skip_special_tokens=True)
    thread.join()


def test_several_async_streams_at_once(tokenizer):
    texts = [HARD_TEXTS[name] for name in sorted(HARD_TEXTS)] * 2
    streamers = [textstream.AsyncTextIteratorStreamer(tokenizer, skip_prompt=True) for _ in texts]
    threads = [
        produce(streamer, [7], tokenizer.encode(text).ids, delay=0.002)
        for streamer, text in zip(streamers, texts)
    ]

    async def main():
        return await asyncio.gather(*(collect(s) for s in streamers))

    results = asyncio.run(main())
    for thread in threads:
        thread.join()
    assert results == [tokenizer.decode(tokenizer.encode(t).ids) for t in texts]


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux's /proc")
def test_waiting_streams_cost_no_cpu_and_no_threads(tokenizer):
    # 20 consumers await; one thread feeds them all, after a pause.
    streamers = [textstream.AsyncTextIteratorStreamer(tokenizer) for _ in range(20)]
    ids = tokenizer.encode("hello async world").ids
    measured = {}

    def feed():
        time.sleep(0.2)  # let every consumer start waiting
        measured["threads"] = os_threads()
        cpu = time.process_time()
        time.sleep(0.8)
        measured["cpu"] = time.process_time() - cpu
        for streamer in streamers:
            streamer.put(ids)
            streamer.end()

    async def main():
        feeder = threading.Thread(target=feed)
        threads_before = os_threads()
        feeder.start()
        results = await asyncio.gather(*(collect(s) for s in streamers))
        feeder.join()
        return threads_before, results

    threads_before, results = asyncio.run(main())
    assert results == ["hello async world"] * 20
    # The feeder is one more thread; the 20 waiting streams add none.
    assert measured["threads"] <= threads_before + 2, measured
    # Waiting costs nothing (measured: under 1 ms); polling 20 streams every
    # millisecond for 0.8 s costs far more than 50 ms.
    assert measured["cpu"] < 0.05, measured


def test_async_timeout_raises_timeout_error(tokenizer):
    streamer = textstream.AsyncTextIteratorStreamer(tokenizer, timeout=0.2)

    async def main():
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            async for _text in streamer:
                pass
        return time.monotonic() - started

    waited = asyncio.run(main())
    assert 0.15 <= waited < 2.0


def test_async_fail_raises_the_exception(tokenizer):
    streamer = textstream.AsyncTextIteratorStreamer(tokenizer)
    error = ZeroDivisionError("in the model")
    textstream.run_in_thread(
        fake_generate, [], tokenizer.encode("a b c d").ids, streamer=streamer, fail_after=2, error=error
    )

    async def main():
        got = []
        with pytest.raises(ZeroDivisionError) as raised:
            async for text in streamer:
                got.append(text)
        return raised.value, "".join(got)

    raised, got = asyncio.run(main())
    assert raised is error
    assert got == tokenizer.decode(tokenizer.encode("a b c d").ids[:2])


@pytest.mark.parametrize("how", ["break", "aclose"])
def test_consumer_gone_after_async_break(tokenizer, how):
    streamer = textstream.AsyncTextIteratorStreamer(tokenizer)
    ids = tokenizer.encode("more and more ").ids * 10_000
    thread = textstream.run_in_thread(fake_generate, [], ids, streamer=streamer, delay=0.001)

    async def main():
        if how == "break":
            async for _text in streamer:
                break
        else:
            iterator = streamer.__aiter__()
            await iterator.__anext__()
            await iterator.aclose()
            assert iterator.closed
            with pytest.raises(StopAsyncIteration):
                await iterator.__anext__()

    asyncio.run(main())
    thread.join(10)
    assert not thread.is_alive(), "generate() was not stopped"
    assert streamer.is_closed


def test_cancelled_waiter_leaves_the_stream_usable(tokenizer):
    streamer = textstream.AsyncTextIteratorStreamer(tokenizer)

    async def main():
        iterator = streamer.__aiter__()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(iterator.__anext__(), 0.1)
        produce(streamer, [], tokenizer.encode("after cancel").ids)
        return "".join([text async for text in iterator])

    assert asyncio.run(main()) == "after cancel"
