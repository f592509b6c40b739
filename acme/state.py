"""What a run records about itself in its output folder, so that it can be inspected
and resumed by a later process:

    .acme/run.json                fingerprint: function, number of calls, argument
                                  digests; and who started the run (pid, host, time)
    .acme/failures/call_{i}.json  one per failed call: type, message, traceback, host, ...
    .acme/done                    the journal of finished calls (every disk mode)
    .acme/lock                    claimed (POSIX lock) by the run that uses the folder

The journal ``.acme/done`` is append-only text written by the scheduler process
(never by a worker), one line per finished call, after the worker wrote, closed and
renamed the call's file::

    <index> <path relative to output_dir> [<size in bytes>]

e.g. ``3 f_payload/f_3.h5 2128``, ``3 f_payload/f_3.pickle 301``, ``3 f_3.pickle 301``.
Fields are separated by one space; acme's paths hold no white space. ``<size>`` is the
file's size when it was written (always given for per-call files); a resumed run and
``acme status`` count a call as done only if its file still has that size and opens
(HDF5: has ``result_0``; pickle: ends with the pickle STOP opcode; nothing is
unpickled to check). For ``single_file`` runs:

    3 f.h5                  call 3's result is in the single file (no size: the file
                            grows); the file must open and hold acme_n_calls
    3 .f_parts/f_3.h5 2128  call 3 finished, its values other than the row written
                            into f.h5 are in this part file, not merged into f.h5 yet
                            (the run was stopped before its end); readers cannot read
                            them until a resume merges them
    3                       (earlier acme versions) the same as ``3 f.h5``

The last line for an index wins. A last line without its newline (the scheduler was
killed while appending) is ignored; any other line that does not parse is a
:class:`StateError` naming the file and line. A result file that exists but was never
journaled (the scheduler was killed between a worker's rename and the append) is not
a result: resume computes that call again. When a run is resumed the journal is
rewritten to hold only the calls whose files verified.
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import glob
import json
import os
import socket
import stat
import threading
import time
from typing import Optional

from .errors import CallFailure
from .layout import OutputLayout
from .sinks import _remove_quietly, open_folder, write_bytes_atomic

__all__ = ["RunState", "StateError", "OutputDirInUse", "completed_calls",
           "verify_results", "check_single_file", "stored_shape"]

STATE_DIR = ".acme"

#: Output folders claimed by this process (POSIX locks do not conflict within one
#: process, and closing any descriptor of the lock file would drop the lock).
_CLAIMED: set = set()
_CLAIM_GUARD = threading.Lock()


class StateError(ValueError):
    """The output folder holds a different run than the one asked to resume, or its
    records cannot be read."""


class OutputDirInUse(RuntimeError):
    """Another acme run (another process, or another map of this one) uses the folder."""


def _write_json_atomic(path: str, data: dict, base: Optional[str] = None) -> None:
    text = json.dumps(data, indent=1, default=str).encode("utf-8")
    write_bytes_atomic(path, text, base=base)


def _holder_text() -> str:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                       "since": datetime.datetime.now().isoformat(timespec="seconds")})


def _describe_holder(text: str) -> str:
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on host {info['host']}, since {info['since']}"
    except (ValueError, KeyError, TypeError):
        return "a process that has not written its pid yet"


class RunState:
    """The ``.acme`` folder of one output folder."""

    def __init__(self, output_dir: str, stem: Optional[str] = None):
        self.output_dir = output_dir
        self.folder = os.path.join(output_dir, STATE_DIR)
        self.failures_dir = os.path.join(self.folder, "failures")
        self._stem = stem
        self._lock_fd: Optional[int] = None
        self._journal_ok = True
        #: recorded calls whose files failed verification when the run resumed
        self.damaged: dict[int, str] = {}

    @property
    def run_file(self) -> str:
        return os.path.join(self.folder, "run.json")

    @property
    def done_file(self) -> str:
        return os.path.join(self.folder, "done")

    @property
    def lock_file(self) -> str:
        return os.path.join(self.folder, "lock")

    def exists(self) -> bool:
        return os.path.isfile(self.run_file)

    def read(self) -> dict:
        try:
            with open(self.run_file, encoding="utf-8") as fh:
                record = json.load(fh)
        except ValueError as exc:
            raise StateError(f"the run record {self.run_file} is damaged ({exc}); "
                             "it cannot be resumed or inspected") from None
        if not isinstance(record, dict) or "n_calls" not in record:
            raise StateError(f"the run record {self.run_file} is damaged (no n_calls)")
        return record

    # ------------------------------------------------------------ claim
    def _make_folder(self) -> None:
        for path in (self.folder, self.failures_dir):
            try:
                os.mkdir(path)
            except FileExistsError:
                pass
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                raise StateError(f"{path} is not a folder (a symbolic link or a file): "
                                 "refusing to write the run's records through it")

    def claim(self) -> None:
        """Take the folder for this run until :meth:`release` (or this process ends:
        the kernel drops the lock of a killed process, so a later resume is not
        blocked). Raises :class:`OutputDirInUse` naming the run that has it."""
        key = os.path.realpath(self.output_dir)
        with _CLAIM_GUARD:
            if key in _CLAIMED:
                raise OutputDirInUse(
                    f"`output_dir` {self.output_dir!r} is in use by another map of this "
                    f"process (pid {os.getpid()} on host {socket.gethostname()}); "
                    "wait for it to finish or choose another output_dir")
            self._make_folder()
            dfd = open_folder(self.folder)
            try:
                fd = os.open("lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                             0o644, dir_fd=dfd)
            finally:
                os.close(dfd)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EAGAIN):
                    os.close(fd)
                    raise
                holder = ""
                for _ in range(100):  # the holder writes its pid right after locking
                    holder = os.pread(fd, 4096, 0).decode("utf-8", "replace")
                    if holder.strip():
                        break
                    time.sleep(0.01)
                os.close(fd)
                raise OutputDirInUse(
                    f"`output_dir` {self.output_dir!r} is in use by another acme run "
                    f"({_describe_holder(holder)}); wait for it to finish or choose "
                    "another output_dir") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, _holder_text().encode(), 0)
            self._lock_fd = fd
            _CLAIMED.add(key)

    def release(self) -> None:
        if self._lock_fd is None:
            return
        with _CLAIM_GUARD:
            os.close(self._lock_fd)  # drops the lock
            self._lock_fd = None
            _CLAIMED.discard(os.path.realpath(self.output_dir))

    def holder(self, wait: float = 0.0) -> Optional[str]:
        """Who holds the folder's lock now (another process), or None. With
        ``wait``, give a run that is just starting (its ``.acme`` exists, its lock
        or pid not yet) that many seconds to take it."""
        deadline = time.monotonic() + wait
        while True:
            found = self._holder_now()
            if found is not None and found[1] or time.monotonic() >= deadline:
                return None if found is None else _describe_holder(found[0])
            time.sleep(0.01)

    def _holder_now(self) -> Optional[tuple]:
        """(holder text, whether it is complete) of a lock held now, or None."""
        # under the guard: closing the probe's descriptor would drop a lock that
        # another thread of this process took in the meantime
        with _CLAIM_GUARD:
            return self._probe()

    def _probe(self) -> Optional[tuple]:
        if os.path.realpath(self.output_dir) in _CLAIMED:
            return _holder_text(), True
        try:
            fd = os.open(self.lock_file, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
                return text, bool(text.strip())
            return None
        finally:
            os.close(fd)  # releases the probe's lock, if it got one

    # ------------------------------------------------------------ records
    def start(self, print_: dict, layout: OutputLayout) -> None:
        self._make_folder()
        self._stem = layout.stem
        record = dict(print_, stem=layout.stem, pid=os.getpid(),
                      host=socket.gethostname(),
                      started=datetime.datetime.now().isoformat(timespec="seconds"))
        _write_json_atomic(self.run_file, record, base=self.output_dir)

    def record_failure(self, failure: CallFailure) -> None:
        _write_json_atomic(os.path.join(self.failures_dir, f"call_{failure.index}.json"), {
            "index": failure.index, "type": type(failure.exception).__name__,
            "message": str(failure.exception), "traceback": failure.traceback_text,
            "host": failure.host, "pid": failure.pid, "rank": failure.rank,
            "duration": failure.duration,
            "time": datetime.datetime.now().isoformat(timespec="seconds")},
            base=self.output_dir)

    def clear_failure(self, index: int) -> None:
        dfd = open_folder(self.failures_dir, base=self.output_dir)
        try:
            os.unlink(f"call_{index}.json", dir_fd=dfd)
        except FileNotFoundError:
            pass
        finally:
            os.close(dfd)

    def failures(self) -> dict[int, dict]:
        found = {}
        for path in glob.glob(os.path.join(glob.escape(self.failures_dir), "call_*.json")):
            try:
                with open(path, encoding="utf-8") as fh:
                    record = json.load(fh)
                found[int(record["index"])] = record
            except (ValueError, KeyError, TypeError) as exc:
                raise StateError(f"the failure record {path} is damaged: {exc}") from None
        return found

    # ------------------------------------------------------------ journal
    def record_results(self, entries: list) -> None:
        """Append finished calls to the journal: ``(index, absolute path, size or
        None)`` each. One write per batch; a failed or short write is cut back off, so
        the journal never holds a torn line in its middle (raises OSError)."""
        if not entries or not self._journal_ok:
            return
        lines = []
        for index, path, size in entries:
            rel = os.path.relpath(path, self.output_dir)
            lines.append(f"{int(index)} {rel}" + ("" if size is None else f" {int(size)}"))
        data = ("\n".join(lines) + "\n").encode("utf-8")
        dfd = open_folder(self.folder)
        try:
            fd = os.open("done", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o644, dir_fd=dfd)
        finally:
            os.close(dfd)
        try:
            before = os.fstat(fd).st_size
            try:
                written = os.write(fd, data)
                if written != len(data):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            except OSError as exc:
                try:
                    os.ftruncate(fd, before)
                except OSError:
                    self._journal_ok = False  # a torn line stays: append no more
                raise OSError(exc.errno, f"cannot record finished calls in "
                              f"{self.done_file}: {exc.strerror}") from exc
        finally:
            os.close(fd)

    def stem(self) -> str:
        if self._stem is None:
            record = self.read()
            self._stem = record.get("stem") or str(record["function"]).rsplit(".", 1)[-1]
        return self._stem

    def journal(self) -> dict[int, tuple[str, Optional[int]]]:
        """The journal as ``index -> (relative path, size or None)``, last line wins."""
        try:
            fd = os.open(self.done_file, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StateError(f"the journal {self.done_file} is a symbolic link "
                                 "(acme never writes one): refused") from None
            raise
        with open(fd, "rb") as fh:
            text = fh.read().decode("utf-8", "replace")
        lines = text.split("\n")
        if lines and lines[-1] != "":
            lines[-1] = ""  # torn last line: the scheduler was killed while appending
        found: dict[int, tuple[str, Optional[int]]] = {}
        for number, line in enumerate(lines[:-1], start=1):
            fields = line.split(" ")
            try:
                index = int(fields[0])
                if index < 0 or len(fields) > 3:
                    raise ValueError
                if len(fields) == 1:
                    rel = f"{self.stem()}.h5"
                else:
                    rel = fields[1]
                    if not rel:
                        raise ValueError
                size = int(fields[2]) if len(fields) == 3 else None
                if size is not None and size < 0:
                    raise ValueError
            except ValueError:
                raise StateError(f"the journal {self.done_file} is damaged: line "
                                 f"{number} ({line[:80]!r}) is not '<index> <path> "
                                 "[<size>]'") from None
            found[index] = (rel, size)
        return found

    def recorded_results(self) -> dict[int, str]:
        """Calls the journal records as finished: index -> absolute path of the file.

        Raises :class:`StateError` for a path that is absolute, holds ``..`` or
        leads (through symbolic links) out of the output folder."""
        return {i: self._inside(rel) for i, (rel, _) in self.journal().items()}

    def _inside(self, rel: str) -> str:
        if os.path.isabs(rel) or ".." in rel.split("/"):
            raise StateError(f"the journal {self.done_file} names {rel!r}: not a path "
                             "inside the output folder")
        path = os.path.join(self.output_dir, rel)
        base = os.path.realpath(self.output_dir)
        real = os.path.realpath(path)
        if os.path.commonpath([base, real]) != base:
            raise StateError(f"the result file {path} recorded in {self.done_file} "
                             f"leads out of the output folder (to {real}): refused")
        return path

    def rewrite_journal(self, entries: dict[int, tuple[str, Optional[int]]]) -> None:
        """Replace the journal by ``entries`` (index -> (relative path, size))."""
        text = "".join(f"{i} {rel}" + ("" if size is None else f" {size}") + "\n"
                       for i, (rel, size) in sorted(entries.items()))
        write_bytes_atomic(self.done_file, text.encode("utf-8"), base=self.output_dir)


# ------------------------------------------------------------------ verification
def _expected_paths(layout: OutputLayout, mode: str, index: int) -> set:
    if mode == "pickle":
        return {layout.pickle(index)}
    if mode == "single_file":
        return {layout.container, layout.part(index), layout.pickle(index),
                layout.fallback_pickle(index)}
    # a value HDF5 cannot hold: f_{i}.pickle (f_payload/f_{i}.pickle before 2026-12)
    return {layout.payload(index), layout.pickle(index), layout.fallback_pickle(index)}


def _check_file(path: str, size: Optional[int], part: bool = False) -> Optional[str]:
    """Why the result file ``path`` is not a complete result, or None if it is."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return f"result file {path} is missing"
    except OSError as exc:
        return f"result file {path} cannot be read: {exc.strerror}"
    if stat.S_ISLNK(st.st_mode):
        return f"result file {path} is a symbolic link (acme never writes one)"
    if not stat.S_ISREG(st.st_mode):
        return f"result file {path} is not a regular file"
    if size is not None and st.st_size != size:
        if st.st_size == 0:
            return f"result file {path} is empty ({size} bytes when written)"
        if st.st_size < size:
            return f"result file {path} is truncated ({st.st_size} of {size} bytes)"
        return f"result file {path} has changed ({st.st_size} bytes, {size} when written)"
    if st.st_size == 0:
        return f"result file {path} is empty"
    if path.endswith(".pickle"):
        try:
            with open(path, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b".":  # every pickle ends with STOP
                    return f"result file {path} is incomplete (no end of pickle)"
        except OSError as exc:
            return f"result file {path} cannot be read: {exc.strerror}"
        return None
    import h5py
    try:
        with h5py.File(path, "r") as h5f:
            keys = [k for k in h5f if k.startswith("result_")]
    except Exception as exc:  # noqa: BLE001 - h5py raises OSError, sometimes others
        return f"result file {path} is damaged: {exc}"
    if part and not keys or not part and "result_0" not in keys:
        return f"result file {path} holds no result"
    return None


def check_single_file(layout: OutputLayout, n_calls: int, spec=None) -> Optional[str]:
    """Why the single result file cannot hold results, or None (with ``spec``, its
    result_0 must have the run's full shape)."""
    path = layout.container
    problem = _check_file(path, None, part=True)
    if problem and not problem.endswith("holds no result"):
        return problem
    import h5py
    try:
        with h5py.File(path, "r") as h5f:
            if int(h5f.attrs.get("acme_n_calls", -1)) != n_calls:
                return f"result file {path} is not this run's single file (acme_n_calls)"
            if spec is not None and not spec.has_inf:
                full = tuple(spec.full_shape(n_calls))
                if "result_0" not in h5f or tuple(h5f["result_0"].shape) != full:
                    return f"result file {path} has no result_0 of shape {full}"
    except Exception as exc:  # noqa: BLE001
        return f"result file {path} is damaged: {exc}"
    return None


def _check_single_file_call(layout: OutputLayout, n_calls: int, spec, path: str,
                            size: Optional[int], single: list) -> Optional[str]:
    """Why call's result in a single-file run is not usable, or None. Its row is in
    ``f.h5`` when the journal names ``f.h5``, or names a part file without
    ``result_0`` (the worker wrote the row into ``f.h5`` directly): then ``f.h5``
    must be sound too (checked once, the answer kept in ``single``)."""
    rows_in_file = path == layout.container
    if not rows_in_file:
        problem = _check_file(path, size, part=True)
        if problem is not None:
            return problem
        import h5py
        try:
            with h5py.File(path, "r") as h5f:
                rows_in_file = "result_0" not in h5f
        except Exception as exc:  # noqa: BLE001
            return f"result file {path} is damaged: {exc}"
    if not rows_in_file:
        return None
    if not single:
        single.append(check_single_file(layout, n_calls, spec))
    return single[0]


def verify_results(state: RunState, layout: OutputLayout, mode: str, n_calls: int,
                   spec=None) -> tuple[dict[int, str], dict[int, str]]:
    """The journal's calls, checked on disk.

    Returns
    -------
    done : dict of int to str
        Calls whose result is complete: index -> result file.
    damaged : dict of int to str
        Calls the journal records but whose result is not usable: index -> why
        (e.g. ``"result file .../f_7.h5 is truncated (100 of 2128 bytes)"``).
    """
    done: dict[int, str] = {}
    damaged: dict[int, str] = {}
    single: list = []  # check_single_file's answer, once asked
    for index, (rel, size) in sorted(state.journal().items()):
        if index >= n_calls:
            damaged[index] = f"call {index} is not a call of this run ({n_calls} calls)"
            continue
        path = state._inside(rel)
        if path not in _expected_paths(layout, mode, index):
            damaged[index] = f"the recorded file {path} is not where this run writes " \
                             f"call {index}"
            continue
        if mode == "single_file" and not path.endswith(".pickle"):
            problem = _check_single_file_call(layout, n_calls, spec, path, size, single)
        else:
            problem = _check_file(path, size)
        if problem is None:
            done[index] = path
        else:
            damaged[index] = problem
    return done, damaged


def completed_calls(state: RunState, layout: OutputLayout, mode: str,
                    n_calls: int, spec=None) -> dict[int, str]:
    """Calls recorded in the journal whose result file is complete: index -> file."""
    return verify_results(state, layout, mode, n_calls, spec)[0]


def stored_shape(path: str) -> Optional[tuple]:
    """Shape of result_0 in a payload file (for rebuilding the container)."""
    if not path.endswith(".h5"):
        return None
    import h5py
    try:
        with h5py.File(path, "r") as h5f:
            return h5f["result_0"].shape if "result_0" in h5f else None
    except OSError as exc:
        raise OSError(f"cannot read the result file {path}: {exc}") from exc
