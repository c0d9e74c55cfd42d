"""The streamed text equals tokenizer.decode(ids) exactly, on the real
SmolLM2 tokenizer, fed one id at a time as generate() feeds it."""

from __future__ import annotations

import numpy as np
import pytest

import textstream
from conftest import produce

HARD_TEXTS = {
    "thai": "สวัสดีครับ ภาษาไทยไม่มีช่องว่างระหว่างคำ ขอบคุณมากครับ",
    "emoji_zwj": "Family: 👨‍👩‍👧‍👦, flags 🇫🇷🇯🇵, skin 👋🏽 and 🧑🏿‍🚀 done.",
    "cjk": "你好，世界！这是一个测试。日本語のテキストとカタカナ、한국어 문장도.",
    "mixed": "Arabic مرحبا بالعالم, Hindi नमस्ते, math ∑∫√ and\ttabs\n\nnew lines  spaces.",
    "code": "def f(x):\n    return {'a': [1, 2, 3]}  # ok\n",
}

PROMPT = "<|im_start|>user\nSay something.<|im_end|>\n<|im_start|>assistant\n"


def stream_text(tokenizer, ids, **kwargs) -> list:
    streamer = textstream.TextIteratorStreamer(tokenizer, skip_prompt=True, **kwargs)
    prompt_ids = tokenizer.encode(PROMPT).ids
    thread = produce(streamer, prompt_ids, ids)
    chunks = list(streamer)
    thread.join()
    return chunks


@pytest.mark.parametrize("name", sorted(HARD_TEXTS))
@pytest.mark.parametrize("mode", ["eager", "words"])
@pytest.mark.parametrize("skip_special_tokens", [False, True])
def test_stream_equals_decode(tokenizer, name, mode, skip_special_tokens):
    # Special tokens in the middle and at the end, as a chat answer has them.
    ids = tokenizer.encode(HARD_TEXTS[name]).ids + tokenizer.encode("<|im_end|>").ids
    ids = ids[:5] + tokenizer.encode("<|im_start|>").ids + ids[5:]
    chunks = stream_text(tokenizer, ids, mode=mode, skip_special_tokens=skip_special_tokens)
    expected = tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
    assert "".join(chunks) == expected
    assert all(chunks), "no empty chunks"
    if "\ufffd" not in expected:
        assert not any("\ufffd" in chunk for chunk in chunks), "a chunk split a character"


def test_prompt_is_streamed_unless_skipped(tokenizer):
    ids = tokenizer.encode("Hello there").ids
    streamer = textstream.TextIteratorStreamer(tokenizer)
    thread = produce(streamer, tokenizer.encode(PROMPT).ids, ids)
    text = "".join(streamer)
    thread.join()
    assert text == PROMPT + "Hello there"


def test_smollm2_tokenizer_decodes_in_constant_time_per_token(tokenizer):
    # The byte-level table (O(1) per token), not the windowed fallback.
    assert textstream.Detokenizer(tokenizer.to_str()).layout == "byte_level"


def test_eager_releases_thai_before_the_end_and_words_holds_it(tokenizer):
    thai = HARD_TEXTS["thai"].split(" ")[1]  # one run of Thai without spaces
    ids = tokenizer.encode(thai).ids
    eager = textstream.TextIteratorStreamer(tokenizer, timeout=2.0)
    eager.put(np.array([ids]))
    got = ""
    iterator = iter(eager)
    while got != thai:  # all of it arrives without end(): nothing to wait for
        got += next(iterator)
    words = textstream.TextIteratorStreamer(tokenizer, timeout=0.3, mode="words")
    words.put(np.array([ids]))
    with pytest.raises(TimeoutError):
        next(iter(words))  # transformers' behaviour: held until a space or the end
    words.end()


