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

KNOWN: list[dict[str, str]] = [
]
