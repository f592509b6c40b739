"""The fingerprint of a run: what must be the same for ``resume=True`` to continue it.

A fingerprint is stored in ``.acme/run.json`` when a run starts; a resumed run
computes its own and compares them, so that results of two different runs are never
mixed in one folder.
"""
from __future__ import annotations

import hashlib
import pickle
from typing import Any

import numpy as np

from .inputs import CallPlan

__all__ = ["fingerprint", "describe_difference"]


def _digest(value: Any, h) -> None:
    """Feed a canonical form of ``value`` into hash ``h`` (stable across processes:
    no dependence on hash seeds or dict/set iteration order)."""
    if isinstance(value, np.ndarray):
        h.update(f"nd{value.dtype.str}{value.shape}".encode())
        if value.dtype.hasobject:
            for item in value.flat:
                _digest(item, h)
        else:
            h.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, (list, tuple)):
        h.update(f"{type(value).__name__}{len(value)}[".encode())
        for item in value:
            _digest(item, h)
        h.update(b"]")
    elif isinstance(value, dict):
        h.update(f"dict{len(value)}{{".encode())
        for key in sorted(value, key=repr):
            _digest(key, h)
            _digest(value[key], h)
        h.update(b"}")
    elif isinstance(value, (set, frozenset)):
        parts = []
        for item in value:
            sub = hashlib.sha256()
            _digest(item, sub)
            parts.append(sub.hexdigest())
        h.update(f"set{sorted(parts)}".encode())
    elif isinstance(value, (int, float, complex, str, bytes, bool, type(None), np.generic)):
        h.update(f"{type(value).__name__}:{value!r}".encode())
    else:
        try:
            h.update(pickle.dumps(value, protocol=4))
        except Exception:
            h.update(f"{type(value).__module__}.{type(value).__qualname__}".encode())


def _hex(value: Any) -> str:
    h = hashlib.sha256()
    _digest(value, h)
    return h.hexdigest()[:16]


def fingerprint(plan: CallPlan, settings: dict) -> dict:
    """What identifies a run: the function, the calls, and how results are stored."""
    func = plan.func
    return {
        "function": f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', func)}",
        "n_calls": plan.n_inputs,
        "positional": [_hex(a.value) for a in plan.positional],
        "keywords": {k: _hex(a.value) for k, a in sorted(plan.keywords.items())},
        "settings": settings,
    }


def describe_difference(old: dict, new: dict) -> list[str]:
    """Human-readable differences between two fingerprints."""
    diffs = []
    if old.get("function") != new.get("function"):
        diffs.append(f"the function was {old.get('function')}, now {new.get('function')}")
    if old.get("n_calls") != new.get("n_calls"):
        diffs.append(f"the number of calls was {old.get('n_calls')}, now {new.get('n_calls')}")
    old_pos, new_pos = old.get("positional", []), new.get("positional", [])
    if len(old_pos) != len(new_pos):
        diffs.append(f"the function got {len(old_pos)} positional arguments, now {len(new_pos)}")
    else:
        for k, (a, b) in enumerate(zip(old_pos, new_pos)):
            if a != b:
                diffs.append(f"positional argument {k} has changed")
    old_kw, new_kw = old.get("keywords", {}), new.get("keywords", {})
    for key in sorted(set(old_kw) | set(new_kw)):
        if key not in old_kw or key not in new_kw:
            diffs.append(f"keyword argument {key!r} was {'added' if key in new_kw else 'removed'}")
        elif old_kw[key] != new_kw[key]:
            diffs.append(f"keyword argument {key!r} has changed")
    old_set, new_set = old.get("settings", {}), new.get("settings", {})
    for key in sorted(set(old_set) | set(new_set)):
        if old_set.get(key) != new_set.get(key):
            diffs.append(f"{key} was {old_set.get(key)!r}, now {new_set.get(key)!r}")
    return diffs
