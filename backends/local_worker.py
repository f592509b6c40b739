"""The worker processes of the local backend, and the scheduler's handle on each.

A worker is a process with its own duplex pipe: it loads one map's context (the
function and its constant arguments) at a time and runs the batches of calls it is
sent (:func:`_worker_main`). :class:`_Worker` is the scheduler's side: it starts the
process (from a thread that lives as long as this process, so that Linux's
parent-death signal does not fire early), sends, and tells why a worker ended.

Workers started with spawn or forkserver import the user's script first; one whose
script starts a map at its top level exits at once with :data:`UNGUARDED_MAIN_EXIT`,
which :meth:`_Worker.death_reason` turns into one :class:`UnguardedMainError`.
"""
from __future__ import annotations

import ctypes  # loaded here once, so forked workers do not each import it
import logging
import multiprocessing
import os
import pickle
import queue
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import wait
from typing import Optional

from acme.tasks import encode_batch, encode_items, loads

log = logging.getLogger(__name__)

__all__ = ["UnguardedMainError", "UNGUARDED_MAIN_EXIT", "refuse_unguarded_script"]


def _start_method() -> str:
    method = os.environ.get("ACME_START_METHOD", "")
    if method:
        return method
    # fork starts a worker in milliseconds and lets functions typed at a prompt run;
    # elsewhere only spawn is safe.
    return "fork" if sys.platform.startswith("linux") else "spawn"


#: Exit code of a worker whose start ran a map: the script it imports starts one
#: at its top level (no ``if __name__ == "__main__":`` guard; spawn/forkserver).
UNGUARDED_MAIN_EXIT = 87


class UnguardedMainError(RuntimeError):
    """The script starts a map when imported, and the workers import it (spawn)."""


def _refuse_in_starting_worker() -> None:
    """End a worker that is still importing the script (spawn and forkserver run the
    script's top level in every new process) when that code starts workers itself:
    quietly, with an exit code that the scheduler turns into one clear message."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        logging.getLogger("acme").handlers.clear()  # no output from this worker
        raise SystemExit(UNGUARDED_MAIN_EXIT)


def refuse_unguarded_script(method: str) -> None:
    """Raise :class:`UnguardedMainError` before any worker starts when workers import
    the script (``method`` is not fork) and the script has no ``if __name__ ==
    "__main__":`` block: each worker would run its top level, map and all, again.
    (A forkserver dies of it before any worker can say so.)"""
    if method == "fork":
        return
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    if not path or not path.endswith(".py"):  # a prompt, a notebook, python -c
        return
    from acme.mpi_run import has_main_guard
    try:
        guarded = has_main_guard(path)
    except (OSError, SyntaxError, ValueError):  # unreadable: the workers will tell
        return
    if not guarded:
        raise UnguardedMainError(_unguarded_main_message(method))


def _unguarded_main_message(method: str) -> str:
    main = sys.modules.get("__main__")
    script = getattr(main, "__file__", None) or "your script"
    return (f"the worker processes start with {method!r}, which imports {script} in "
            "every worker, and that script starts a ParallelMap (or a worker pool) at "
            "its top level. Put the code that starts the map under\n\n"
            "    if __name__ == \"__main__\":\n"
            "        with ParallelMap(...) as pmap:\n"
            "            pmap.compute()\n\n"
            "and define the function above it, at the top level. (The start method "
            "is the default off Linux, or set by ACME_START_METHOD.)")


def _die_with_parent() -> None:
    """Ask Linux to kill this worker if the scheduler process dies (even by SIGKILL).

    Linux sends the signal when the *thread* that started the worker ends, so
    workers are started from the main thread or a launcher thread that lives as
    long as the process (see :func:`_start`).
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except Exception:  # not Linux: workers still stop when their pipe closes
        pass


_launcher: Optional[queue.Queue] = None
_launcher_lock = threading.Lock()


def _launch_forever(requests: queue.Queue) -> None:
    while True:
        process, box, done = requests.get()
        try:
            process.start()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box.append(exc)
        finally:
            done.set()


def _start(process) -> None:
    """Start a worker process from a thread that lives as long as this process: a
    pool made (or a worker replaced) in a thread must not die with that thread."""
    global _launcher
    if threading.current_thread() is threading.main_thread():
        process.start()
        return
    with _launcher_lock:
        if _launcher is None:
            _launcher = queue.Queue()
            threading.Thread(target=_launch_forever, args=(_launcher,), daemon=True,
                             name="acme-worker-launcher").start()
    box: list = []
    done = threading.Event()
    _launcher.put((process, box, done))
    done.wait()
    if box:
        raise box[0]


