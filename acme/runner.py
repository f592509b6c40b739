"""One run of a ParallelMap: output folder, log, sink, dry run, the backend's loop,
the container, and the failure report."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import stat
import threading
import time
import warnings
from typing import Any, Optional

from .container import build_container, finish_single_file, remove_stale_temporaries
from .dryrun import ask_to_continue, dry_run
from .errors import CallFailure, ParallelMapError, failure_report, safe_str
from .layout import OutputLayout, default_output_dir, file_stem
from .logs import FILE_ONLY, run_logging
from .progress import Progress
from .fingerprint import describe_difference, fingerprint
from .state import (STATE_DIR, OutputDirInUse, RunState, StateError, check_single_file,
                    stored_shape, verify_results)
from .sinks import InMemorySink, PayloadSink, PickleSink, Stored, stack_in_memory
from .tasks import WorkerContext, check_sendable, pack_outcomes

log = logging.getLogger(__name__)

__all__ = ["execute", "check_output_dir"]


def check_output_dir(path: str, resume: bool = False) -> None:
    """Refuse a folder that already holds files: never mix or overwrite two runs
    (with ``resume``, a folder of an earlier acme run is what we want), and a folder
    another run is using now (named with its pid and host)."""
    if os.path.isdir(path) and os.listdir(path):
        state = RunState(path)
        starting = os.path.isdir(state.folder) and not state.exists()
        holder = state.holder(wait=2.0 if starting else 0.0)
        if holder is not None:
            raise OutputDirInUse(
                f"`output_dir` {path!r} is in use by another acme run ({holder}); wait "
                "for it to finish or choose another output_dir")
    if resume:
        if os.path.isdir(path) and os.listdir(path) and not RunState(path).exists():
            raise ValueError(
                f"resume=True, but `output_dir` {path!r} holds no acme run to continue "
                f"(no {STATE_DIR}/run.json in it)")
        return
    if os.path.isdir(path) and os.listdir(path):
        raise ValueError(
            f"`output_dir` {path!r} already exists and is not empty. Choose a new or "
            "empty folder, or leave output_dir=None for a fresh ACME_<time> folder; to "
            "continue an interrupted run in this folder use resume=True.")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"`output_dir` {path!r} exists and is not a folder")


def _real_folder(path: str) -> None:
    """``path`` (inside the output folder) must be a folder, not a link out of it."""
    if not stat.S_ISDIR(os.lstat(path).st_mode):
        raise OSError(f"{path} is not a folder (a symbolic link or a file): refusing "
                      "to write results through it")


def _prepare_output(pmap) -> tuple[Optional[OutputLayout], Optional[str]]:
    """The run's layout, and the outermost folder this run created for it (None
    when the output folder was there)."""
    if not pmap.write_worker_results:
        return None, None
    folder = os.path.abspath(pmap.output_dir) if pmap.output_dir else default_output_dir()
    check_output_dir(folder, pmap.resume)
    created = None
    missing = folder
    while not os.path.lexists(missing):
        created, missing = missing, os.path.dirname(missing)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise OSError(f"cannot create the output folder {folder!r}: {exc}") from exc
    return OutputLayout(folder, file_stem(pmap.func)), created


def _remove_empty_folders(folder: str, top: str) -> None:
    """Remove ``folder`` and its parents up to ``top``, as long as they are empty."""
    while True:
        try:
            os.rmdir(folder)
        except OSError:
            return
        if folder == top:
            return
        folder = os.path.dirname(folder)


def _remove_created(layout: OutputLayout, state: RunState, logfile: Optional[str],
                    created: Optional[str]) -> None:
    """After a declined dry run: remove what this run put into the output folder
    (its record, log and empty payload folder), and the folders this run created
    for it. A folder that holds anything else is kept."""
    if logfile and os.path.dirname(logfile) == layout.output_dir:
        with contextlib.suppress(FileNotFoundError):
            os.remove(logfile)
    for path in (state.failures_dir, state.folder, layout.payload_dir, layout.parts_dir):
        try:
            _remove_own_folder(path, state)
        except FileNotFoundError:
            continue
        except OSError as exc:  # someone else's file in it: keep it
            log.info("kept %s after the dry run: %s", path, exc)
            return
    if created:
        _remove_empty_folders(layout.output_dir, created)


def _remove_own_folder(path: str, state: RunState) -> None:
    if path == state.folder:  # the run's own record: every file in it is ours
        for name in os.listdir(path):
            entry = os.path.join(path, name)
            if not os.path.isdir(entry) or os.path.islink(entry):
                os.remove(entry)
    os.rmdir(path)


def _make_payload_dir(pmap, layout: OutputLayout) -> None:
    """The per-call files' folder, made once the run holds the output folder."""
    if pmap.write_pickle or pmap.single_file:
        return
    try:
        os.makedirs(layout.payload_dir, exist_ok=True)
        _real_folder(layout.payload_dir)
    except OSError as exc:
        raise OSError(f"cannot create the output folder {layout.output_dir!r}: "
                      f"{exc}") from exc