def test_put_accepts_lists_arrays_and_scalars(tokenizer):
    ids = tokenizer.encode("one two three four").ids
    streamer = textstream.TextIteratorStreamer(tokenizer)
    streamer.put([ids[0]])  # list
    streamer.put(np.array(ids[1:2]))  # [n]
    streamer.put(np.array([ids[2:3]]))  # [1, n]
    streamer.put(np.int64(ids[3]))  # numpy scalar
    streamer.put(ids[4:])
    streamer.end()
    assert "".join(streamer) == tokenizer.decode(ids)


def test_batch_put_on_a_single_stream_is_refused(tokenizer):
    streamer = textstream.TextIteratorStreamer(tokenizer)
    with pytest.raises(ValueError, match="BatchTextIteratorStreamer"):
        streamer.put(np.zeros((2, 3), dtype=np.int64))


def test_bad_arguments_are_refused(tokenizer):
    with pytest.raises(ValueError, match="mode"):
        textstream.TextIteratorStreamer(tokenizer, mode="lines")
    with pytest.raises(ValueError, match="timeout"):
        textstream.TextIteratorStreamer(tokenizer, timeout=-1)
    with pytest.raises(TypeError, match="unexpected decode arguments"):
        textstream.TextIteratorStreamer(tokenizer, skip_special_token=True)
    with pytest.raises(ValueError, match="clean_up_tokenization_spaces"):
        textstream.TextIteratorStreamer(tokenizer, clean_up_tokenization_spaces=True)
    with pytest.raises(TypeError, match="tokenizers.Tokenizer"):
        textstream.TextIteratorStreamer(object())
    with pytest.raises(ValueError, match="not a tokenizer"):
        textstream.Detokenizer("{}")
    with pytest.raises(OverflowError):
        textstream.TextIteratorStreamer(tokenizer).put([-1])


def test_a_stream_has_one_reader(tokenizer):
    streamer = textstream.TextIteratorStreamer(tokenizer)
    first = iter(streamer)
    with pytest.raises(RuntimeError, match="one reader"):
        iter(streamer)
    streamer.put([42])
    streamer.end()
    assert "".join(first) == tokenizer.decode([42])


def test_next_on_the_streamer_itself(tokenizer):
    # transformers' streamers are their own iterators: next(streamer) works.
    ids = tokenizer.encode("Hi").ids
    streamer = textstream.TextIteratorStreamer(tokenizer)
    streamer.put(ids)
    streamer.end()
    assert next(streamer) == "Hi"
    with pytest.raises(StopIteration):
        next(streamer)


class Collecting(textstream.TextStreamer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.chunks = []

    def on_finalized_text(self, text, stream_end=False):
        self.chunks.append((text, stream_end))


def test_text_streamer_prints_everything_then_a_newline(tokenizer, capsys):
    ids = tokenizer.encode(HARD_TEXTS["cjk"]).ids
    streamer = textstream.TextStreamer(tokenizer, skip_prompt=True)
    streamer.put(np.array([tokenizer.encode(PROMPT).ids]))
    for token in ids:
        streamer.put(np.array([token]))
    streamer.end()
    assert capsys.readouterr().out == tokenizer.decode(ids) + "\n"


def test_text_streamer_words_mode_releases_whole_words(tokenizer):
    text = "Streaming text word by word, as transformers does it."
    streamer = Collecting(tokenizer, mode="words")
    for token in tokenizer.encode(text).ids:
        streamer.put([token])
    streamer.end()
    chunks = streamer.chunks
    assert "".join(chunk for chunk, _ in chunks) == text
    assert all(chunk.endswith(" ") for chunk, end in chunks if not end)
    assert chunks[-1] == ("it.", True)


class FastTokenizerLike:
    """What textstream reads of a transformers fast tokenizer."""

    def __init__(self, tokenizer):
        self.backend_tokenizer = tokenizer


def test_a_transformers_fast_tokenizer_works_through_its_backend(tokenizer):
    ids = tokenizer.encode(HARD_TEXTS["thai"]).ids
    streamer = textstream.TextIteratorStreamer(FastTokenizerLike(tokenizer), skip_prompt=True)
    thread = produce(streamer, [1, 2, 3], ids)
    assert "".join(streamer) == tokenizer.decode(ids)
    thread.join()
