"""``dryrun=True``: run one randomly chosen call in a child process first and measure it."""
from __future__ import annotations

import logging
import multiprocessing
import random
import resource
import sys
import time
from dataclasses import dataclass
from typing import Optional

from .sinks import InMemorySink
from .tasks import CallTask, WorkerContext

log = logging.getLogger("acme")

__all__ = ["DryRunReport", "dry_run", "ask_to_continue"]


@dataclass
class DryRunReport:
    index: int
    seconds: float
    peak_mb: float       # the child's peak resident memory
    extra_mb: float      # how much the call added on top of the child's start
    error: Optional[str]

    def describe(self) -> str:
        if self.error:
            return f"dry run of call {self.index} failed after {self.seconds:.2f} s: {self.error}"
        return (f"dry run of call {self.index}: {self.seconds:.3f} s, peak memory "
                f"{self.peak_mb:.1f} MB ({self.extra_mb:.1f} MB used by the call)")


def _maxrss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux, bytes on macOS
    scale = 1e-6 if sys.platform == "darwin" else 1e-3
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _child(conn, context: WorkerContext, task: CallTask) -> None:
    before = _maxrss_mb()
    start = time.perf_counter()
    outcome = context.run(task)
    seconds = time.perf_counter() - start
    peak = _maxrss_mb()
    error = None if outcome.ok else outcome.failure.summary
    conn.send((seconds, peak, peak - before, error))
    conn.close()


def dry_run(context: WorkerContext, tasks: list[CallTask], timeout: Optional[float] = None,
            rng: Optional[random.Random] = None) -> DryRunReport:
    """Run one random call in a separate process; its value is discarded."""
    task = (rng or random).choice(tasks)
    probe = WorkerContext.__new__(WorkerContext)
    probe.__dict__.update(context.__dict__)
    probe.sink = InMemorySink(getattr(context.sink, "spec", None))  # nothing on disk
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    mp = multiprocessing.get_context(method)
    parent, child = mp.Pipe(duplex=False)
    process = mp.Process(target=_child, args=(child, probe, task), name="acme-dryrun")
    start = time.perf_counter()
    process.start()
    child.close()
    try:
        if parent.poll(timeout):
            seconds, peak, extra, error = parent.recv()
        else:
            seconds, peak, extra = time.perf_counter() - start, 0.0, 0.0
            error = f"no answer within {timeout} s"
    except EOFError:
        process.join(5)
        seconds, peak, extra = time.perf_counter() - start, 0.0, 0.0
        error = f"the dry-run process died (exit code {process.exitcode})"
    finally:
        if process.is_alive():
            process.kill()
        process.join(5)
    return DryRunReport(task[0], seconds, peak, extra, error)


def ask_to_continue(report: DryRunReport, n_calls: int, n_workers: int,
                    interactive: bool) -> bool:
    """On a terminal (and with ``setup_interactive``) ask whether to run everything;
    otherwise go on."""
    estimate = report.seconds * n_calls / max(1, n_workers)
    log.info("%s; all %d calls on %d worker(s) should take about %.1f s",
             report.describe(), n_calls, n_workers, estimate)
    if not interactive or not sys.stdin or not sys.stdin.isatty():
        return True
    answer = input(f"{report.describe()}\nRun all {n_calls} calls now? [Y/n] ")
    return answer.strip().lower() not in ("n", "no")
