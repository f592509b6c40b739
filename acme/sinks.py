"""Where a call's return value goes, decided once per run and run inside the worker."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .result_spec import ResultSpec

__all__ = ["InMemorySink", "stack_in_memory"]


class InMemorySink:
    """Results in memory: hand the value back, checked against ``result_shape`` first
    (so a wrong shape fails that call, in the worker, with both shapes named)."""

    def __init__(self, spec: Optional[ResultSpec] = None):
        self.spec = spec

    def store(self, index: int, value: Any) -> Any:
        if self.spec is not None:
            return self.spec.check(value, index)
        return value


def stack_in_memory(spec: ResultSpec, values: list, n_calls: int) -> np.ndarray:
    """One array of ``result_shape``: call ``i``'s value at position ``i`` of the
    stacking axis; calls without a value (failed) stay NaN (or 0 for integers)."""
    fill = np.nan if spec.dtype.kind in "fc" else 0
    out = np.full(spec.full_shape(n_calls), fill, dtype=spec.dtype)
    moved = np.moveaxis(out, spec.stack_axis, 0)
    for index, value in enumerate(values):
        if value is not None:
            moved[index] = value
    return out
