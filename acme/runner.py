"""One run of a ParallelMap: output folder, log, sink, dry run, the backend's loop,
the container, and the failure report."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
import warnings
from typing import Any, Optional

from .container import build_container, finish_single_file
from .dryrun import ask_to_continue, dry_run
from .errors import CallFailure, ParallelMapError, failure_report
from .layout import OutputLayout, default_output_dir, file_stem
from .logs import FILE_ONLY, run_logging
from .progress import Progress
from .fingerprint import describe_difference, fingerprint
from .state import STATE_DIR, RunState, StateError, completed_calls, stored_shape
from .sinks import InMemorySink, PayloadSink, PickleSink, Stored, stack_in_memory
from .tasks import WorkerContext, check_sendable, pack_outcomes

log = logging.getLogger("acme")

__all__ = ["execute", "check_output_dir"]


def check_output_dir(path: str, resume: bool = False) -> None:
    """Refuse a folder that already holds files: never mix or overwrite two runs
    (with ``resume``, a folder of an earlier acme run is what we want)."""
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


def _prepare_output(pmap) -> Optional[OutputLayout]:
    if not pmap.write_worker_results:
        return None
    folder = os.path.abspath(pmap.output_dir) if pmap.output_dir else default_output_dir()
    check_output_dir(folder, pmap.resume)
    try:
        os.makedirs(folder, exist_ok=True)
        layout = OutputLayout(folder, file_stem(pmap.func))
        if not pmap.write_pickle and not pmap.single_file:
            os.makedirs(layout.payload_dir, exist_ok=True)
    except OSError as exc:
        raise OSError(f"cannot create the output folder {folder!r}: {exc}") from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"the output folder {folder!r} is not writable")
    return layout


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
        "logfile", "backend_name", "timeout", "resume")}
    log.info("parameters: %s", ", ".join(f"{k}={v!r}" for k, v in params.items()),
             extra=FILE_ONLY)


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
                  raw_rows: bool) -> None:
    if pmap.write_pickle:
        pmap.results_container = None
    elif pmap.single_file:
        pmap.results_container = finish_single_file(layout, pmap.n_inputs,
                                                    pmap.result_spec, stored, raw_rows)
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


def _start_state(pmap, layout: OutputLayout) -> tuple[RunState, dict[int, str]]:
    """Record this run's fingerprint; with resume, check it and find finished calls."""
    state = RunState(layout.output_dir)
    settings = {"mode": _mode(pmap),
                "result_shape": pmap.result_spec.describe() if pmap.result_spec else None,
                "result_dtype": str(pmap.result_spec.dtype) if pmap.result_spec else None}
    new = fingerprint(pmap._plan, settings)
    done: dict[int, str] = {}
    if pmap.resume and state.exists():
        old = state.read()
        diffs = describe_difference(old, new)
        if diffs:
            raise StateError(
                f"resume=True refused: {layout.output_dir} holds a different run: "
                + "; ".join(diffs) + ". Use a new output_dir for a new run.")
        done = completed_calls(state, layout, settings["mode"], pmap.n_inputs)
    state.start(new, layout)
    return state, done


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


def execute(pmap, backend) -> Any:
    """Run every call of ``pmap`` on ``backend``; see ``ParallelMap.compute``."""
    func_name = getattr(pmap.func, "__name__", "func")
    layout = _prepare_output(pmap)
    state, done = _start_state(pmap, layout) if layout else (None, {})
    logfile = _logfile_path(pmap, layout)
    with run_logging(pmap.verbose, logfile):
        _log_parameters(pmap, backend, layout)
        if done:
            log.info("resuming the run in %s: %d of %d calls already have results",
                     layout.output_dir, len(done), pmap.n_inputs)
        if backend.name != "sequential":
            check_sendable(pmap._plan)
        sink, raw_rows = _make_sink(pmap, backend, layout)
        context = WorkerContext(pmap._plan, sink)
        tasks = pmap._plan.tasks(skip=set(done))
        values: list = [None] * pmap.n_inputs
        stored: dict[int, Stored] = {}
        for i, path in done.items():
            values[i] = path
            stored[i] = Stored(path, pickled=path.endswith(".pickle"),
                               shape=stored_shape(path) if pmap.result_spec else None)
        if pmap.dryrun and tasks:
            report = dry_run(context, tasks, timeout=pmap.timeout)
            if not ask_to_continue(report, len(tasks), backend.n_workers,
                                   pmap.setup_interactive):
                log.info("stopped after the dry run, as asked; nothing else ran")
                return None
        start = time.perf_counter()
        first_at = None
        errors: dict[int, CallFailure] = {}
        longest = (0.0, -1)
        finished = False
        progress = Progress(pmap.n_inputs, func_name, pmap.verbose, already_done=len(done))
        try:
            with _sigterm_interrupts():
                for item in backend.run(context, tasks, timeout=pmap.timeout):
                    indices, results, durations, failed = (
                        item if isinstance(item, tuple) else pack_outcomes([item]))
                    first_at = first_at or time.perf_counter() - start
                    if durations:
                        longest = max(longest, max(zip(durations, indices)))
                    if layout is None:
                        for index, value in zip(indices, results):
                            values[index] = value
                    else:
                        for index, note in zip(indices, results):
                            stored[index] = note
                            values[index] = note.path
                        if pmap.single_file and indices:
                            try:
                                state.mark_done(indices)
                            except OSError as exc:
                                log.warning("could not record finished calls: %s", exc)
                        if pmap.resume:
                            for index in indices:
                                state.clear_failure(index)
                    for outcome in failed:
                        longest = max(longest, (outcome.duration, outcome.index))
                        _report_failure(outcome.failure, func_name, state)
                        errors[outcome.index] = outcome.failure
                    progress.update(len(indices), len(failed))
            finished = True
        finally:
            progress.close()
            elapsed = time.perf_counter() - start
            pmap.stats = dict(backend.stats, seconds=elapsed,
                              first_result_seconds=first_at, resumed=len(done),
                              ran=len(tasks))
            if layout is not None:
                try:
                    _finish_files(pmap, layout, stored, raw_rows)
                except OSError as exc:  # e.g. disk full: keep the calls' own errors
                    log.error("could not write the results container in %s: %s",
                              layout.output_dir, exc)
                    if finished and not errors:
                        raise
            if not finished:
                missing = pmap.n_inputs - len(stored) - len(errors)
                log.error("the run was interrupted after %.2f s: %d calls have results, "
                          "%d failed, %d were not finished%s", elapsed, len(stored),
                          len(errors), missing,
                          f"; to finish them, run again with output_dir="
                          f"{layout.output_dir!r} and resume=True" if layout else "")
        log.info("%d of %d calls of %s done in %.2f s (%d failed%s)%s",
                 pmap.n_inputs - len(errors), pmap.n_inputs, func_name, elapsed,
                 len(errors), f", {len(done)} done earlier" if done else "",
                 f"; results in {layout.output_dir}" if layout else "")
        log.info("first result after %.3f s; longest call %d took %.3f s",
                 first_at or 0.0, longest[1], longest[0])
        if pmap.results_container:
            log.info("results container: %s", pmap.results_container)
    if errors:
        first = errors[min(errors)]
        raise ParallelMapError(failure_report(func_name, pmap.n_inputs, errors),
                               sorted(errors), values, errors) from first.as_exception()
    if layout is not None and pmap.single_file:
        return [pmap.results_container]
    if layout is None and pmap.result_spec is not None:
        return stack_in_memory(pmap.result_spec, values, pmap.n_inputs)
    return values


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
