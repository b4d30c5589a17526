"""Items in chunks of one compiled shape: the loop the Bayesian backends share.

A jitted program compiles once per input shape, so the backends feed it their items (test
examples, (test, decay) pairs, draws) in chunks of a fixed size, the last chunk padded by repeating
the last item, and keep each output's rows of the real items.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from tqdm.auto import tqdm


def chunked(fn: Callable[[int, np.ndarray], Any], n: int, size: int, *, axis: int = 0, progress: bool = False,
            desc: str | None = None, **bar: Any) -> Any:
    """``fn`` over ``n`` items in chunks of ``size``, its outputs put together.

    Args:
        fn: ``fn(start, index)`` for the chunk of items ``start ..``: ``index [size]`` their indices,
            the last chunk padded with the last item, ``n - 1`` (so every call has one shape, and a
            jitted ``fn`` compiles once); returns an array or a tuple of arrays (or ``None`` s), each
            with ``size`` rows along ``axis``.
        n: items (at least 1); size: items per chunk.
        axis: the item axis of ``fn``'s outputs (counted from the first).
        progress, desc, bar: a ``tqdm`` bar over the chunks (``bar``: its other options) where ``progress``.

    Returns:
        What ``fn`` returns, with ``n`` rows along ``axis``: each output's rows of the real items of
        every chunk in order, as NumPy arrays (``None`` outputs stay ``None``).
    """
    if n < 1 or size < 1:
        raise ValueError(f"chunked: need at least one item and a chunk size of at least 1, not {n} and {size}")
    out: list | None = None
    for start in tqdm(range(0, n, size), desc=desc, disable=not progress, **bar):
        part = fn(start, np.minimum(np.arange(start, start + size), n - 1))
        single = not isinstance(part, tuple)
        pieces = [None if p is None else np.asarray(p) for p in ((part,) if single else part)]
        if out is None:
            out = [None if p is None else np.empty(p.shape[:axis] + (n,) + p.shape[axis + 1:], p.dtype)
                   for p in pieces]
        stop, before = min(start + size, n), (slice(None),) * axis
        for field, piece in zip(out, pieces):
            if field is not None:
                field[before + (slice(start, stop),)] = piece[before + (slice(stop - start),)]
    return out[0] if single else tuple(out)
