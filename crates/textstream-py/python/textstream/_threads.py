"""Running ``generate()`` on a thread so that its end, or its failure,
always reaches the consumer; and stopping it once the consumer left."""

from __future__ import annotations

import importlib.util
import sys
import threading
from typing import Any, Callable, List

from ._native import ConsumerGone


def run_in_thread(fn: Callable[..., Any], *args: Any, streamer: Any, **kwargs: Any) -> threading.Thread:
    """Runs ``fn(*args, streamer=streamer, **kwargs)`` on a new (daemon)
    thread and returns the started thread.

    When ``fn`` returns, the stream ends (``streamer.end()``); when it raises,
    the consumer gets that exception from its iterator (``streamer.fail(e)``)
    instead of waiting forever. ``ConsumerGone`` (the consumer left) is a
    normal end::

        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)
        run_in_thread(model.generate, **inputs, streamer=streamer, max_new_tokens=200)
        for text in streamer:
            print(text, end="")
    """

    def target() -> None:
        try:
            fn(*args, streamer=streamer, **kwargs)
        except ConsumerGone:
            streamer.end()
        except BaseException as error:  # noqa: BLE001 - every failure goes to the consumer
            streamer.fail(error)
        else:
            streamer.end()

    name = getattr(fn, "__name__", "generate")
    thread = threading.Thread(target=target, name=f"textstream-{name}", daemon=True)
    thread.start()
    return thread


class _StopWhenClosed:
    """A stopping criterion: ``(input_ids, scores, **kwargs)`` is true once the
    stream's consumer left (or a stop string ended the stream)."""

    def __init__(self, closed_rows: Callable[[], List[bool]]) -> None:
        self._closed_rows = closed_rows

    def __call__(self, input_ids: Any, scores: Any = None, **kwargs: Any) -> Any:
        rows = self._closed_rows()
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(input_ids, torch.Tensor):
            # transformers wants one flag per row of the batch.
            if len(rows) == 1:
                rows = rows * int(input_ids.shape[0])
            return torch.tensor(rows, dtype=torch.bool, device=input_ids.device)
        return rows[0] if len(rows) == 1 else rows


_criteria_class: Any = None


def stopping_criteria(closed_rows: Callable[[], List[bool]]) -> Any:
    """A ``_StopWhenClosed``, a ``transformers.StoppingCriteria`` subclass
    when transformers can be imported (only imported then)."""
    global _criteria_class
    if _criteria_class is None:
        base: Any = None
        if importlib.util.find_spec("transformers") is not None:
            try:
                from transformers import StoppingCriteria as base  # type: ignore[no-redef]
            except ImportError:  # transformers without torch
                base = None
        if base is None:
            _criteria_class = _StopWhenClosed
        else:
            _criteria_class = type(
                "StopWhenConsumerGone",
                (_StopWhenClosed, base),
                {"__doc__": _StopWhenClosed.__doc__},
            )
    return _criteria_class(closed_rows)
