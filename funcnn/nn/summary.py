"""``summary``: a table of a parameter pytree."""

from __future__ import annotations

import math
from typing import Any

import jax

__all__ = ["summary"]


def summary(params: Any) -> str:
    """A table of every parameter: path, shape, dtype and count, with the total.

    Like ``flax.nnx.tabulate``, for any pytree of arrays::

        path      shape      dtype    count
        [0].w     (2, 64)    float32    128
        ...
        total                           387
    """
    rows = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        shape = tuple(getattr(leaf, "shape", ()))
        rows.append((jax.tree_util.keystr(path), str(shape),
                     str(getattr(leaf, "dtype", type(leaf).__name__)),
                     math.prod(shape)))
    total = sum(r[3] for r in rows)
    head = ("path", "shape", "dtype", "count")
    widths = [max([len(head[i])] + [len(str(r[i])) for r in rows]) for i in range(4)]
    widths[3] = max(widths[3], len(str(total)))

    def line(cells):
        return (f"{cells[0]:<{widths[0]}}  {cells[1]:<{widths[1]}}  "
                f"{cells[2]:<{widths[2]}}  {cells[3]:>{widths[3]}}")

    out = [line(head)] + [line(r) for r in rows]
    out.append(line(("total", "", "", f"{total}")))
    return "\n".join(out)
