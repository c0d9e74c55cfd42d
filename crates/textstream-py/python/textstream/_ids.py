"""What ``put`` accepts, turned into lists of ids.

``generate()`` passes torch tensors: the prompt as ``[batch, n]``, then each
step's new tokens as ``[batch]``. numpy arrays and lists of ints work the
same way; anything with ``.tolist()`` is converted through it.
"""

from __future__ import annotations

from typing import Any, List


def _plain(value: Any) -> Any:
    tolist = getattr(value, "tolist", None)
    return tolist() if callable(tolist) else value


def sequence_ids(value: Any) -> List[int]:
    """The ids of one sequence from ``[n]``, ``[1, n]``, a scalar or a list.

    Raises ``ValueError`` for a batch of more than one row.
    """
    value = _plain(value)
    if isinstance(value, int):
        return [value]
    value = list(value)
    if value and not isinstance(value[0], int):
        if len(value) > 1:
            raise ValueError(
                f"this streamer takes one sequence, but put() got a batch of {len(value)} rows: "
                "use textstream.BatchTextIteratorStreamer(tokenizer, batch_size) for batches"
            )
        value = list(_plain(value[0]))
    return value


def batch_rows(value: Any, batch_size: int) -> List[List[int]]:
    """One list of ids per row from ``[batch, n]``, or ``[batch]`` (one new
    token per row, as ``generate()`` passes them after the prompt)."""
    value = _plain(value)
    if isinstance(value, int):
        value = [value]
    rows = list(value)
    if len(rows) != batch_size:
        raise ValueError(
            f"put() got {len(rows)} rows but the streamer has a batch of {batch_size}"
        )
    return [[row] if isinstance(row, int) else list(_plain(row)) for row in rows]
