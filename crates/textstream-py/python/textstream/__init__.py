"""textstream: stream text out of a language model generating on its own
thread, into a ``for`` loop, an ``async for`` loop or a terminal.

transformers' streamers with the same names and arguments, without their
defects: exact and O(1) per token, text released as soon as it is final,
errors that reach the consumer, generation that stops when the consumer
leaves, timeouts that raise, stop strings and batches::

    from textstream import TextIteratorStreamer, run_in_thread

    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    run_in_thread(model.generate, **inputs, streamer=streamer, max_new_tokens=200)
    for text in streamer:
        print(text, end="")

``Model`` runs textstream's own GGUF engine (SmolLM2 by default).
"""

from ._model import Model
from ._native import ConsumerGone, Detokenizer, GenerationError, TextIterator
from ._streamers import (
    AsyncBatchTextIteratorStreamer,
    AsyncTextIterator,
    AsyncTextIteratorStreamer,
    BatchTextIteratorStreamer,
    TextIteratorStreamer,
    TextStreamer,
)
from ._threads import run_in_thread

__all__ = [
    "AsyncBatchTextIteratorStreamer",
    "AsyncTextIterator",
    "AsyncTextIteratorStreamer",
    "BatchTextIteratorStreamer",
    "ConsumerGone",
    "Detokenizer",
    "GenerationError",
    "Model",
    "TextIterator",
    "TextIteratorStreamer",
    "TextStreamer",
    "run_in_thread",
]
