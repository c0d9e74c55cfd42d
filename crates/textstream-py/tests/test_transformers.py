"""The streamers under a real transformers generate(), on a tiny random
Llama built here (no hub access) with the real SmolLM2 tokenizer. Skipped
where torch or transformers cannot be imported."""

from __future__ import annotations

import asyncio
import threading

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")
transformers = pytest.importorskip("transformers", reason="transformers is not installed")

import textstream  # noqa: E402

NEW_TOKENS = 40


@pytest.fixture(scope="module")
def hf_tokenizer(tokenizer):
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|im_end|>"
    )


@pytest.fixture(scope="module")
def tiny_model(tokenizer):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=2,
        pad_token_id=2,
    )
    return transformers.LlamaForCausalLM(config).eval()


def generate_kwargs(hf_tokenizer, text="Hello there, how are you?"):
    inputs = hf_tokenizer([text], return_tensors="pt")
    # Random weights rarely pick EOS, but make the length certain.
    return dict(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False, min_new_tokens=NEW_TOKENS)


def test_iterator_streamer_under_generate(tiny_model, hf_tokenizer):
    kwargs = generate_kwargs(hf_tokenizer)
    expected_ids = tiny_model.generate(**kwargs)[0, kwargs["input_ids"].shape[1] :]
    streamer = textstream.TextIteratorStreamer(hf_tokenizer, skip_prompt=True, skip_special_tokens=True)
    thread = textstream.run_in_thread(tiny_model.generate, **kwargs, streamer=streamer)
    text = "".join(streamer)
    thread.join()
    assert text == hf_tokenizer.decode(expected_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def test_async_streamer_under_generate(tiny_model, hf_tokenizer):
    kwargs = generate_kwargs(hf_tokenizer)
    expected_ids = tiny_model.generate(**kwargs)[0, kwargs["input_ids"].shape[1] :]
    streamer = textstream.AsyncTextIteratorStreamer(hf_tokenizer, skip_prompt=True)
    textstream.run_in_thread(tiny_model.generate, **kwargs, streamer=streamer)

    async def main():
        return "".join([t async for t in streamer])

    assert asyncio.run(main()) == hf_tokenizer.decode(expected_ids, clean_up_tokenization_spaces=False)


def test_generate_failure_reaches_the_consumer(tiny_model, hf_tokenizer):
    streamer = textstream.TextIteratorStreamer(hf_tokenizer, skip_prompt=True)
    kwargs = generate_kwargs(hf_tokenizer)
    kwargs["max_new_tokens"] = -1  # generate() refuses it on its thread
    textstream.run_in_thread(tiny_model.generate, **kwargs, streamer=streamer)
    with pytest.raises(ValueError):
        for _ in streamer:
            pass


def test_consumer_gone_stops_generate(tiny_model, hf_tokenizer):
    streamer = textstream.TextIteratorStreamer(hf_tokenizer, skip_prompt=True)
    kwargs = generate_kwargs(hf_tokenizer)
    kwargs.update(max_new_tokens=200, min_new_tokens=200)
    thread = textstream.run_in_thread(tiny_model.generate, **kwargs, streamer=streamer)
    for _ in streamer:
        break
    thread.join(30)
    assert not thread.is_alive()


def test_stopping_criteria_stops_generate_cleanly(tiny_model, hf_tokenizer):
    streamer = textstream.TextIteratorStreamer(hf_tokenizer, skip_prompt=True)
    kwargs = generate_kwargs(hf_tokenizer)
    kwargs.update(max_new_tokens=200, min_new_tokens=0)
    criteria = streamer.stopping_criteria()
    assert isinstance(criteria, transformers.StoppingCriteria)
    result = {}

    def run():
        result["ids"] = tiny_model.generate(
            **kwargs, streamer=streamer, stopping_criteria=transformers.StoppingCriteriaList([criteria])
        )

    thread = threading.Thread(target=run)
    thread.start()
    iterator = iter(streamer)
    next(iterator)
    iterator.close()
    thread.join(30)
    assert not thread.is_alive()
    assert result["ids"].shape[1] - kwargs["input_ids"].shape[1] < 200


def test_batch_streamer_under_generate(tiny_model, hf_tokenizer):
    hf_tokenizer.padding_side = "left"
    inputs = hf_tokenizer(["Hi", "A longer prompt here"], return_tensors="pt", padding=True)
    kwargs = dict(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    out = tiny_model.generate(**kwargs)[:, inputs["input_ids"].shape[1] :]
    streamer = textstream.BatchTextIteratorStreamer(hf_tokenizer, 2, skip_prompt=True, skip_special_tokens=True)
    textstream.run_in_thread(tiny_model.generate, **kwargs, streamer=streamer)
    texts = ["".join(row) for row in streamer.streams]
    assert texts == hf_tokenizer.batch_decode(out, skip_special_tokens=True, clean_up_tokenization_spaces=False)
