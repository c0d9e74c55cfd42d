"""Type stubs of the native module (built from src/*.rs)."""

from os import PathLike
from typing import Callable, List, Optional, Tuple, Union

class ConsumerGone(Exception):
    """Raised by ``put`` once nothing more will be read."""

class GenerationError(RuntimeError):
    """The producer failed (engine error) or stopped without ending the stream."""

class Detokenizer:
    def __init__(self, json: str) -> None: ...
    def decode(self, ids: List[int], skip_special_tokens: bool = False) -> str: ...
    @property
    def layout(self) -> str: ...

class Producer:
    def put(self, ids: List[int]) -> None: ...
    def put_rows(self, rows: List[List[int]]) -> int: ...
    def end(self) -> None: ...
    def fail(self, exception: Union[BaseException, type]) -> None: ...
    def is_closed(self) -> bool: ...
    def closed_rows(self) -> List[bool]: ...

class TextIterator:
    def __iter__(self) -> "TextIterator": ...
    def __next__(self) -> str: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...
    @property
    def finish_reason(self) -> Optional[str]: ...
    @property
    def stop_string(self) -> Optional[str]: ...

class AsyncTextIterator:
    def poll(self, wake: Callable[[], object]) -> Optional[str]: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...
    @property
    def finish_reason(self) -> Optional[str]: ...
    @property
    def stop_string(self) -> Optional[str]: ...

class Pipeline:
    def __init__(
        self,
        detokenizer: Detokenizer,
        *,
        skip_prompt: bool = False,
        skip_special_tokens: bool = False,
        stop: Optional[List[str]] = None,
        mode: str = "eager",
    ) -> None: ...
    def put(self, ids: List[int]) -> str: ...
    def finish(self) -> str: ...
    @property
    def finished(self) -> bool: ...
    @property
    def finish_reason(self) -> Optional[str]: ...
    @property
    def stop_string(self) -> Optional[str]: ...

class Model:
    def __init__(
        self,
        name_or_path: Optional[Union[str, PathLike[str]]] = None,
        *,
        threads: Optional[int] = None,
        ctx_size: Optional[int] = None,
    ) -> None: ...
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
        stop: Optional[List[str]] = None,
        mode: str = "eager",
        skip_special_tokens: bool = True,
        timeout: Optional[float] = None,
    ) -> TextIterator: ...
    def astream(
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
        stop: Optional[List[str]] = None,
        mode: str = "eager",
        skip_special_tokens: bool = True,
        timeout: Optional[float] = None,
    ) -> AsyncTextIterator: ...
    def prompt_ids(self, prompt: str, *, chat: bool = True, system: Optional[str] = None) -> List[int]: ...
    def tokenizer_json(self) -> str: ...
    def detokenizer(self) -> Detokenizer: ...
    @property
    def stop_ids(self) -> List[int]: ...
    @property
    def context_length(self) -> int: ...
    @property
    def path(self) -> str: ...

def text_stream(
    detokenizer: Detokenizer,
    *,
    skip_prompt: bool = False,
    skip_special_tokens: bool = False,
    stop: Optional[List[str]] = None,
    mode: str = "eager",
    timeout: Optional[float] = None,
) -> Tuple[Producer, TextIterator]: ...
def async_text_stream(
    detokenizer: Detokenizer,
    *,
    skip_prompt: bool = False,
    skip_special_tokens: bool = False,
    stop: Optional[List[str]] = None,
    mode: str = "eager",
    timeout: Optional[float] = None,
) -> Tuple[Producer, AsyncTextIterator]: ...
def batch_text_stream(
    detokenizer: Detokenizer,
    batch_size: int,
    *,
    skip_prompt: bool = False,
    skip_special_tokens: bool = False,
    stop: Optional[List[str]] = None,
    mode: str = "eager",
    timeout: Optional[float] = None,
) -> Tuple[Producer, List[TextIterator]]: ...
def async_batch_text_stream(
    detokenizer: Detokenizer,
    batch_size: int,
    *,
    skip_prompt: bool = False,
    skip_special_tokens: bool = False,
    stop: Optional[List[str]] = None,
    mode: str = "eager",
    timeout: Optional[float] = None,
) -> Tuple[Producer, List[AsyncTextIterator]]: ...
