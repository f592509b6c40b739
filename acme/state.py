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
import json
import os
from typing import Optional

from .errors import CallFailure
from .layout import OutputLayout
from .sinks import _remove_quietly

__all__ = ["RunState", "StateError", "completed_calls", "stored_shape"]

STATE_DIR = ".acme"


class StateError(ValueError):
    """The output folder holds a different run than the one asked to resume."""


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
