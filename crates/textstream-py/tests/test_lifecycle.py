"""The fixes: failures reach the consumer, the producer learns that the
consumer left, timeouts raise, and put/next do not hold the GIL."""

from __future__ import annotations

import gc
import json
import os
import signal
import threading
import time

import numpy as np
import pytest

import textstream
from conftest import fake_generate, produce

LONG = 100_000  # more ids than any test reads: the producer must be stopped


def test_fail_raises_the_producers_exception_after_the_text(tokenizer):
    ids = tokenizer.encode("Hello world, this is the text.").ids
    streamer = textstream.TextIteratorStreamer(tokenizer)
    error = ValueError("CUDA out of memory (not really)")

    def generate():
        fake_generate([], ids[:4], streamer)
        streamer.fail(error)

    threading.Thread(target=generate).start()
    got = []
    with pytest.raises(ValueError) as raised:
        for text in streamer:
            got.append(text)
    assert raised.value is error
    assert "".join(got) == tokenizer.decode(ids[:4])


def test_run_in_thread_hands_generates_exception_to_the_consumer(tokenizer):
    ids = tokenizer.encode("one two three four five").ids
    streamer = textstream.TextIteratorStreamer(tokenizer, skip_prompt=True)
    error = KeyError("boom")
    thread = textstream.run_in_thread(
        fake_generate, [1, 2, 3], ids, streamer=streamer, fail_after=2, error=error
    )
    assert isinstance(thread, threading.Thread)
    got = []
    with pytest.raises(KeyError) as raised:
        for text in streamer:
            got.append(text)
    assert raised.value is error
    assert "".join(got) == tokenizer.decode(ids[:2])
    thread.join(5)
    assert not thread.is_alive()


def test_run_in_thread_ends_the_stream_when_generate_returns(tokenizer):
    ids = tokenizer.encode("all of it").ids
    streamer = textstream.TextIteratorStreamer(tokenizer, skip_prompt=True)
    thread = textstream.run_in_thread(fake_generate, [5, 6], ids, streamer=streamer)
    assert "".join(streamer) == "all of it"
    thread.join(5)
    assert not thread.is_alive()


def test_fail_takes_only_exceptions(tokenizer):
    streamer = textstream.TextIteratorStreamer(tokenizer)
    with pytest.raises(TypeError, match="exception"):
        streamer.fail("not an exception")
    streamer.fail(RuntimeError)  # a class is raised as a new instance
    with pytest.raises(RuntimeError):
        next(iter(streamer))


def test_a_producer_dropped_without_end_is_an_error_not_a_hang(tokenizer):
    producer, iterator = textstream._native.text_stream(textstream.Detokenizer(tokenizer.to_str()))
    producer.put([42])
    del producer
    gc.collect()
    assert next(iterator) == tokenizer.decode([42])
    with pytest.raises(textstream.GenerationError, match="without ending"):
        next(iterator)


def put_until_gone(streamer, ids, counter):
    """A generate() that runs until put raises ConsumerGone."""
    try:
        fake_generate([], ids, streamer, delay=0.001)
    except textstream.ConsumerGone:
        counter["gone"] = True


