"""``result_shape`` / ``result_dtype``: what every call's first return value must look like."""
from __future__ import annotations

import numbers
from typing import Any, Optional, Sequence

import numpy as np

__all__ = ["ResultSpec", "ResultShapeError", "first_value", "split_values"]


class ResultShapeError(ValueError):
    """A call returned a value that does not fit ``result_shape``/``result_dtype``."""


def _is_inf(entry: Any) -> bool:
    return (isinstance(entry, float) or isinstance(entry, np.floating)) and bool(np.isinf(entry))


def split_values(value: Any, spec: Optional["ResultSpec"] = None) -> list:
    """The values a call returned, counted as esi-acme counts them: a tuple or a list
    is several values (``result_0``, ``result_1``, ...), anything else one. With
    ``result_shape`` (``spec``), a list that as a whole has the shape of one call's
    value (e.g. ``[1, 2, 3]`` for ``(None, 3)``) is that one value (esi-acme would
    take its first element for the row and fail to read the result)."""
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, list):
        if spec is not None and value and spec.fits_whole(value):
            return [value]
        return list(value)
    return [value]


def first_value(value: Any, spec: Optional["ResultSpec"] = None) -> Any:
    """The value that ``result_shape`` describes: the first of several return values
    (see :func:`split_values`; None for no value at all)."""
    values = split_values(value, spec)
    return values[0] if values else None


def parse_dtype(dtype: Any) -> np.dtype:
    """``result_dtype`` as a numpy dtype that HDF5 and stacked arrays can hold."""
    try:
        parsed = np.dtype(dtype)
    except Exception as exc:  # numpy raises TypeError, ValueError, even SyntaxError
        raise TypeError(f"`result_dtype` has to be a numpy data type such as 'float' "
                        f"or 'int32', not {dtype!r} ({exc})") from None
    if parsed.kind == "V":
        raise TypeError(f"`result_dtype` {dtype!r} ({parsed}) is a structured or void "
                        "type, which acme cannot stack; use a numeric type, bool or "
                        "fixed-size bytes ('S10') and return structured values without "
                        "result_shape")
    if parsed.hasobject or parsed.kind in "UMm":
        raise TypeError(f"`result_dtype` {dtype!r} ({parsed}) cannot be stored in HDF5 "
                        "as a stacked dataset; use a numeric type, bool or fixed-size "
                        "bytes ('S10')")
    return parsed