def _claim(pmap, layout: OutputLayout) -> RunState:
    """Take the output folder for this run (released by ``state.release()``). A
    resume of a different run is refused first, before anything in the folder
    changes."""
    state = RunState(layout.output_dir, layout.stem)
    if pmap.resume and state.exists():
        _fingerprint_checked(pmap, layout, state)
    try:
        state.claim()
    except OSError as exc:  # e.g. a read-only file system
        raise OSError(f"cannot create the output folder {layout.output_dir!r}: "
                      f"{exc}") from exc
    if not pmap.resume and state.exists():  # claimed by a run that started with us
        try:
            other = state.read()
            who = f"pid {other.get('pid', '?')} on host {other.get('host', '?')}, " \
                  f"started {other.get('started', '?')}"
        except StateError:
            who = "its record is unreadable"
        state.release()
        raise OutputDirInUse(
            f"`output_dir` {layout.output_dir!r} was taken by another acme run that "
            f"started at the same time ({who}); choose another output_dir (or "
            "resume=True to continue that run once it has ended)")
    try:
        _make_payload_dir(pmap, layout)
        if not os.access(layout.output_dir, os.W_OK | os.X_OK):
            raise PermissionError(f"the output folder {layout.output_dir!r} is not "
                                  "writable")
    except BaseException:
        state.release()
        raise
    return state


def _logfile_path(pmap, layout: Optional[OutputLayout]) -> Optional[str]:
    if pmap.logfile is False or (pmap.logfile is None and layout is None):
        return None
    if isinstance(pmap.logfile, str):
        return os.path.abspath(os.path.expanduser(pmap.logfile))
    if layout is not None:
        return layout.logfile()
    return OutputLayout(os.getcwd(), file_stem(pmap.func)).logfile()


def _log_parameters(pmap, backend, layout: Optional[OutputLayout]) -> None:
    where = layout.output_dir if layout else "memory"
    log.info("ParallelMap of %s: %d calls on the %s; results in %s",
             getattr(pmap.func, "__name__", pmap.func), pmap.n_inputs,
             backend.describe(), where)
    params = {name: getattr(pmap, name) for name in (
        "write_worker_results", "output_dir", "result_shape", "result_dtype",
        "single_file", "write_pickle", "partition", "n_workers", "mem_per_worker",
        "setup_timeout", "setup_interactive", "stop_client", "verbose", "dryrun",
        "logfile", "backend_name", "timeout", "resume", "cleanup_threshold_days")}
    log.info("parameters: %s", ", ".join(f"{k}={v!r}" for k, v in params.items()),
             extra=FILE_ONLY)
    for note in getattr(pmap, "_notes", ()):  # shown on the console as warnings
        log.warning("%s", note, extra=FILE_ONLY)
    if getattr(backend, "auto_choice", None):  # shown on the console when it was made
        log.info("%s", backend.auto_choice, extra=FILE_ONLY)


def _make_sink(pmap, backend, layout: Optional[OutputLayout]):
    """The sink the workers use, and whether result_0 is written into the single file
    directly (rather than merged from part files at the end)."""
    if layout is None:
        return InMemorySink(pmap.result_spec), False
    if pmap.write_pickle:
        return PickleSink(layout), False
    if pmap.single_file:
        return backend.single_file_sink(layout, pmap.result_spec, pmap.n_inputs,
                                        resume=pmap.resume)
    return PayloadSink(layout, pmap.result_spec), False


