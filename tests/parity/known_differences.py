"""Differences from esi-acme 2026.6.2 that the parity suite accepts, each with its reason.

An entry covers the differences whose case, path and field match its ``case``, ``path``
and ``field`` (shell patterns, as in :mod:`fnmatch`; see tests/parity/compare.py for
what paths and fields are). tests/test_esi_parity.py fails on any difference no entry
covers, and on any entry that covers no difference (so this list cannot go stale).
Only differences where esi-acme is wrong (its known defects, ../shared/DESIGN.md §2) or
where acme deliberately adds to the layout belong here; the README's "differences from
esi-acme" says the same to users.
"""
from __future__ import annotations

_SHAPES_UNCHECKED = (
    "esi-acme does not check a call's return value against result_shape: it writes a "
    "container whose virtual dataset does not match its sources. acme refuses such a call "
    "with a ResultShapeError that names it, and writes no container for it.")
_ROW_ARRAY = (
    "esi-acme gives every call the whole (1, N) array instead of one element per call; "
    "acme squeezes it and splits it into N elements, as it does for a 1-D array.")
_EMPTY = (
    "acme refuses empty inputs (no calls to make) with a ValueError before anything starts; "
    "esi-acme starts its workers and returns an empty list.")

KNOWN: list[dict[str, str]] = [
    {"case": "shape_mismatch", "path": "<return>", "field": "*", "reason": _SHAPES_UNCHECKED},
    {"case": "shape_mismatch", "path": "out/*", "field": "exists", "reason": _SHAPES_UNCHECKED},
    {"case": "split_1xN_array", "path": "<return>", "field": "value", "reason": _ROW_ARRAY},
    {"case": "empty_input", "path": "<return>", "field": "*", "reason": _EMPTY},
]
