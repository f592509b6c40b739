"""A run's calls over time: when each call ended, how long it took, the memory of its
worker, and which failed; drawn into a PNG by ``acme show DIR --plot``.

What is drawn comes from the run's records:

``.acme/calls.tsv``
    Written by the local backend's scheduler, one line per call as its outcome
    arrives::

        <index> <end: Unix time> <duration s> <ok: 1/0> <worker pid> <peak MB> <MB now>

    (tab-separated; ``-`` for a memory figure that could not be read). The peak is
    the worker's peak resident memory while it ran the call's batch (the peak is
    reset before every batch). The last line of an index wins (a resumed run
    appends).
the journal and the failure records
    For runs without ``calls.tsv`` (MPI, SLURM, sequential): a call's end is the
    modification time of its result file, a failure's end and duration are in its
    record; durations of successful calls and memory are then not known, and the
    figure says so.

matplotlib is optional: without it :func:`plot_run` raises :class:`PlotUnavailable`
with the command that installs it.
"""
from __future__ import annotations

import datetime
import errno
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Iterable, Optional

log = logging.getLogger(__name__)

__all__ = ["Timeline", "CallRecord", "read_calls", "plot_run", "PlotUnavailable"]

TIMELINE_FILE = "calls.tsv"


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


# ------------------------------------------------------------------ writing
def _memory_mb(pid: int) -> tuple[Optional[float], Optional[float]]:
    """(peak, current) resident memory of process ``pid`` in MB (Linux /proc), and
    reset its peak so that the next reading covers only what comes after."""
    peak = now = None
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(("VmHWM:", "VmRSS:")):
                    value = int(line.split()[1]) / 1024
                    if line.startswith("VmHWM:"):
                        peak = value
                    else:
                        now = value
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")  # 5: reset the peak resident memory ("high water mark")
    except (OSError, ValueError, IndexError):
        pass  # not Linux, or the worker is gone
    return peak, now


class Timeline:
    """Appends call outcomes to ``<output_dir>/.acme/calls.tsv`` (the scheduler
    process only). Never fails a run: a record that cannot be written is dropped
    with one warning.

    Parameters
    ----------
    output_dir : str
        The run's output folder (its ``.acme`` folder must exist).
    """

    def __init__(self, output_dir: str):
        self.path = os.path.join(output_dir, ".acme", TIMELINE_FILE)
        self.broken = False

    @classmethod
    def for_sink(cls, sink) -> Optional["Timeline"]:
        """The timeline of the run whose results ``sink`` writes (None in memory)."""
        layout = getattr(sink, "layout", None)
        folder = getattr(layout, "output_dir", None)
        if folder is None or not os.path.isdir(os.path.join(folder, ".acme")):
            return None
        return cls(folder)

    def add(self, pid: int, outcomes: Iterable[tuple[int, float, bool]],
            measure: bool = True) -> None:
        """Record ``(index, duration, ok)`` of calls one worker ran: ``pid``, a
        process on this machine whose memory is read (unless ``measure`` is False,
        e.g. for an MPI rank: then ``pid`` only names the worker)."""
        if self.broken:
            return
        end = time.time()
        peak, now = _memory_mb(pid) if measure else (None, None)
        mb = [f"{v:.1f}" if v is not None else "-" for v in (peak, now)]
        text = "".join(f"{int(i)}\t{end:.3f}\t{d:.6f}\t{int(bool(ok))}\t{pid}\t{mb[0]}\t"
                       f"{mb[1]}\n" for i, d, ok in outcomes)
        if not text:
            return
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT
                         | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, text.encode("ascii"))
            finally:
                os.close(fd)
        except OSError as exc:  # e.g. a full disk: the results matter, not this
            self.broken = True
            why = "a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
            log.warning("the call timeline %s cannot be written (%s); `acme show --plot` "
                        "will show less", self.path, why)


# ------------------------------------------------------------------ reading
@dataclass
class CallRecord:
    """One call's outcome as the run recorded it."""

    index: int
    end: float                       # Unix time
    duration: Optional[float] = None
    ok: bool = True
    worker: Optional[int] = None
    peak_mb: Optional[float] = None


@dataclass
class RunCalls:
    """What :func:`read_calls` found: the calls, and what is not known."""

    calls: list = field(default_factory=list)
    source: str = ""
    unknown: list = field(default_factory=list)
    started: float = 0.0             # Unix time the run started
    function: str = "?"
    n_calls: int = 0


def _number(text: str) -> Optional[float]:
    return None if text == "-" else float(text)


def _read_timeline(path: str) -> dict[int, CallRecord]:
    found: dict[int, CallRecord] = {}
    with open(path, encoding="ascii", errors="replace") as fh:
        for line in fh:
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 7 or not line.endswith("\n"):
                continue  # a torn last line (the scheduler was killed)
            try:
                found[int(fields[0])] = CallRecord(
                    int(fields[0]), float(fields[1]), float(fields[2]), fields[3] == "1",
                    int(fields[4]), _number(fields[5]))
            except ValueError:
                continue
    return found


def _iso_time(text) -> Optional[float]:
    try:
        return datetime.datetime.fromisoformat(str(text)).timestamp()
    except ValueError:
        return None