def _finish_files(pmap, layout: OutputLayout, stored: dict[int, Stored],
                  raw_rows: bool, state: RunState) -> None:
    if pmap.write_pickle:
        pmap.results_container = None
    elif pmap.single_file:
        def merged(indices: list) -> None:  # their values are in f.h5 now
            state.record_results([(i, layout.container, None) for i in indices])

        pmap.results_container = finish_single_file(
            layout, pmap.n_inputs, pmap.result_spec, stored, raw_rows, record=merged)
    elif stored:
        pmap.results_container = build_container(layout, pmap.n_inputs,
                                                 pmap.result_spec, stored)
    fallback = sorted(i for i, s in stored.items()
                      if s.pickled and not pmap.write_pickle)
    if fallback:
        shown = ", ".join(map(str, fallback[:10])) + (", ..." if len(fallback) > 10 else "")
        message = (f"the return values of {len(fallback)} call(s) ({shown}) cannot be "
                   "stored in HDF5 (e.g. dict, None or other Python objects) and were "
                   f"pickled instead, e.g. {stored[fallback[0]].path}")
        log.warning(message)
        warnings.warn(message, stacklevel=4)


def _mode(pmap) -> str:
    if pmap.write_pickle:
        return "pickle"
    return "single_file" if pmap.single_file else "files"


def _fingerprint_checked(pmap, layout: OutputLayout, state: RunState) -> dict:
    """This run's fingerprint; with resume, refused if the folder holds another run."""
    settings = {"mode": _mode(pmap),
                "result_shape": pmap.result_spec.describe() if pmap.result_spec else None,
                "result_dtype": str(pmap.result_spec.dtype) if pmap.result_spec else None}
    new = fingerprint(pmap._plan, settings)
    if pmap.resume and state.exists():
        diffs = describe_difference(state.read(), new)
        if diffs:
            raise StateError(
                f"resume=True refused: {layout.output_dir} holds a run that cannot be taken "
                f"as this one: "
                + "; ".join(diffs) + ". Use a new output_dir for a new run.")
    return new


def _start_state(pmap, layout: OutputLayout,
                 state: RunState) -> tuple[RunState, dict[int, str]]:
    """Record this run's fingerprint; with resume, check it and find finished calls
    (journaled, and their files complete: the journal is rewritten to hold only
    those)."""
    new = _fingerprint_checked(pmap, layout, state)
    done: dict[int, str] = {}
    if pmap.resume and state.exists():
        mode = _mode(pmap)
        remove_stale_temporaries(layout.output_dir, layout.payload_dir, layout.parts_dir,
                                 state.folder, state.failures_dir)
        done, damaged = verify_results(state, layout, mode, pmap.n_inputs,
                                       pmap.result_spec)
        state.damaged = damaged  # logged once the run's log is open
        journal = state.journal()
        state.rewrite_journal({i: journal[i] for i in done})
        if mode == "single_file":
            _drop_damaged_single_file(layout, pmap.n_inputs, pmap.result_spec)
    state.start(new, layout)
    return state, done


def _drop_damaged_single_file(layout: OutputLayout, n_calls: int, spec) -> None:
    """A single file that fails its check holds no result (its calls were not
    counted as done): set it aside, hidden so that readers do not take it, and let
    the run create a new one."""
    if not os.path.lexists(layout.container):
        return
    problem = check_single_file(layout, n_calls, spec)
    if problem is None:
        return
    aside = os.path.join(layout.output_dir, f".{layout.stem}.h5.damaged")
    os.replace(layout.container, aside)
    log.warning("%s; it was moved to %s and its calls are run again", problem, aside)


class RunInterrupted(KeyboardInterrupt):
    """SIGTERM (what SLURM sends at its time limit) during a run."""