def _pidfd(pid: Optional[int]) -> Optional[int]:
    """A descriptor that becomes readable when process ``pid`` ends (Linux 5.3+).

    The process sentinel of multiprocessing is the end of a pipe that every
    process forked by the worker inherits: it stays silent while such a helper
    lives, however the worker itself died."""
    if pid is None or not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


def _worker_main(conn, taken) -> None:
    """Body of a worker process: for each map, load its context, then serve batches.

    Messages in: ``("context", payload)``, ``("tasks", pickled batch)``,
    ``("resend", None)`` (send the last batch again call by call), ``("forget",
    None)`` (drop it), ``None`` (stop). Out: ``("ready", pid)`` once,
    ``("outcomes", packed batch)`` per batch, ``("items", per-call pickles)`` after
    a resend, ``("init-error", text)`` when a context cannot be loaded. ``taken``
    (shared memory) counts the batches taken, so that the scheduler knows whether a
    worker that died had started its last batch.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the scheduler handles Ctrl-C
    _die_with_parent()
    pid = os.getpid()
    try:
        _serve(conn, pid, taken)
    finally:
        if os.getpid() != pid:  # a process forked by a call: never this worker's voice
            os._exit(0)


def _serve(conn, pid: int, taken) -> None:
    conn.send(("ready", pid))
    context, init_error, last = None, "", None
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # scheduler gone: stop quietly
            return
        if message is None:
            return
        kind, data = message
        if kind == "tasks":
            taken.value += 1  # before any call of it runs
            last = None
            if context is None:
                conn.send(("init-error", init_error))
                continue
            batch = context.run_batch(pickle.loads(data))
            if os.getpid() != pid:  # forked by a call outside Python's os.fork
                os._exit(0)
            conn.send_bytes(encode_batch(batch))
            last = batch
        elif kind == "context":
            try:
                context = loads(data)
            except BaseException as exc:  # noqa: BLE001 - report anything
                init_error = "".join(traceback.format_exception(type(exc), exc,
                                                                exc.__traceback__))
                conn.send(("init-error", init_error))
                context = None
        elif kind == "resend":  # the scheduler could not unpickle the last batch
            conn.send(("items", encode_items(last)))
            last = None
        else:  # "forget": the map is over
            last = None


class _Worker:
    def __init__(self, ctx, number: int):
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        self.taken = ctx.RawValue("q", 0)  # batches the worker took (it writes this)
        self.method = ctx.get_start_method()
        self.sent = 0
        self.process = ctx.Process(target=_worker_main, args=(child_conn, self.taken),
                                   name=f"acme-worker-{number}")
        _start(self.process)
        child_conn.close()
        self.conn = parent_conn
        self.pidfd = _pidfd(self.process.pid)
        self.ready = False
        self.context_id: Optional[int] = None
        self.batch: Optional[list] = None
        self.from_singles = False
        self.resending = False
        self.sent_at = 0.0

    @property
    def busy(self) -> bool:
        return self.batch is not None

    @property
    def death_fd(self):
        """What to wait on for this worker's end: its pidfd (else the sentinel)."""
        return self.pidfd if self.pidfd is not None else self.process.sentinel

    def alive(self) -> bool:
        return self.process.is_alive()  # waitpid: true to the process itself

    def wait_dead(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the process to end; whether it has."""
        if self.pidfd is not None:
            wait([self.pidfd], timeout)
        else:
            deadline = time.monotonic() + timeout
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.02)
        return not self.alive()

    def load(self, payload: bytes, context_id: int) -> int:
        data = pickle.dumps(("context", payload), protocol=pickle.HIGHEST_PROTOCOL)
        self.conn.send_bytes(data)
        self.context_id = context_id
        return len(payload)

    def send(self, batch: list) -> int:
        data = pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)
        self.conn.send(("tasks", data))
        self.sent += 1
        self.batch = batch
        self.sent_at = time.monotonic()
        return len(data)

    def death_reason(self) -> str:
        """Why the worker ended (raises :class:`UnguardedMainError` when it ended
        because the script it imported starts a map)."""
        self.wait_dead(1.0)
        code = self.process.exitcode
        if code == UNGUARDED_MAIN_EXIT and not self.ready:
            raise UnguardedMainError(_unguarded_main_message(self.method)) from None
        if code is None:
            return "worker stopped answering"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = "unknown"
            return f"worker died (signal {-code}, {name})"
        return f"worker died (exit code {code})"

    def tell(self, message) -> bool:
        """Send a small message; False when the worker is gone."""
        try:
            self.conn.send(message)
            return True
        except (OSError, ValueError):
            return False

    def stop(self) -> None:
        """Ask an idle worker to exit."""
        if self.alive():
            self.tell(None)

    def kill(self) -> None:
        if self.alive():
            self.process.kill()
        self.wait_dead(5.0)
        try:
            self.conn.close()
        except OSError:
            pass
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
