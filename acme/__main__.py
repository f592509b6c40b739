"""Command line: inspect a run's output folder.

    python -m acme status DIR     done / failed / missing calls, each failure's first line
    python -m acme errors DIR     full tracebacks of the failed calls
    python -m acme show DIR       the container's datasets, shapes and dtypes

Exit codes: 0 all calls done (status) / no failures (errors) / nothing missing (show);
1 some calls failed or are missing; 2 bad usage or not an acme output folder.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional

from .layout import OutputLayout
from .state import RunState, completed_calls

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE = 0, 1, 2


class NotARun(Exception):
    pass


def _ranges(indices: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2, 5, 7-8"``."""
    parts, start, prev = [], None, None
    for i in sorted(indices):
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            parts.append(f"{start}-{prev}" if prev > start else str(start))
            start = prev = i
    if start is not None:
        parts.append(f"{start}-{prev}" if prev > start else str(start))
    return ", ".join(parts) or "none"


def run_status(folder: str) -> dict:
    """Done, failed and missing calls of the run in ``folder``."""
    folder = os.path.abspath(folder)
    if not os.path.isdir(folder):
        raise NotARun(f"no such folder: {folder}")
    state = RunState(folder)
    if not state.exists():
        raise NotARun(f"{folder} is not an acme output folder (no .acme/run.json); "
                      "was it written by esi-acme or with write_worker_results=False?")
    record = state.read()
    n_calls = int(record["n_calls"])
    stem = record.get("stem") or record["function"].rsplit(".", 1)[-1]
    layout = OutputLayout(folder, stem)
    mode = record.get("settings", {}).get("mode", "files")
    done = completed_calls(state, layout, mode, n_calls)
    failures = {i: f for i, f in state.failures().items() if i not in done}
    missing = sorted(set(range(n_calls)) - set(done) - set(failures))
    return {"folder": folder, "function": record["function"], "n_calls": n_calls,
            "mode": mode, "done": sorted(done), "failed": failures, "missing": missing,
            "started": record.get("started")}


def cmd_status(args) -> int:
    status = run_status(args.folder)
    n_done, n_failed = len(status["done"]), len(status["failed"])
    n_missing = len(status["missing"])
    if args.json:
        out = dict(status, failed={str(i): f["type"] + ": " + f["message"]
                                   for i, f in status["failed"].items()})
        print(json.dumps(out, indent=1))
    else:
        print(f"{status['folder']}: {status['function']}, {status['n_calls']} calls "
              f"({status['mode']}), started {status['started']}")
        print(f"  done:    {n_done}")
        print(f"  failed:  {n_failed}" + (f"  (calls {_ranges(list(status['failed']))})"
                                          if n_failed else ""))
        print(f"  missing: {n_missing}" + (f"  (calls {_ranges(status['missing'])})"
                                           if n_missing else ""))
        for index in sorted(status["failed"]):
            record = status["failed"][index]
            first = (record["message"].splitlines() or [""])[0]
            print(f"  call {index}: {record['type']}: {first}  [{record['host']}, "
                  f"pid {record['pid']}{', rank ' + str(record['rank']) if record.get('rank') is not None else ''}]")
        if n_failed or n_missing:
            print(f"  to run what is left: ParallelMap(..., output_dir={status['folder']!r}, "
                  "resume=True)")
    return EXIT_OK if not (n_failed or n_missing) else EXIT_INCOMPLETE


def cmd_errors(args) -> int:
    status = run_status(args.folder)
    if not status["failed"]:
        print(f"no failed calls in {status['folder']}")
        return EXIT_OK
    for index in sorted(status["failed"]):
        record = status["failed"][index]
        where = f"host {record['host']}, pid {record['pid']}"
        if record.get("rank") is not None:
            where = f"MPI rank {record['rank']}, " + where
        print(f"=== call {index} ({where}, after {record['duration']:.3f} s, "
              f"{record['time']}) ===")
        print(record["traceback"].rstrip() or f"{record['type']}: {record['message']}")
        print()
    return EXIT_INCOMPLETE


def _natural_key(name: str):
    """result_* first, then comp_0, comp_1, ..., comp_10 in numeric order."""
    head, _, tail = name.rpartition("_")
    return (not name.startswith("result"), head, int(tail) if tail.isdigit() else -1)


def _print_dataset(name: str, obj) -> None:
    if hasattr(obj, "shape"):
        print(f"      {name}: shape {obj.shape}, dtype {obj.dtype}")


def cmd_show(args) -> int:
    import h5py
    from .readers import find_container
    try:
        container = find_container(args.folder)
        h5f = h5py.File(container, "r")
    except (FileNotFoundError, OSError) as exc:
        raise NotARun(f"{args.folder} is not an acme output folder or container: "
                      f"{exc}") from None
    print(container)
    missing_files = 0
    with h5f:
        for key, value in h5f.attrs.items():
            if key.startswith("acme_") and key != "acme_missing_calls":
                print(f"  @{key} = {value}")
        missing = list(h5f.attrs.get("acme_missing_calls", []))
        if missing:
            print(f"  calls without a result: {_ranges([int(i) for i in missing])}")

        names = sorted(h5f.keys(), key=_natural_key)
        shown = 0
        for name in names:
            link = h5f.get(name, getlink=True)
            target = f" -> {link.filename}" if isinstance(link, h5py.ExternalLink) else ""
            try:
                obj = h5f[name]
            except KeyError:
                print(f"  {name}{target}: MISSING (the file is gone or unreadable)")
                missing_files += 1
                continue
            if isinstance(obj, h5py.Dataset):
                virtual = " (virtual)" if obj.is_virtual else ""
                print(f"  {name}: shape {obj.shape}, dtype {obj.dtype}{virtual}")
                continue
            if shown < args.limit:
                print(f"  {name}{target}")
                obj.visititems(_print_dataset)
            shown += 1
        if shown > args.limit:
            print(f"  ... and {shown - args.limit} more calls (--limit to show more)")
    return EXIT_INCOMPLETE if missing_files or missing else EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="acme", description="Inspect the output folder of an acme ParallelMap run.",
        epilog="Exit codes: 0 done, 1 failed or missing calls, 2 usage error.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    status = sub.add_parser("status", help="done / failed / missing calls of a run")
    status.add_argument("folder", help="the run's output folder")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=cmd_status)
    errors = sub.add_parser("errors", help="full tracebacks of the failed calls")
    errors.add_argument("folder", help="the run's output folder")
    errors.set_defaults(handler=cmd_errors)
    show = sub.add_parser("show", help="datasets, shapes and dtypes of the container")
    show.add_argument("folder", help="the run's output folder (or its container file)")
    show.add_argument("--limit", type=int, default=10,
                      help="show at most this many calls' groups (default 10)")
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
    except NotARun as exc:
        print(f"acme {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # e.g. `acme show DIR | head`
        sys.stderr.close()
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
