"""transformers' streamers, with the same names and constructor arguments,
on textstream's Rust core.

Each streamer is the object ``generate()`` drives (``put``, ``end``, and
here ``fail``) and the one the consumer reads (``for`` / ``async for``).
Reading hands out an iterator that owns the consumer's end: once it is
closed or garbage-collected (a ``break``), the next ``put`` raises
``ConsumerGone``.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from typing import Any, List, Optional, Sequence

from . import _native
from ._ids import batch_rows, sequence_ids
from ._native import TextIterator
from ._threads import stopping_criteria
from ._tokenizer import decode_options, detokenizer

__all__ = [
    "AsyncBatchTextIteratorStreamer",
    "AsyncTextIterator",
    "AsyncTextIteratorStreamer",
    "BatchTextIteratorStreamer",
    "TextIterator",
    "TextIteratorStreamer",
    "TextStreamer",
]


def _resolve(future: "asyncio.Future[None]") -> None:
    if not future.done():
        future.set_result(None)


class AsyncTextIterator:
    """An async iterator over a stream's text: ``async for text in it``.

    Waiting costs nothing: the Rust side wakes the event loop
    (``loop.call_soon_threadsafe``) when text arrives, through one thread
    shared by every stream. Raises the producer's exception after ``fail``,
    ``TimeoutError`` when no text came in time, ``GenerationError`` when the
    producer died without ending the stream.
    """

    __slots__ = ("_native",)

    def __init__(self, native: _native.AsyncTextIterator) -> None:
        self._native = native

    def __aiter__(self) -> "AsyncTextIterator":
        return self

    async def __anext__(self) -> str:
        loop = asyncio.get_running_loop()
        native = self._native
        while True:
            future = loop.create_future()
            text = native.poll(functools.partial(loop.call_soon_threadsafe, _resolve, future))
            if text is not None:
                return text
            await future

    async def aclose(self) -> None:
        """Stops reading: the producer's next ``put`` raises ``ConsumerGone``."""
        self._native.close()

    def close(self) -> None:
        """``aclose()`` without awaiting."""
        self._native.close()

    @property
    def closed(self) -> bool:
        """Whether the iterator was closed."""
        return self._native.closed

    @property
    def finish_reason(self) -> Optional[str]:
        """``"stop"``, ``"length"`` or ``"stop_string"`` once the stream ended."""
        return self._native.finish_reason

    @property
    def stop_string(self) -> Optional[str]:
        """The stop string that ended the stream, if one did."""
        return self._native.stop_string


class _Producing:
    """What ``generate()`` calls: ``put``, ``end``, ``fail``."""

    _producer: _native.Producer
    # Set once stopping_criteria() was handed out: generate() then stops by
    # the criterion, and put() stays quiet instead of raising ConsumerGone
    # (generate() calls put before it asks its stopping criteria).
    _stops_by_criterion = False

    def _put(self, put: Any, ids: Any) -> None:
        try:
            put(ids)
        except _native.ConsumerGone:
            if not self._stops_by_criterion:
                raise

    def end(self) -> None:
        """Ends the stream; the consumer's loop finishes after the last text."""
        self._producer.end()

    def fail(self, exception: BaseException) -> None:
        """Ends the stream with ``exception``, which the consumer's iterator
        raises (instead of waiting forever for text that will not come)."""
        self._producer.fail(exception)

    def stopping_criteria(self) -> Any:
        """A stopping criterion for ``generate(stopping_criteria=[...])``:
        true once the consumer left or a stop string ended the stream, so
        generation stops cleanly. From then on ``put`` no longer raises
        ``ConsumerGone`` (it ignores the ids): the criterion stops
        ``generate()`` at the same step. A ``transformers.StoppingCriteria``
        when transformers is importable."""
        self._stops_by_criterion = True
        return stopping_criteria(self._producer.closed_rows)

    @property
    def is_closed(self) -> bool:
        """Whether the stream takes no more ids (the consumer left, a stop
        string matched, or it ended)."""
        return self._producer.is_closed()


