"""The tokenizer a stream decodes with, from what users pass."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from ._native import Detokenizer

# Tokenizers built recently, by their JSON: a streamer per request would
# otherwise rebuild the same tokenizer every time (tens of milliseconds for
# a 50k vocabulary). Keyed by content, so a tokenizer changed since (added
# tokens) is built anew.
_CACHE_SIZE = 4
_cache: "OrderedDict[str, Detokenizer]" = OrderedDict()
_cache_lock = threading.Lock()


def detokenizer(tokenizer: Any) -> Detokenizer:
    """A ``Detokenizer`` for a ``tokenizers.Tokenizer``, a transformers fast
    tokenizer (through ``.backend_tokenizer``), a ``textstream.Model`` or a
    ``Detokenizer``."""
    if isinstance(tokenizer, Detokenizer):
        return tokenizer
    native_model = getattr(tokenizer, "_native_model", None)
    if native_model is not None:
        return native_model.detokenizer()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    source = backend if backend is not None else tokenizer
    to_str = getattr(source, "to_str", None)
    if not callable(to_str):
        raise TypeError(
            f"textstream needs a tokenizers.Tokenizer or a transformers fast tokenizer, "
            f"not {type(tokenizer).__name__} (slow tokenizers are not supported: "
            "load it with use_fast=True)"
        )
    json = to_str()
    with _cache_lock:
        found = _cache.get(json)
        if found is not None:
            _cache.move_to_end(json)
            return found
    built = Detokenizer(json)
    with _cache_lock:
        _cache[json] = built
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return built


def decode_options(decode_kwargs: dict) -> bool:
    """``skip_special_tokens`` from transformers' ``**decode_kwargs``.

    ``clean_up_tokenization_spaces=True`` is refused: the streams reproduce
    the tokenizer's own decode, which has no such step.
    """
    kwargs = dict(decode_kwargs)
    skip_special_tokens = bool(kwargs.pop("skip_special_tokens", False))
    if kwargs.pop("clean_up_tokenization_spaces", None):
        raise ValueError(
            "clean_up_tokenization_spaces=True is not supported: textstream reproduces "
            "tokenizers' decode exactly, which does not clean up spaces"
        )
    if kwargs:
        raise TypeError(f"unexpected decode arguments: {', '.join(sorted(kwargs))}")
    return skip_special_tokens