@pytest.mark.parametrize("how", ["break", "close", "del"])
def test_consumer_gone_after_the_consumer_leaves(tokenizer, how):
    streamer = textstream.TextIteratorStreamer(tokenizer)
    outcome = {"gone": False}
    ids = tokenizer.encode("word " * 50).ids * (LONG // 50)
    thread = threading.Thread(target=put_until_gone, args=(streamer, ids, outcome))
    thread.start()
    if how == "break":
        for _text in streamer:
            break  # the loop's iterator is collected here
    else:
        iterator = iter(streamer)
        next(iterator)
        if how == "close":
            iterator.close()
            assert iterator.closed
            with pytest.raises(StopIteration):
                next(iterator)
        else:
            del iterator
    thread.join(10)
    assert not thread.is_alive(), "put never raised ConsumerGone"
    assert outcome["gone"]
    assert streamer.is_closed


def test_stopping_criteria_turns_true_when_the_consumer_leaves(tokenizer):
    streamer = textstream.TextIteratorStreamer(tokenizer)
    criteria = streamer.stopping_criteria()
    input_ids = np.array([[1, 2, 3]])
    assert criteria(input_ids, None) is False
    iterator = iter(streamer)
    assert criteria(input_ids, None) is False
    iterator.close()
    assert criteria(input_ids, None) is True
    streamer.put([1])  # quiet: the criterion stops generate() at this step
    assert streamer.is_closed


def test_put_raises_consumer_gone_without_a_stopping_criterion(tokenizer):
    streamer = textstream.TextIteratorStreamer(tokenizer)
    iter(streamer).close()
    with pytest.raises(textstream.ConsumerGone, match="consumer"):
        streamer.put([1])


def test_run_in_thread_treats_consumer_gone_as_a_normal_end(tokenizer):
    streamer = textstream.TextIteratorStreamer(tokenizer)
    ids = tokenizer.encode("and so on ").ids * LONG
    thread = textstream.run_in_thread(fake_generate, [], ids, streamer=streamer, delay=0.001)
    for _text in streamer:
        break
    thread.join(10)
    assert not thread.is_alive()


def test_timeout_raises_timeout_error_and_the_stream_goes_on(tokenizer):
    streamer = textstream.TextIteratorStreamer(tokenizer, timeout=0.3)
    iterator = iter(streamer)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        next(iterator)
    waited = time.monotonic() - started
    assert 0.25 <= waited < 2.0
    streamer.put(tokenizer.encode("late text").ids)
    streamer.end()
    assert "".join(iterator) == "late text"


def test_timeout_is_not_a_silent_end_of_a_for_loop(tokenizer):
    streamer = textstream.TextIteratorStreamer(tokenizer, timeout=0.1)
    thread = produce(streamer, [], tokenizer.encode("a b").ids, delay=0.5)
    got = []
    with pytest.raises(TimeoutError):
        for text in streamer:
            got.append(text)
    thread.join()
    assert got == []


def test_next_waits_without_the_gil(tokenizer):
    # A consumer blocked in next() must let other Python threads run: here
    # the producer is Python code that only runs if the GIL is free.
    streamer = textstream.TextIteratorStreamer(tokenizer)
    ticks = {"n": 0}

    def producer():
        for _ in range(200):
            ticks["n"] += 1
            time.sleep(0.001)
        streamer.put(tokenizer.encode("done").ids)
        streamer.end()

    threading.Thread(target=producer).start()
    assert "".join(streamer) == "done"
    assert ticks["n"] == 200


def windowed(tokenizer) -> textstream.Detokenizer:
    """SmolLM2 with a decoder the core does not recognise as concatenative,
    so each id costs a decode of a window of ids: slow enough to time."""
    spec = json.loads(tokenizer.to_str())
    strip = {"type": "Strip", "content": " ", "start": 0, "stop": 0}
    spec["decoder"] = {"type": "Sequence", "decoders": [spec["decoder"], strip]}
    detokenizer = textstream.Detokenizer(json.dumps(spec))
    assert detokenizer.layout == "windowed"
    return detokenizer


def test_put_decodes_without_the_gil(tokenizer):
    ids = tokenizer.encode("多语言文本 and text ").ids * 20_000
    counting = {"run": True, "n": 0}

    def count():
        while counting["run"]:
            counting["n"] += 1

    streamer = textstream.TextIteratorStreamer(windowed(tokenizer))
    iterator = iter(streamer)  # keep the consumer alive
    counter = threading.Thread(target=count)
    counter.start()
    time.sleep(0.05)
    before = counting["n"]
    started = time.monotonic()
    streamer.put(ids)
    during = counting["n"] - before
    took = time.monotonic() - started
    time.sleep(took)
    alone = counting["n"] - before - during  # as long again, the GIL shared normally
    counting["run"] = False
    counter.join()
    iterator.close()
    assert took > 0.1, "the put is too short to tell"
    # Holding the GIL, put would have let the counter run at most one switch
    # interval (5 ms); released, the counter runs about as much as alone.
    assert during > 0.25 * alone, (during, alone, took)


@pytest.mark.skipif(not hasattr(signal, "SIGINT"), reason="needs SIGINT")
def test_ctrl_c_interrupts_a_blocked_next(tokenizer):
    streamer = textstream.TextIteratorStreamer(tokenizer)  # no timeout: waits forever
    timer = threading.Timer(0.3, os.kill, args=(os.getpid(), signal.SIGINT))
    timer.start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        next(iter(streamer))
    assert time.monotonic() - started < 2.0
    timer.join()