class _OneReader:
    """The consumer's end, handed out once."""

    def __init__(self, consumer: Any) -> None:
        self._consumer = consumer
        self._own: Any = None
        self._lock = threading.Lock()

    def _take(self) -> Any:
        with self._lock:
            consumer, self._consumer = self._consumer, None
        if consumer is None:
            raise RuntimeError("this stream is already being read: a stream has one reader")
        return consumer

    def close(self) -> None:
        """Stops reading; the producer's next ``put`` raises ``ConsumerGone``."""
        with self._lock:
            consumer, self._consumer = self._consumer, None
            own, self._own = self._own, None
        for reader in (consumer, own):
            if reader is not None:
                reader.close()


def _modes(mode: str, stop: Optional[Sequence[str]]) -> dict:
    return {"mode": mode, "stop": list(stop) if stop is not None else None}


class TextIteratorStreamer(_Producing, _OneReader):
    """transformers' ``TextIteratorStreamer``, fixed.

    ``TextIteratorStreamer(tokenizer, skip_prompt=False, timeout=None,
    **decode_kwargs)``; also ``stop=[...]`` (stop strings: the text ends
    before the first one it reaches) and ``mode`` (``"eager"``, the default:
    text as soon as it is final; ``"words"``: transformers' word-by-word
    release). ``tokenizer`` is a ``tokenizers.Tokenizer``, a transformers
    fast tokenizer or a ``textstream.Model``.

    ``put`` raises ``ConsumerGone`` once nobody reads (unless
    ``stopping_criteria()`` stops ``generate()``); ``fail(e)`` makes the
    consumer's loop raise ``e``; a timeout raises ``TimeoutError``.
    """

    def __init__(
        self,
        tokenizer: Any,
        skip_prompt: bool = False,
        timeout: Optional[float] = None,
        *,
        stop: Optional[Sequence[str]] = None,
        mode: str = "eager",
        **decode_kwargs: Any,
    ) -> None:
        self.tokenizer = tokenizer
        self.skip_prompt = skip_prompt
        self.timeout = timeout
        self.decode_kwargs = decode_kwargs
        self._producer, consumer = _native.text_stream(
            detokenizer(tokenizer),
            skip_prompt=skip_prompt,
            skip_special_tokens=decode_options(decode_kwargs),
            timeout=timeout,
            **_modes(mode, stop),
        )
        _OneReader.__init__(self, consumer)

    def put(self, value: Any) -> None:
        """Takes ids as ``generate()`` passes them: a tensor or array of shape
        ``[1, n]`` or ``[n]``, or a list of ints."""
        self._put(self._producer.put, sequence_ids(value))

    def __iter__(self) -> TextIterator:
        return self._take()

    def __next__(self) -> str:
        if self._own is None:
            self._own = self._take()
        return next(self._own)


class AsyncTextIteratorStreamer(_Producing, _OneReader):
    """transformers' ``AsyncTextIteratorStreamer``, fixed: ``async for text in
    streamer``. Same arguments as ``TextIteratorStreamer``; it needs no event
    loop when made, and several streams may be read at once on one loop."""

    def __init__(
        self,
        tokenizer: Any,
        skip_prompt: bool = False,
        timeout: Optional[float] = None,
        *,
        stop: Optional[Sequence[str]] = None,
        mode: str = "eager",
        **decode_kwargs: Any,
    ) -> None:
        self.tokenizer = tokenizer
        self.skip_prompt = skip_prompt
        self.timeout = timeout
        self.decode_kwargs = decode_kwargs
        self._producer, consumer = _native.async_text_stream(
            detokenizer(tokenizer),
            skip_prompt=skip_prompt,
            skip_special_tokens=decode_options(decode_kwargs),
            timeout=timeout,
            **_modes(mode, stop),
        )
        _OneReader.__init__(self, AsyncTextIterator(consumer))

    def put(self, value: Any) -> None:
        """Takes ids as ``generate()`` passes them (see ``TextIteratorStreamer.put``)."""
        self._put(self._producer.put, sequence_ids(value))

    def __aiter__(self) -> AsyncTextIterator:
        return self._take()

    async def __anext__(self) -> str:
        if self._own is None:
            self._own = self._take()
        return await self._own.__anext__()


