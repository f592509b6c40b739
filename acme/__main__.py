"""Command line: inspect a run's output folder.

    python -m acme status DIR          done / failed / missing calls, each failure's first line
    python -m acme status --watch DIR  follow a live run until it ends, then its status
    python -m acme errors DIR          full tracebacks of the failed calls
    python -m acme show DIR            the container's datasets, shapes and dtypes
    python -m acme show --plot DIR     also a PNG of call durations, memory and failures

Exit codes: 0 all calls done (status) / no failures (errors) / nothing missing (show);
1 some calls failed, are missing, or their files are damaged; 2 bad usage, not an acme
output folder, or its records in ``.acme`` cannot be read; ``--watch``: 3 still running
at ``--timeout``, 130 stopped with Ctrl-C.

Text that comes from the run (call messages, tracebacks, host and dataset names) is
printed with control characters escaped (``\\x1b``), so that a hostile message cannot
move the cursor or recolour the terminal.
"""
from __future__ import annotations

import argparse
import fcntl
import glob
import json
import os
import re
import struct
import sys
import time
from typing import Optional

from .layout import OutputLayout
from .readers import _open_run, _ranges as _index_ranges
from .state import RunState, StateError, verify_results

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE = 0, 1, 2


class NotARun(Exception):
    pass


def printable(text: object, keep: str = "") -> str:
    """``text`` with every character that is not printable (control characters,
    escape sequences, bidirectional overrides, ...) written as Python escapes
    (``\\x1b``, ``\\u202e``); the characters in ``keep`` (e.g. newlines of a
    traceback) stay as they are."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch in keep else repr(ch)[1:-1]
                   for ch in text)


def _ranges(indices) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2, 5, 7-8"``."""
    return _index_ranges(indices) or "none"


def _open_records(folder: str):
    """The acme run in ``folder`` as the readers see it, and its record."""
    folder = os.path.abspath(os.path.expanduser(folder))
    if not os.path.isdir(folder):
        raise NotARun(f"no such folder: {folder}")
    run = _open_run(folder)  # StateError if its records are damaged
    if run is None:
        raise NotARun(f"{folder} is not an acme output folder (no .acme/run.json); "
                      "was it written by esi-acme or with write_worker_results=False?")
    return folder, run, run.state.read()


def run_status(folder: str) -> dict:
    """Done, failed, damaged and missing calls of the run in ``folder``.

    A call is done only when the run's journal records it and its file verifies;
    one the journal records whose file does not is missing too, and listed in
    ``damaged`` with the reason."""
    folder, run, record = _open_records(folder)
    state, mode, n_calls = run.state, run.mode, run.n_calls
    done, damaged = verify_results(state, run.layout, mode, n_calls, run.spec)
    damaged = {i: why for i, why in damaged.items() if i < n_calls}
    failures = {i: f for i, f in state.failures().items()
                if i not in done and i not in damaged and 0 <= i < n_calls}
    missing = sorted(set(range(n_calls)) - set(done) - set(failures))
    files = {i: rel for i, (rel, _) in run.journal.items() if i in done}
    return {"folder": folder, "function": record.get("function"), "n_calls": n_calls,
            "mode": mode, "done": sorted(done), "failed": failures, "damaged": damaged,
            "missing": missing, "started": record.get("started"), "files": files}


def _field(record: dict, key: str, default: str = "?") -> str:
    """A failure record's field as printable text (records may be hand-edited)."""
    return printable(record.get(key, default))


def _print_status(status: dict) -> None:
    failed, damaged, missing = status["failed"], status["damaged"], status["missing"]
    print(f"{status['folder']}: {printable(status['function'])}, {status['n_calls']} "
          f"calls ({printable(status['mode'])}), started {printable(status['started'])}")
    print(f"  done:    {len(status['done'])}")
    print(f"  failed:  {len(failed)}" + (f"  (calls {_ranges(list(failed))})"
                                         if failed else ""))
    print(f"  missing: {len(missing)}" + (f"  (calls {_ranges(missing)})"
                                          if missing else ""))
    for index in sorted(failed):
        record = failed[index]
        first = str(record.get("message", "")).split("\n")[0]  # \r etc. escaped
        rank = f", rank {_field(record, 'rank')}" if record.get("rank") is not None else ""
        print(f"  call {index}: {_field(record, 'type')}: {printable(first)}  "
              f"[{_field(record, 'host')}, pid {_field(record, 'pid')}{rank}]")
    shown = sorted(damaged)[:10]
    for index in shown:
        print(f"  call {index}: recorded as done, but {printable(damaged[index])}")
    if len(damaged) > len(shown):
        print(f"  ... and {len(damaged) - len(shown)} more damaged calls (--json lists all)")
    if failed or missing:
        print(f"  to run what is left: ParallelMap(..., output_dir={status['folder']!r}, "
              "resume=True)")


