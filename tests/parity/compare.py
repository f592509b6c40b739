"""Compare what run_corpus.py recorded under acme and under esi-acme, path by path.

A record is flattened into ``{(path, field): value}``: ``path`` is ``<return>`` for what
``compute()`` gave (or raised), a file's path below the case folder, or
``file.h5:/h5/path`` for an object inside an HDF5 file; ``field`` is one of the fields
run_corpus.py wrote (``dtype``, ``shape``, ``maxshape``, ``values``, ``fillvalue``,
``virtual``, ``sources``, ``kind``, ``file``, ``target``, ``dangling``, ...). Where a path
exists on one side only, the difference is that path's ``exists`` field, and its other
fields are not listed again.
"""
from __future__ import annotations

import fnmatch
import re
import json
from dataclasses import dataclass
from typing import Any, Iterable

RETURN = "<return>"
#: Exception messages are recorded for the failure message, not compared: ours say more.
NOT_COMPARED = {"message", "traceback", "raised_mro"}


@dataclass(frozen=True)
class Difference:
    """One field of one path of one case that differs between the packages."""

    case: str
    path: str
    field: str
    ours: Any
    theirs: Any

    def __str__(self) -> str:
        return (f"{self.case} | {self.path} | {self.field}:\n"
                f"    acme:     {_short(self.ours)}\n    esi-acme: {_short(self.theirs)}")


def _short(value: Any, limit: int = 400) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + " ..."


def load(path: str) -> dict[str, dict]:
    """``{case: record}`` from a run_corpus.py output file."""
    records = {}
    with open(path) as handle:
        for line in handle:
            if line.strip():
                record = json.loads(line)
                records[record["case"]] = record
    return records


def flatten(record: dict) -> dict[tuple[str, str], Any]:
    """``{(path, field): value}`` for one case's record."""
    flat: dict[tuple[str, str], Any] = {}
    raised = record.get("raised") or {}
    flat[(RETURN, "raised")] = raised.get("type")
    flat[(RETURN, "raised_mro")] = raised.get("mro")
    if "auto_folder_in" in record:
        flat[(RETURN, "auto_folder_in")] = record["auto_folder_in"]
    if not raised:
        flat[(RETURN, "value")] = record.get("returned")
        flat[(RETURN, "results_container")] = record.get("container")
    for name, fields in record.get("files", {}).items():
        flat[(name, "exists")] = True
        objects = fields.get("objects")
        for key, value in fields.items():
            if key != "objects":
                flat[(name, key)] = value
        for h5path, obj in (objects or {}).items():
            where = f"{name}:{h5path}"
            flat[(where, "exists")] = True
            for key, value in obj.items():
                flat[(where, key)] = value
    return flat


def _paths(flat: dict) -> set[str]:
    return {path for path, field in flat if field == "exists"}


def differences(case: str, ours: dict, theirs: dict) -> list[Difference]:
    """Every differing field of one case (ours and theirs are run_corpus records)."""
    a, b = flatten(ours), flatten(theirs)
    only = (_paths(a) ^ _paths(b))
    found = []
    for key in sorted(set(a) | set(b)):
        path, field = key
        if field in NOT_COMPARED:
            continue
        if path in only:
            if field == "exists":
                found.append(Difference(case, path, "exists", key in a, key in b))
            continue
        if _parent_only(path, only):
            continue
        if key == (RETURN, "raised") and b.get(key) in (a.get((RETURN, "raised_mro")) or ()):
            continue  # ours raises a subclass of esi-acme's exception: caught the same
        if a.get(key) != b.get(key):
            found.append(Difference(case, path, field, a.get(key), b.get(key)))
    return found


def _parent_only(path: str, only: set[str]) -> bool:
    """True for an object inside a file that exists on one side only."""
    return ":" in path and path.split(":", 1)[0] in only


def matches(entry: dict, diff: Difference) -> bool:
    """Whether a known_differences entry (case/path/field, shell patterns) covers diff."""
    return (fnmatch.fnmatchcase(diff.case, entry["case"])
            and fnmatch.fnmatchcase(diff.path, entry["path"])
            and fnmatch.fnmatchcase(diff.field, entry["field"]))


def split_known(diffs: Iterable[Difference], known: list[dict]
                ) -> tuple[list[Difference], list[dict]]:
    """(differences no entry explains, entries that explain no difference)."""
    diffs = list(diffs)
    unexplained = [d for d in diffs if not any(matches(e, d) for e in known)]
    stale = [e for e in known if not any(matches(e, d) for d in diffs)]
    return unexplained, stale


def counts(records: dict[str, dict]) -> dict[str, int]:
    """How much one side's records hold: cases, files, HDF5 objects, datasets."""
    files = datasets = objects = 0
    for record in records.values():
        for fields in record.get("files", {}).values():
            if fields.get("kind") == "dir":
                continue
            files += 1
            for obj in (fields.get("objects") or {}).values():
                objects += 1
                datasets += obj.get("kind") == "dataset"
    return {"cases": len(records), "files": files, "hdf5_objects": objects,
            "datasets": datasets}


def compared(ours: dict[str, dict], theirs: dict[str, dict]) -> dict[str, int]:
    """How much was compared field by field: files and datasets present on both sides."""
    files = datasets = objects = 0
    for case in set(ours) & set(theirs):
        a, b = flatten(ours[case]), flatten(theirs[case])
        for path in _paths(a) & _paths(b):
            if ":" in path:
                objects += 1
                datasets += a.get((path, "kind")) == "dataset"
            elif a.get((path, "kind")) != "dir":
                files += 1
    return {"files": files, "hdf5_objects": objects, "datasets": datasets}


_INDEX = re.compile(r"(?<=_)\d+(?=\b|\.|_|/|:)")


def summarize(diffs: Iterable[Difference]) -> list[tuple[str, str, str, int, Any, Any]]:
    """Differences grouped by case, field and path with call indices written ``{i}``:
    ``(case, path pattern, field, count, first acme value, first esi-acme value)``."""
    groups: dict[tuple[str, str, str], list[Difference]] = {}
    for diff in diffs:
        key = (diff.case, _INDEX.sub("{i}", diff.path), diff.field)
        groups.setdefault(key, []).append(diff)
    return [(case, path, field, len(group), group[0].ours, group[0].theirs)
            for (case, path, field), group in groups.items()]


def markdown(diffs: Iterable[Difference]) -> str:
    """A table of the grouped differences (for /tmp/briefs14/parity_diffs.md)."""
    lines = ["| case | path | field | n | acme | esi-acme |", "|---|---|---|---|---|---|"]
    for case, path, field, n, ours, theirs in summarize(diffs):
        cell = lambda v: _short(v, 160).replace("|", "\\|")  # noqa: E731
        lines.append(f"| {case} | `{path}` | {field} | {n} | `{cell(ours)}` | `{cell(theirs)}` |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """``python compare.py OURS.jsonl ESI.jsonl``: the grouped differences as markdown."""
    ours, theirs = load(argv[0]), load(argv[1])
    diffs = [d for case in theirs for d in differences(case, ours.get(case, {}), theirs[case])]
    print(f"acme: {counts(ours)}\nesi-acme: {counts(theirs)}\n"
          f"{len(diffs)} differing fields in {len({d.case for d in diffs})} cases\n")
    print(markdown(diffs))
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main(sys.argv[1:]))
