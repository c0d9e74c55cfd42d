"""Stop strings: the text ends before the first stop string, whatever the
token boundaries; put then raises ConsumerGone and the stopping criterion
turns true."""

from __future__ import annotations

import numpy as np
import pytest

import textstream
from conftest import produce


def test_stream_ends_before_the_stop_string(tokenizer):
    text = "The answer is 42.\n\nUser: and now?"
    ids = tokenizer.encode(text).ids
    streamer = textstream.TextIteratorStreamer(tokenizer, stop=["\n\nUser:", "never"])
    iterator = iter(streamer)
    with pytest.raises(textstream.ConsumerGone, match="stop string"):
        for token in ids:
            streamer.put([token])
    assert streamer.is_closed
    assert "".join(iterator) == "The answer is 42."
    assert iterator.finish_reason == "stop_string"
    assert iterator.stop_string == "\n\nUser:"
    streamer.end()  # generate() still calls end(): harmless


def test_stopping_criteria_stops_a_generate_loop_at_the_stop_string(tokenizer):
    # transformers' loop: put the new token, then ask the stopping criteria.
    ids = tokenizer.encode("Sure. DONE and then more text nobody wants").ids
    streamer = textstream.TextIteratorStreamer(tokenizer, stop=["DONE"])
    criteria = streamer.stopping_criteria()
    steps = 0
    for token in ids:
        streamer.put(np.array([token]))  # never raises once a criterion was taken
        steps += 1
        if criteria(np.array([ids[:steps]]), None):
            break
    streamer.end()
    assert "".join(streamer) == "Sure. "
    assert steps < len(ids)
    assert tokenizer.decode(ids[:steps]).endswith("DONE")


def test_stop_string_inside_one_token_and_across_tokens(tokenizer):
    text = "alpha beta gamma delta"
    ids = tokenizer.encode(text).ids
    for stop, before in [("ta gam", "alpha be"), ("a", ""), (" delta", "alpha beta gamma")]:
        streamer = textstream.TextIteratorStreamer(tokenizer, stop=[stop])
        thread = produce(streamer, [], ids)
        assert "".join(streamer) == before, stop
        thread.join()


def test_text_streamer_stops_printing_at_the_stop_string(tokenizer, capsys):
    streamer = textstream.TextStreamer(tokenizer, stop=["STOP"])
    criteria = streamer.stopping_criteria()
    for token in tokenizer.encode("go go STOP no more").ids:
        streamer.put([token])
    assert criteria([[0]], None) is True
    streamer.end()
    assert capsys.readouterr().out == "go go \n"


def test_empty_stop_string_is_refused(tokenizer):
    with pytest.raises(ValueError, match="empty"):
        textstream.TextIteratorStreamer(tokenizer, stop=[""])
