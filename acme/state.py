"""What a run records about itself in its output folder, so that it can be inspected
and resumed by a later process:

    .acme/run.json              fingerprint: function, number of calls, argument digests
    .acme/failures/call_{i}.json  one per failed call: type, message, traceback, host, ...
    .acme/done                  single_file runs: indices of finished calls, one per line

Per-call files are their own record: a call is done when its result file exists
(files appear complete or not at all).
"""
from __future__ import annotations

import datetime
import glob
import hashlib
import json
import os
import pickle
from typing import Any, Optional

import numpy as np

from .errors import CallFailure
from .inputs import CallPlan
from .layout import OutputLayout
from .sinks import _remove_quietly

__all__ = ["RunState", "fingerprint", "describe_difference", "StateError"]

STATE_DIR = ".acme"


class StateError(ValueError):
    """The output folder holds a different run than the one asked to resume."""


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


def _write_json_atomic(path: str, data: dict) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, default=str)
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise


class RunState:
    """The ``.acme`` folder of one output folder."""

    def __init__(self, output_dir: str):
        self.output_dir = output_dir
        self.folder = os.path.join(output_dir, STATE_DIR)
        self.failures_dir = os.path.join(self.folder, "failures")

    @property
    def run_file(self) -> str:
        return os.path.join(self.folder, "run.json")

    @property
    def done_file(self) -> str:
        return os.path.join(self.folder, "done")

    def exists(self) -> bool:
        return os.path.isfile(self.run_file)

    def read(self) -> dict:
        with open(self.run_file, encoding="utf-8") as fh:
            return json.load(fh)

    def start(self, print_: dict, layout: OutputLayout) -> None:
        os.makedirs(self.failures_dir, exist_ok=True)
        record = dict(print_, stem=layout.stem,
                      started=datetime.datetime.now().isoformat(timespec="seconds"))
        _write_json_atomic(self.run_file, record)

    def record_failure(self, failure: CallFailure) -> None:
        _write_json_atomic(os.path.join(self.failures_dir, f"call_{failure.index}.json"), {
            "index": failure.index, "type": type(failure.exception).__name__,
            "message": str(failure.exception), "traceback": failure.traceback_text,
            "host": failure.host, "pid": failure.pid, "rank": failure.rank,
            "duration": failure.duration,
            "time": datetime.datetime.now().isoformat(timespec="seconds")})

    def clear_failure(self, index: int) -> None:
        try:
            os.remove(os.path.join(self.failures_dir, f"call_{index}.json"))
        except FileNotFoundError:
            pass

    def failures(self) -> dict[int, dict]:
        found = {}
        for path in glob.glob(os.path.join(self.failures_dir, "call_*.json")):
            with open(path, encoding="utf-8") as fh:
                record = json.load(fh)
            found[int(record["index"])] = record
        return found

    def mark_done(self, indices: list[int]) -> None:
        """Append finished calls (single_file runs, where no per-call file exists)."""
        with open(self.done_file, "a", encoding="utf-8") as fh:
            fh.write("".join(f"{i}\n" for i in indices))
            fh.flush()

    def done_from_log(self) -> set[int]:
        try:
            with open(self.done_file, encoding="utf-8") as fh:
                return {int(line) for line in fh if line.strip()}
        except FileNotFoundError:
            return set()


def completed_calls(state: RunState, layout: OutputLayout, mode: str,
                    n_calls: int) -> dict[int, str]:
    """Calls whose result is complete on disk: index -> result file."""
    done = {}
    if mode == "single_file":
        for i in state.done_from_log():
            if i < n_calls:
                done[i] = layout.container
        return done
    for i in range(n_calls):
        if mode == "pickle":
            candidates = [layout.pickle(i)]
        else:
            candidates = [layout.payload(i), layout.fallback_pickle(i)]
        for path in candidates:
            if os.path.isfile(path):
                done[i] = path
                break
    return done


def stored_shape(path: str) -> Optional[tuple]:
    """Shape of result_0 in a payload file (for rebuilding the container)."""
    if not path.endswith(".h5"):
        return None
    import h5py
    with h5py.File(path, "r") as h5f:
        return h5f["result_0"].shape if "result_0" in h5f else None