@contextlib.contextmanager
def _sigterm_interrupts():
    """Turn SIGTERM into an exception while calls run, so the run stops like on
    Ctrl-C: workers stopped, finished results kept, container written."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigterm(signum, frame):
        raise RunInterrupted(f"received signal {signum} (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


#: What _execute returns when the user declined to go on after the dry run.
_DECLINED = object()


def execute(pmap, backend) -> Any:
    """Run every call of ``pmap`` on ``backend``; see ``ParallelMap.compute``. The
    output folder is claimed for this run until it returns."""
    layout, created = _prepare_output(pmap)
    try:
        state = _claim(pmap, layout) if layout else None
    except BaseException:
        if created:
            _remove_empty_folders(layout.output_dir, created)
        raise
    result = None
    try:
        result = _execute(pmap, backend, layout, state)
    finally:
        if state is not None:
            state.release()
    if result is _DECLINED:
        if layout is not None and not pmap.resume:
            _remove_created(layout, state, _logfile_path(pmap, layout), created)
        return None
    return result


def _journal(pmap, layout: OutputLayout, state: RunState, indices: list,
             notes: list) -> None:
    """Record the batch's finished calls in the journal (after the workers closed
    and renamed their files): the file of each, and its size."""
    entries = []
    for index, note in zip(indices, notes):
        path = note.path
        if pmap.single_file and not note.pickled:
            part = layout.part(index)
            path = part if os.path.isfile(part) else layout.container
        size = None
        if path != layout.container:
            try:
                size = os.stat(path, follow_symlinks=False).st_size
            except OSError as exc:
                log.warning("call %d's result file is gone (%s): not recorded", index, exc)
                continue
        entries.append((index, path, size))
    try:
        state.record_results(entries)
    except OSError as exc:  # e.g. a full disk: these calls are run again on resume
        log.warning("%s", exc)


class _Tally:
    """What the calls of one run have given so far: values (or result files),
    failures, and the timings the summary reports."""

    def __init__(self, pmap, layout: Optional[OutputLayout], state: Optional[RunState],
                 done: dict[int, str]):
        self.pmap, self.layout, self.state = pmap, layout, state
        self.func_name = getattr(pmap.func, "__name__", "func")
        self.values: list = [None] * pmap.n_inputs
        self.stored: dict[int, Stored] = {}
        self.errors: dict[int, CallFailure] = {}
        self.longest = (0.0, -1)
        self.first_at: Optional[float] = None
        self.received = len(done)  # calls with a result (in memory or on disk)
        for i, path in done.items():
            self.values[i] = path
            self.stored[i] = Stored(path, pickled=path.endswith(".pickle"),
                                    shape=stored_shape(path) if pmap.result_spec else None)

    def take(self, item, start: float) -> tuple[int, int]:
        """Record one outcome or packed batch; returns (results, failures) in it."""
        indices, results, durations, failed = (
            item if isinstance(item, tuple) else pack_outcomes([item]))
        self.first_at = self.first_at or time.perf_counter() - start
        if durations:
            self.longest = max(self.longest, max(zip(durations, indices)))
        if self.layout is None:
            for index, value in zip(indices, results):
                self.values[index] = value
        else:
            for index, note in zip(indices, results):
                self.stored[index] = note
                self.values[index] = note.path
            _journal(self.pmap, self.layout, self.state, indices, results)
            if self.pmap.resume:
                for index in indices:
                    self.state.clear_failure(index)
        for outcome in failed:
            self.longest = max(self.longest, (outcome.duration, outcome.index))
            _report_failure(outcome.failure, self.func_name, self.state)
            self.errors[outcome.index] = outcome.failure
        self.received += len(indices)
        return len(indices), len(failed)

    def result(self) -> Any:
        """What ``compute`` returns; a ParallelMapError if any call failed."""
        pmap, layout, errors = self.pmap, self.layout, self.errors
        if errors:
            first = errors[min(errors)].as_exception()
            error = ParallelMapError(failure_report(self.func_name, pmap.n_inputs, errors),
                                     sorted(errors), self.values, errors)
            # A call run in this process (sequential backend) left its live frames: a
            # post-mortem debugger (pdb.pm, %debug) then lands in the user's function.
            raise error.with_traceback(first.__traceback__) from first
        if layout is not None and pmap.single_file:
            return [pmap.results_container]
        if layout is None and pmap.result_spec is not None:
            return stack_in_memory(pmap.result_spec, self.values, pmap.n_inputs)
        return self.values


def _execute(pmap, backend, layout: Optional[OutputLayout],
             state: Optional[RunState]) -> Any:
    state, done = _start_state(pmap, layout, state) if layout else (None, {})
    with run_logging(pmap.verbose, _logfile_path(pmap, layout)):
        _log_parameters(pmap, backend, layout)
        for index, why in sorted(getattr(state, "damaged", {}).items()):
            log.warning("call %d is run again: %s", index, why)
        if done:
            log.info("resuming the run in %s: %d of %d calls already have results",
                     layout.output_dir, len(done), pmap.n_inputs)
        if backend.name != "sequential":
            check_sendable(pmap._plan)
        sink, raw_rows = _make_sink(pmap, backend, layout)
        context = WorkerContext(pmap._plan, sink)
        tasks = pmap._plan.tasks(skip=set(done))
        tally = _Tally(pmap, layout, state, done)
        if pmap.dryrun and tasks:
            report = dry_run(context, tasks, timeout=pmap.timeout)
            if not ask_to_continue(report, len(tasks), backend.n_workers,
                                   pmap.setup_interactive):
                log.info("stopped after the dry run, as asked; nothing else ran%s",
                         f"; what it made in {layout.output_dir} is removed"
                         if layout and not pmap.resume else "")
                return _DECLINED
        start = time.perf_counter()
        finished = False
        progress = Progress(pmap.n_inputs, tally.func_name, pmap.verbose,
                            already_done=len(done))
        stopped_by: Optional[BaseException] = None
        try:
            with _sigterm_interrupts():
                for item in backend.run(context, tasks, timeout=pmap.timeout):
                    progress.update(*tally.take(item, start))
            finished = True
        except BaseException as exc:
            stopped_by = exc
            raise
        finally:
            progress.close()
            elapsed = time.perf_counter() - start
            pmap.stats = dict(backend.stats, seconds=elapsed,
                              first_result_seconds=tally.first_at, resumed=len(done),
                              ran=len(tasks))
            if layout is not None:
                try:
                    _finish_files(pmap, layout, tally.stored, raw_rows, state)
                except OSError as exc:  # e.g. disk full: keep the calls' own errors
                    log.error("could not write the results container in %s: %s",
                              layout.output_dir, exc)
                    if finished and not tally.errors:
                        raise
            if not finished:
                _log_stop(stopped_by, elapsed, pmap.n_inputs, tally.received,
                          len(tally.errors), layout)
        _log_summary(pmap, tally, elapsed, len(done))
    return tally.result()


def _log_summary(pmap, tally: _Tally, elapsed: float, n_done_earlier: int) -> None:
    layout, n_failed = tally.layout, len(tally.errors)
    log.info("%d of %d calls of %s done in %.2f s (%d failed%s)%s",
             pmap.n_inputs - n_failed, pmap.n_inputs, tally.func_name, elapsed,
             n_failed, f", {n_done_earlier} done earlier" if n_done_earlier else "",
             f"; results in {layout.output_dir}" if layout else "")
    if tally.longest[1] >= 0:  # no call ran (a resume with nothing left to do)
        log.info("first result after %.3f s; longest call %d took %.3f s",
                 tally.first_at or 0.0, tally.longest[1], tally.longest[0])
    if pmap.results_container:
        log.info("results container: %s", pmap.results_container)


def _log_stop(stopped_by: Optional[BaseException], elapsed: float, n_calls: int,
              n_stored: int, n_failed: int, layout: Optional[OutputLayout]) -> None:
    """Why the run ended before every call finished; the hint to resume only where
    some calls have results to keep."""
    missing = n_calls - n_stored - n_failed
    counts = f"{n_stored} calls have results, {n_failed} failed, {missing} were not finished"
    hint = (f"; to finish them, run again with output_dir={layout.output_dir!r} and "
            "resume=True" if layout and (n_stored or n_failed) else "")
    if stopped_by is None or isinstance(stopped_by, KeyboardInterrupt):
        log.error("the run was interrupted after %.2f s: %s%s", elapsed, counts, hint)
    elif n_stored or n_failed:
        log.error("the run stopped after %.2f s because of %s: %s: %s%s", elapsed,
                  type(stopped_by).__name__, safe_str(stopped_by), counts, hint)
    else:
        # the exception itself follows with its text; the log file gets the text too
        log.error("the run failed before any call finished: %s (see below)",
                  type(stopped_by).__name__)
        log.error("the run failed before any call finished: %s: %s",
                  type(stopped_by).__name__, safe_str(stopped_by), extra=FILE_ONLY)


def _report_failure(failure: CallFailure, func_name: str,
                    state: Optional[RunState]) -> None:
    log.error("call %d of %s failed on %s after %.3f s: %s", failure.index, func_name,
              failure.where, failure.duration, failure.summary)
    log.error("traceback of call %d:\n%s", failure.index,
              failure.traceback_text.rstrip(), extra=FILE_ONLY)
    if state is not None:
        try:
            state.record_failure(failure)
        except OSError as exc:  # e.g. a full disk: the run goes on, the log says so
            log.warning("could not record the failure of call %d in %s: %s",
                        failure.index, state.failures_dir, exc)