def read_calls(folder: str) -> RunCalls:
    """The calls of the acme run in ``folder``: from its timeline when it has one,
    else from its journal (file times) and failure records."""
    from .state import RunState
    state = RunState(folder)
    record = state.read()
    path = os.path.join(state.folder, TIMELINE_FILE)
    result = RunCalls()
    calls: dict[int, CallRecord] = {}
    if os.path.isfile(path) and not os.path.islink(path):
        calls = _read_timeline(path)
        result.source = f"{state.folder}/{TIMELINE_FILE}"
    if not calls:
        for index, file in state.recorded_results().items():
            try:
                calls[index] = CallRecord(index, os.stat(file).st_mtime)
            except OSError:
                continue
        for index, failure in state.failures().items():
            try:  # the record was written when the call failed (its "time" is
                end = os.stat(os.path.join(state.failures_dir, f"call_{index}.json")
                              ).st_mtime  # to the second only)
            except OSError:
                end = _iso_time(failure.get("time"))
            if end is not None:
                duration = failure.get("duration")
                calls[index] = CallRecord(index, end, float(duration)
                                          if isinstance(duration, (int, float)) else None,
                                          ok=False)
        result.source = "the times of the result files and failure records"
        result.unknown = ["durations of successful calls", "memory"]
    result.calls = sorted(calls.values(), key=lambda c: c.end)
    # run.json keeps whole seconds: a call may seem to start before the run did
    started = _iso_time(record.get("started"))
    result.started = min([c.end - (c.duration or 0.0) for c in result.calls]
                         + ([started] if started is not None else []), default=0.0)
    result.function = str(record.get("function", "?"))
    result.n_calls = int(record.get("n_calls", len(calls)))
    return result


# ------------------------------------------------------------------ drawing
def plot_run(folder: str, png: str) -> RunCalls:
    """Draw the calls of the acme run in ``folder`` into the PNG file ``png``.

    Three panels over the time since the run started: each call's duration (failed
    calls as red crosses), its worker's peak memory, and the calls finished and
    failed so far.

    Parameters
    ----------
    folder : str
        The run's output folder (with its ``.acme`` records).
    png : str
        The file to write.

    Returns
    -------
    RunCalls
        What was drawn.

    Raises
    ------
    PlotUnavailable
        matplotlib is not installed.
    """
    try:
        from matplotlib.figure import Figure  # no pyplot: no GUI, no global state
    except ImportError:
        raise PlotUnavailable("drawing needs matplotlib, which is not installed here: "
                              "pip install matplotlib") from None
    folder = os.path.abspath(folder)
    run = read_calls(folder)
    fig = Figure(figsize=(9, 8), layout="constrained")
    axes = fig.subplots(3, 1, sharex=True)
    title = f"{run.function}: {len(run.calls)} of {run.n_calls} calls recorded\n{folder}"
    if run.unknown:
        title += (f"\nnot recorded for this run: {', '.join(run.unknown)}\n(drawn from "
                  f"{run.source})")
    fig.suptitle(title, fontsize=10)
    _durations(axes[0], run)
    _memory(axes[1], run)
    _counts(axes[2], run)
    axes[2].set_xlabel("seconds since the run started (when each call ended)")
    fig.savefig(png, dpi=100)
    return run


def _xs(run: RunCalls, calls: list) -> list:
    return [c.end - run.started for c in calls]


def _durations(ax, run: RunCalls) -> None:
    ax.set_ylabel("call duration (s)")
    ok = [c for c in run.calls if c.ok and c.duration is not None]
    bad = [c for c in run.calls if not c.ok]
    if ok:
        ax.scatter(_xs(run, ok), [c.duration for c in ok], s=12, label="done")
    if bad:
        ax.scatter(_xs(run, bad), [c.duration or 0.0 for c in bad], s=40, marker="x",
                   color="red", label="failed")
    if ok or bad:
        ax.legend(loc="upper right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "durations not recorded", ha="center", transform=ax.transAxes)


def _memory(ax, run: RunCalls) -> None:
    ax.set_ylabel("worker peak memory (MB)")
    known = [c for c in run.calls if c.peak_mb is not None]
    if not known:
        ax.text(0.5, 0.5, "memory not recorded", ha="center", transform=ax.transAxes)
        return
    for worker in sorted({c.worker for c in known}):
        mine = [c for c in known if c.worker == worker]
        ax.plot(_xs(run, mine), [c.peak_mb for c in mine], marker=".", linewidth=0.8,
                label=f"pid {worker}")
    bad = [c for c in known if not c.ok]
    if bad:
        ax.scatter(_xs(run, bad), [c.peak_mb for c in bad], marker="x", color="red",
                   s=40, zorder=3)
    if len({c.worker for c in known}) <= 8:
        ax.legend(loc="upper right", fontsize=8)


def _counts(ax, run: RunCalls) -> None:
    from matplotlib.ticker import MaxNLocator
    ax.set_ylabel("calls finished")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    xs = _xs(run, run.calls)
    done = failed = 0
    done_ys, failed_ys = [], []
    for call in run.calls:
        done += call.ok
        failed += not call.ok
        done_ys.append(done)
        failed_ys.append(failed)
    ax.step(xs, done_ys, where="post", label="done")
    ax.step(xs, failed_ys, where="post", color="red", label="failed")
    ax.axhline(run.n_calls, color="gray", linestyle=":", linewidth=0.8)
    ax.legend(loc="upper left", fontsize=8)