class TextStreamer(_Producing):
    """transformers' ``TextStreamer``: prints the text as it becomes final.

    ``TextStreamer(tokenizer, skip_prompt=False, **decode_kwargs)``, plus
    ``stop=[...]`` and ``mode`` as for ``TextIteratorStreamer``. Override
    ``on_finalized_text(text, stream_end=False)`` to send the text elsewhere.
    It runs on the producer's thread; once a stop string matched, ``put``
    ignores further ids (``stopping_criteria()`` then stops ``generate()``).
    """

    def __init__(
        self,
        tokenizer: Any,
        skip_prompt: bool = False,
        *,
        stop: Optional[Sequence[str]] = None,
        mode: str = "eager",
        **decode_kwargs: Any,
    ) -> None:
        self.tokenizer = tokenizer
        self.skip_prompt = skip_prompt
        self.decode_kwargs = decode_kwargs
        self.error: Optional[BaseException] = None
        self._ended = False
        self._pipeline = _native.Pipeline(
            detokenizer(tokenizer),
            skip_prompt=skip_prompt,
            skip_special_tokens=decode_options(decode_kwargs),
            **_modes(mode, stop),
        )

    def put(self, value: Any) -> None:
        """Decodes the ids (without the GIL) and prints what became final."""
        text = self._pipeline.put(sequence_ids(value))
        if text:
            self.on_finalized_text(text)

    def end(self) -> None:
        """Prints what was held back, then a newline (as transformers does)."""
        if self._ended:
            return
        self._ended = True
        self.on_finalized_text(self._pipeline.finish(), stream_end=True)

    def fail(self, exception: BaseException) -> None:
        """Ends the text and keeps ``exception`` in ``self.error``."""
        self.error = exception
        self.end()

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        """Prints ``text`` to stdout, and a newline at the end."""
        print(text, flush=True, end="" if not stream_end else None)

    def stopping_criteria(self) -> Any:
        """True once a stop string ended the text (or ``end`` ran)."""
        return stopping_criteria(lambda: [self._pipeline.finished])

    @property
    def is_closed(self) -> bool:
        """Whether the text has ended."""
        return self._pipeline.finished


class _Row:
    """One row's stream of a batch: ``for text in streamer.streams[i]``."""

    def __init__(self, consumer: Any) -> None:
        self._reader = _OneReader(consumer)

    def __iter__(self) -> TextIterator:
        return self._reader._take()

    def __aiter__(self) -> AsyncTextIterator:
        return self._reader._take()

    def close(self) -> None:
        """Stops reading this row; the others go on."""
        self._reader.close()


class BatchTextIteratorStreamer(_Producing):
    """A streamer for ``generate()`` with a batch: each ``put`` of shape
    ``[batch, n]`` (the prompts) or ``[batch]`` (one new token per row) fans
    out to one stream per row, ``streamer.streams[i]``, each read with its
    own ``for`` loop (on any thread, in any order). A row whose reader left
    is skipped; ``put`` raises ``ConsumerGone`` once every row is closed.
    Same arguments as ``TextIteratorStreamer``, plus ``batch_size``.
    """

    _native_stream = staticmethod(_native.batch_text_stream)

    def __init__(
        self,
        tokenizer: Any,
        batch_size: int,
        skip_prompt: bool = False,
        timeout: Optional[float] = None,
        *,
        stop: Optional[Sequence[str]] = None,
        mode: str = "eager",
        **decode_kwargs: Any,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.skip_prompt = skip_prompt
        self.timeout = timeout
        self.decode_kwargs = decode_kwargs
        self._producer, consumers = self._native_stream(
            detokenizer(tokenizer),
            batch_size,
            skip_prompt=skip_prompt,
            skip_special_tokens=decode_options(decode_kwargs),
            timeout=timeout,
            **_modes(mode, stop),
        )
        self.streams: List[_Row] = [_Row(self._wrap(c)) for c in consumers]

    @staticmethod
    def _wrap(consumer: Any) -> Any:
        return consumer

    def put(self, value: Any) -> None:
        """Takes ``[batch, n]`` or ``[batch]`` ids (tensor, array or lists)."""
        self._put(self._producer.put_rows, batch_rows(value, self.batch_size))

    def closed_rows(self) -> List[bool]:
        """For each row, whether its stream is closed."""
        return self._producer.closed_rows()


class AsyncBatchTextIteratorStreamer(BatchTextIteratorStreamer):
    """``BatchTextIteratorStreamer`` whose rows are read with ``async for``."""

    _native_stream = staticmethod(_native.async_batch_text_stream)

    @staticmethod
    def _wrap(consumer: Any) -> Any:
        return AsyncTextIterator(consumer)