def cmd_status(args) -> int:
    if args.watch:
        if args.json:
            raise NotARun("--watch and --json do not go together")
        return watch(args.folder, args.interval, args.timeout)
    status = run_status(args.folder)
    if args.json:
        out = dict(status, files=None, failed={str(i): f"{f.get('type', '?')}: {f.get('message', '')}"
                                   for i, f in status["failed"].items()},
                   damaged={str(i): why for i, why in status["damaged"].items()})
        del out["files"]  # (the journal has them; one entry per call)
        print(json.dumps(out, indent=1))  # JSON escapes control characters itself
    else:
        _print_status(status)
    incomplete = status["failed"] or status["missing"] or status["damaged"]
    return EXIT_INCOMPLETE if incomplete else EXIT_OK


def cmd_errors(args) -> int:
    status = run_status(args.folder)
    if not status["failed"]:
        print(f"no failed calls in {status['folder']}")
        return EXIT_OK
    for index in sorted(status["failed"]):
        record = status["failed"][index]
        where = f"host {_field(record, 'host')}, pid {_field(record, 'pid')}"
        if record.get("rank") is not None:
            where = f"MPI rank {_field(record, 'rank')}, " + where
        try:
            after = f"{float(record['duration']):.3f} s"
        except (KeyError, TypeError, ValueError):
            after = "? s"
        print(f"=== call {index} ({where}, after {after}, {_field(record, 'time')}) ===")
        text = str(record.get("traceback") or "").rstrip() or \
            f"{record.get('type', '?')}: {record.get('message', '')}"
        print(printable(text, keep="\n"))
        print()
    return EXIT_INCOMPLETE


def _natural_key(name: str):
    """result_* first, then comp_0, comp_1, ..., comp_10 in numeric order."""
    head, _, tail = name.rpartition("_")
    return (not name.startswith("result"), head, int(tail) if tail.isdigit() else -1)


def _print_dataset(name: str, obj) -> None:
    if hasattr(obj, "shape"):
        print(f"      {printable(name)}: shape {obj.shape}, dtype {obj.dtype}")


def _run_status_for_show(container: str) -> Optional[dict]:
    """run_status of the acme run that ``container`` belongs to, or None (esi-acme)."""
    folder = os.path.dirname(container)
    if not RunState(folder).exists():
        return None
    status = run_status(folder)
    stem = os.path.splitext(os.path.basename(container))[0]
    return status if OutputLayout(folder, stem).container == container else None


_CALL_FILE = re.compile(r"^(.+)_(\d+)\.(h5|pickle)$")


def _call_files(folder: str, pickles_only: bool = False) -> dict[int, str]:
    """Per-call files of a folder without acme records (esi-acme): ``<func>_<i>.h5``
    and ``<func>_<i>.pickle`` at its top level, or pickles in ``<func>_payload/``;
    index -> path relative to ``folder``. Empty unless they belong to one function."""
    found: dict[int, str] = {}
    stems = set()
    for sub in ("",) + tuple(n for n in sorted(os.listdir(folder))
                             if n.endswith("_payload")):
        try:
            names = os.listdir(os.path.join(folder, sub))
        except OSError:
            continue
        for name in names:
            match = _CALL_FILE.match(name)
            if not match or (pickles_only or sub) and match.group(3) != "pickle":
                continue
            if sub and match.group(1) + "_payload" != sub:
                continue
            stems.add(match.group(1))
            found[int(match.group(2))] = os.path.join(sub, name)
    return found if len(stems) == 1 else {}


def cmd_show(args) -> int:
    code = _show(args)
    if args.plot:
        code = max(code, _plot(args))
    return code