class ResultSpec:
    """A validated ``result_shape`` with its ``result_dtype``.

    Parameters
    ----------
    shape : tuple
        Exactly one ``None`` (the axis along which calls are stacked); other entries
        are non-negative integers or ``np.inf`` (one axis whose length is only known
        after the run).
    dtype : str or numpy dtype
        Anything ``numpy.dtype`` understands; ``"float"`` means float64.
    """

    def __init__(self, shape: Sequence, dtype: Any = "float"):
        if not isinstance(shape, (tuple, list)):
            raise TypeError(
                f"`result_shape` has to be None or a tuple such as (None, 100), "
                f"not {type(shape).__name__} {shape!r}")
        shape = tuple(shape)
        if sum(entry is None for entry in shape) != 1:
            raise ValueError(
                f"`result_shape` must contain exactly one None (the axis along which "
                f"calls are stacked), got {shape!r}")
        for entry in shape:
            if entry is None or _is_inf(entry):
                continue
            if isinstance(entry, bool) or not isinstance(entry, numbers.Real):
                raise ValueError(
                    f"`result_shape` may only hold None, non-negative integers and "
                    f"np.inf, got {entry!r} in {shape!r}")
            if entry != entry or entry < 0 or int(entry) != entry or entry >= 2 ** 63:
                raise ValueError(
                    f"`result_shape` may only hold None, non-negative integers and "
                    f"np.inf, got {entry!r} in {shape!r}")
        if sum(_is_inf(entry) for entry in shape) > 1:
            raise ValueError(f"`result_shape` may hold at most one np.inf, got {shape!r}")
        self.dtype = parse_dtype(dtype)
        self.shape = tuple(None if e is None else (np.inf if _is_inf(e) else int(e))
                           for e in shape)
        self.stack_axis = self.shape.index(None)
        # The shape of one call's value: result_shape without the stacking axis.
        self.call_shape = tuple(e for k, e in enumerate(self.shape) if k != self.stack_axis)
        self.has_inf = any(_is_inf(e) for e in self.shape)

    def full_shape(self, n_calls: int, inf_length: Optional[int] = None) -> tuple:
        """The stacked shape for ``n_calls`` calls (``inf_length`` fills an np.inf)."""
        return tuple(n_calls if e is None else (inf_length if _is_inf(e) else e)
                     for e in self.shape)

    def matches(self, shape: tuple) -> bool:
        if len(shape) != len(self.call_shape):
            return False
        return all(_is_inf(want) or want == got for want, got in zip(self.call_shape, shape))

    def fits_whole(self, value: list) -> bool:
        """Whether the list ``value`` as one array has the shape of one call's value."""
        try:
            return self.matches(np.shape(value))
        except ValueError:  # ragged: numpy refuses to give it a shape
            return False

    def check(self, value: Any, index: int) -> np.ndarray:
        """The call's value as an array of the expected shape and dtype, or a clear error."""
        shown = tuple("inf" if _is_inf(e) else e for e in self.call_shape)
        if isinstance(value, (tuple, list)) and not value:
            raise ResultShapeError(
                f"call {index} returned an empty {type(value).__name__} (no value), but "
                f"result_shape={self.describe()} expects a value of shape {shown} per call")
        first = first_value(value, self)
        if isinstance(first, np.ma.MaskedArray) and np.ma.getmaskarray(first).any():
            raise ResultShapeError(
                f"call {index} returned a masked array with masked elements, but "
                f"result_shape={self.describe()} stacks plain values: the mask would be "
                "lost and the masked data stored as if valid. Return np.ma.filled(value, "
                "np.nan), or leave result_shape=None to keep the masked array (pickled)")
        arr = np.asarray(first)
        if not self.matches(arr.shape):
            raise ResultShapeError(
                f"call {index} returned an array of shape {arr.shape}, but "
                f"result_shape={self.describe()} expects shape {shown} per call")
        return self.cast(arr, index)

    def cast(self, arr: np.ndarray, index: int) -> np.ndarray:
        """``arr`` as ``result_dtype``; a value that would change on the way (an
        integer out of range or not exact as a float, a float that is not a whole
        number stored as integers, a finite float that overflows to inf, bytes that
        would be cut short) is an error naming it. Floats of lower
        precision that stay finite are the point of e.g. ``result_dtype="float32"``."""
        source, target = arr.dtype, self.dtype
        if source == target:
            return arr
        integers = source.kind in "iub" and target.kind in "iu"
        # floats holding whole numbers are stored as integers (esi-acme casts any
        # float; here one that is not whole, or out of range, is an error below)
        whole = source.kind == "f" and target.kind in "iu"
        if not (integers or whole or np.can_cast(source, target, casting="same_kind")):
            raise ResultShapeError(
                f"call {index} returned values of dtype {source}, which cannot be "
                f"stored as result_dtype {target} without losing information")
        with np.errstate(all="ignore"):
            out = arr.astype(target)
            if source.kind in "iub":  # integers must come back exactly (also as floats)
                bad = out.astype(source) != arr
            elif whole:  # every float a whole number the integer type holds
                bad = ~np.isfinite(arr) | (out.astype(source) != arr)
            elif source.kind in "fc":  # lower precision is fine, overflow to inf is not
                bad = np.isfinite(out) != np.isfinite(arr)
            else:  # bytes: nothing cut off
                bad = out != arr
        if np.any(bad):
            first = int(np.flatnonzero(bad)[0])
            value, became = arr.flat[first], out.flat[first]
            where = "" if arr.ndim == 0 else \
                f" at index {tuple(int(i) for i in np.unravel_index(first, arr.shape))}"
            raise ResultShapeError(
                f"call {index} returned the value {value.item()!r}{where} (dtype {source}), "
                f"which result_dtype {target} cannot hold: it would be stored as "
                f"{became.item()!r}. Choose a result_dtype that holds every value.")
        return out

    def describe(self) -> str:
        return "(" + ", ".join("None" if e is None else ("np.inf" if _is_inf(e) else str(e))
                               for e in self.shape) + ("," if len(self.shape) == 1 else "") + ")"

    def __reduce__(self):
        return (ResultSpec, (self.shape, self.dtype))