def _plot(args) -> int:
    from .plot import PlotUnavailable, plot_run
    folder = os.path.abspath(os.path.expanduser(args.folder))
    if os.path.isfile(folder):
        folder = os.path.dirname(folder)
    if not RunState(folder).exists():
        raise NotARun(f"--plot needs the records of an acme run ({folder}/.acme/run.json"
                      "); esi-acme folders have none")
    png = args.plot_file or f"{os.path.basename(folder.rstrip(os.sep)) or 'run'}_calls.png"
    try:
        run = plot_run(folder, png)
    except PlotUnavailable as exc:
        print(f"acme show --plot: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"plot of {len(run.calls)} calls: {os.path.abspath(png)} (from {run.source})")
    return EXIT_OK


def _show(args) -> int:
    import h5py
    from .readers import find_container
    try:
        container = find_container(args.folder)
    except FileNotFoundError as exc:
        return _show_without_container(args.folder, exc, args.limit)
    folder = os.path.dirname(container)
    if os.path.isdir(args.folder) and not RunState(folder).exists():
        calls = _call_files(folder)
        if len(calls) > 1 and os.path.relpath(container, folder) in calls.values():
            # esi-acme's per-call files (no container), only one of them .h5
            return _show_without_container(args.folder, FileNotFoundError(), args.limit)
    try:
        status = _run_status_for_show(container)
        h5f = h5py.File(container, "r")
    except (FileNotFoundError, OSError) as exc:
        raise NotARun(f"{args.folder} is not an acme output folder or container, or it "
                      f"cannot be read: {exc}") from None
    print(container)
    with h5f:
        for key, value in h5f.attrs.items():
            if key.startswith("acme_") and key != "acme_missing_calls":
                print(f"  @{printable(key)} = {printable(value)}")
        if status is not None:  # an acme run: its records say which calls have results
            missing = sorted(set(status["missing"]) | set(status["failed"]))
            pickled = {i: rel for i, rel in status["files"].items()
                       if rel.endswith(".pickle")}
            # (a recorded call whose file is gone is "damaged": shown as MISSING)
            why = dict.fromkeys(set(status["missing"]) - set(status["damaged"]),
                                "the call did not finish")
            why.update(dict.fromkeys(status["failed"], "the call failed"))
        else:  # a pickled call has a result, though not in the container
            pickled = _call_files(folder, pickles_only=True)
            missing = sorted({int(i) for i in h5f.attrs.get("acme_missing_calls", [])}
                             - set(pickled))
            why = dict.fromkeys(missing, "the run recorded no result")
        if missing:
            print(f"  calls without a result: {_ranges(missing)}")
        # a call without an HDF5 result has a dangling link (esi-acme's layout)
        why.update({i: f"pickled: {printable(rel)}" for i, rel in pickled.items()})
        missing_files = _show_names(h5f, args.limit, why)
    _show_call_files(folder, pickled, args.limit, "not in the container")
    return EXIT_INCOMPLETE if missing_files or missing else EXIT_OK


def _show_without_container(folder: str, exc: Exception, limit: int) -> int:
    """A folder of per-call files (write_pickle, esi-acme's pickle fallback) or an acme
    run stopped before its container was written: say which calls have which file."""
    folder = os.path.abspath(os.path.expanduser(folder))
    if os.path.isdir(folder) and RunState(folder).exists():
        status = run_status(folder)
        files = {i: status["files"][i] for i in status["done"]}
        missing = sorted(set(status["missing"]) | set(status["failed"]))
        if status["missing"] and status["mode"] != "pickle":
            print(f"{folder}: no container yet (the run was stopped before writing it; "
                  "resume=True writes it)")
        else:
            print(f"{folder}: {status['n_calls']} calls, one file each (no container)")
    else:
        files = _call_files(folder) if os.path.isdir(folder) else {}
        if not files:
            raise NotARun(f"{folder} is not an acme output folder or container: {exc}")
        print(f"{folder}: one file per call (no container)")
        missing = sorted(set(range(max(files) + 1)) - set(files))
    print(f"  calls with a result: {_ranges(sorted(files))}")
    print(f"  calls without a result: {_ranges(missing)}")
    _show_call_files(folder, files, limit, "")
    return EXIT_INCOMPLETE if missing else EXIT_OK


def _show_call_files(folder: str, files: dict, limit: int, pickle_note: str) -> None:
    """One line per call file (at most ``limit``), with an HDF5 file's datasets."""
    import h5py
    for index in sorted(files)[:limit]:
        rel = files[index]
        path = os.path.join(folder, rel)
        if rel.endswith(".pickle"):
            try:
                size = f"{os.path.getsize(path)} bytes"
            except OSError as exc:
                size = f"unreadable: {exc.strerror or exc}"
            note = f", {pickle_note}" if pickle_note else ""
            print(f"  call {index}: {printable(rel)} (pickle, {size}{note})")
            continue
        print(f"  call {index}: {printable(rel)}")
        try:
            with h5py.File(path, "r") as h5f:
                h5f.visititems(_print_dataset)
        except OSError as exc:
            print(f"      MISSING (the file cannot be read: {printable(exc)})")
    if len(files) > limit:
        print(f"  ... and {len(files) - limit} more call files (--limit to show more)")


def _show_names(h5f, limit: int, why: dict) -> int:
    """Print the container's datasets and call groups; the number of broken links
    that should lead to a result (``why``: call index -> why it has none)."""
    import h5py
    names = sorted(h5f.keys(), key=_natural_key)
    shown = missing_files = 0
    for name in names:
        link = h5f.get(name, getlink=True)
        target = f" -> {printable(link.filename)}" \
            if isinstance(link, h5py.ExternalLink) else ""
        try:
            obj = h5f[name]
        except (KeyError, OSError):
            index = _natural_key(name)[2] if name.startswith("comp_") else -1
            if index in why:
                if shown < limit:
                    print(f"  {printable(name)}{target}: no result ({why[index]})")
                shown += 1
                continue
            print(f"  {printable(name)}{target}: MISSING (the file is gone or unreadable)")
            missing_files += 1
            continue
        if isinstance(obj, h5py.Dataset):
            virtual = " (virtual)" if obj.is_virtual else ""
            print(f"  {printable(name)}: shape {obj.shape}, dtype {obj.dtype}{virtual}")
            continue
        if shown < limit:
            print(f"  {printable(name)}{target}")
            obj.visititems(_print_dataset)
        shown += 1
    if shown > limit:
        print(f"  ... and {shown - limit} more calls (--limit to show more)")
    return missing_files



# ------------------------------------------------------------------ status --watch
EXIT_STILL_RUNNING, EXIT_INTERRUPTED = 3, 130
_FLOCK = "hhqqixxxx"  # struct flock (Linux): type, whence, start, len, pid


def lock_holder_pid(folder: str) -> Optional[int]:
    """PID of the process that holds the run's lock in ``folder`` now, else None.

    Asks with F_GETLK, which takes no lock (a run that starts meanwhile is not
    disturbed) and needs only read access to the lock file."""
    try:
        fd = os.open(RunState(folder).lock_file, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        query = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        answer = struct.unpack(_FLOCK, fcntl.fcntl(fd, fcntl.F_GETLK, query))
    except OSError:  # no F_GETLK here: the probe that takes the lock for a moment
        return -1 if RunState(folder).holder() else None
    finally:
        os.close(fd)
    return None if answer[0] == fcntl.F_UNLCK else answer[4]


class _Counter:
    """Calls done (journal) and failed (failure records) of a run, read cheaply: the
    journal is read on from where the last look ended."""

    def __init__(self, folder: str):
        self.state = RunState(folder)
        self.done: set = set()
        self.offset = 0
        self.inode = None

    def read(self) -> tuple[int, int]:
        try:
            with open(self.state.done_file, "rb") as fh:
                st = os.fstat(fh.fileno())
                if st.st_ino != self.inode or st.st_size < self.offset:  # rewritten
                    self.inode, self.offset, self.done = st.st_ino, 0, set()
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            data = b""
        end = data.rfind(b"\n") + 1  # a torn last line is read next time
        self.offset += end
        for line in data[:end].split(b"\n"):
            head = line.split(b" ", 1)[0]
            if head.isdigit():
                self.done.add(int(head))
        try:
            names = os.listdir(self.state.failures_dir)
        except OSError:
            names = []
        failed = {int(n[5:-5]) for n in names
                  if n.startswith("call_") and n.endswith(".json") and n[5:-5].isdigit()}
        return len(self.done), len(failed - self.done)


def _slurm_jobs(folder: str) -> list[str]:
    """Ids of the SLURM jobs that ran the map (their output logs in ``*_slurm/``)."""
    logs = glob.glob(os.path.join(glob.escape(folder), "*_slurm", "slurm-*.out"))
    return sorted(os.path.basename(p)[6:-4] for p in logs)


def watch(folder: str, interval: float, timeout: Optional[float]) -> int:
    """Follow the live run in ``folder`` until it ends; then its full status."""
    folder, run, record = _open_records(folder)
    holder = lock_holder_pid(folder)
    if holder is None:
        print(f"{folder}: no run is using this folder now; its status:")
        return _final_status(folder)
    on_tty = sys.stdout.isatty()
    try:
        jobs = _slurm_jobs(folder)
        where = f", SLURM job {', '.join(jobs)}" if jobs else ""
        print(f"watching {folder}: {printable(record.get('function'))}, {run.n_calls} "
              f"calls ({printable(run.mode)}), run by pid {holder} on "
              f"{printable(record.get('host', '?'))}{where}; Ctrl-C stops watching "
              "(not the run)", flush=True)
        ended = _follow(folder, run.n_calls, interval, timeout, on_tty)
    except KeyboardInterrupt:
        print(f"{chr(10) if on_tty else ''}stopped watching (the run goes on)")
        return EXIT_INTERRUPTED
    if not ended:
        print(f"{chr(10) if on_tty else ''}still running after {timeout:g} s "
              "(stopped watching)", flush=True)
        return EXIT_STILL_RUNNING
    print(("\n" if on_tty else "") + "the run has ended; its status:", flush=True)
    return _final_status(folder)


def _follow(folder: str, n_calls: int, interval: float, timeout: Optional[float],
            on_tty: bool) -> bool:
    """Print the counts whenever they change until the run ends (True) or
    ``timeout`` seconds have passed (False)."""
    counter = _Counter(folder)
    start, shown, first = time.monotonic(), None, counter.read()
    while True:
        live = lock_holder_pid(folder) is not None  # before the counts: none is lost
        counts = counter.read()
        if counts != shown:
            shown = counts
            line = _watch_line(counts, first, n_calls, time.monotonic() - start)
            print(("\r" + line) if on_tty else line, end="" if on_tty else "\n",
                  flush=True)
        if not live:
            return True
        if timeout is not None and time.monotonic() - start >= timeout:
            return False
        time.sleep(interval)


def _watch_line(counts: tuple, first: tuple, n_calls: int, elapsed: float) -> str:
    done, failed = counts
    new = done + failed - sum(first)
    rate = new / elapsed if elapsed > 0 else 0.0
    left = n_calls - done - failed
    speed = f", {rate:.1f} calls/s" if rate > 0 else ""
    eta = f", about {left / rate:.0f} s left" if rate > 0 and left else ""
    return f"  {done}/{n_calls} done, {failed} failed, {left} to go{speed}{eta}"


def _final_status(folder: str) -> int:
    status = run_status(folder)
    _print_status(status)
    incomplete = status["failed"] or status["missing"] or status["damaged"]
    return EXIT_INCOMPLETE if incomplete else EXIT_OK


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, not {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="acme", description="Inspect the output folder of an acme ParallelMap run.",
        epilog="Exit codes: 0 done, 1 failed, missing or damaged calls, 2 usage error, "
               "not an acme output folder, or damaged records.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    status = sub.add_parser("status", help="done / failed / missing calls of a run")
    status.add_argument("folder", help="the run's output folder")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--watch", action="store_true",
                        help="follow a live run (local, MPI or SLURM) until it ends")
    status.add_argument("--interval", type=_positive, default=1.0,
                        help="seconds between two looks with --watch (default 1)")
    status.add_argument("--timeout", type=_positive, default=None,
                        help="stop watching after this many seconds (exit code 3)")
    status.set_defaults(handler=cmd_status)
    errors = sub.add_parser("errors", help="full tracebacks of the failed calls")
    errors.add_argument("folder", help="the run's output folder")
    errors.set_defaults(handler=cmd_errors)
    show = sub.add_parser("show", help="datasets, shapes and dtypes of the container")
    show.add_argument("folder", help="the run's output folder (or its container file)")
    show.add_argument("--limit", type=int, default=10,
                      help="show at most this many calls' groups (default 10)")
    show.add_argument("--plot", action="store_true",
                      help="also draw the calls' durations, memory and failures over "
                           "time into a PNG (needs matplotlib)")
    show.add_argument("--plot-file", metavar="PNG", default=None,
                      help="where --plot writes (default: ./<folder name>_calls.png)")
    show.set_defaults(handler=cmd_show)
    return parser


def main(argv: Optional[list] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.handler(args)
    except BrokenPipeError:  # e.g. `acme show DIR | head`
        sys.stderr.close()
        return EXIT_OK
    except (NotARun, StateError) as exc:  # StateError: damaged records in .acme
        print(f"acme {args.command}: {printable(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # e.g. a record that cannot be read (permissions)
        print(f"acme {args.command}: cannot read {printable(exc.filename or args.folder)}"
              f": {printable(exc.strerror or exc)}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
