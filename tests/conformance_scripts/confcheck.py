"""The model and the checkers of the conformance and fault suites.

* the *model*: what each call of a map description receives by esi-acme's documented
  argument rules (computed here, independently of acme's own input parsing), and what
  it returns or raises when called directly -- the reference;
* checkers that compare what a run produced (its return value, its files read with
  plain h5py/pickle, ``acme.load_call``, ``acme.load_stacked`` and ``acme status``) with
  that reference and return a list of problems (empty when everything matches).
"""
from __future__ import annotations

import inspect
import pickle
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np

from confmodel import FUNCTIONS
from confrun import build, result_dtype_of, result_shape_of


# ================================================================== the model
def split_arguments(desc: dict) -> tuple[dict, dict]:
    """``(given, varying)``: every argument given (name -> (value, by keyword)) and
    those split into calls by the documented rules (name -> per-call values): a
    list/tuple or a (squeezed) 1-D array is split, except that a keyword's list/tuple
    is not where the function's default is a list/tuple of that length, and an
    ndarray keyword not where the default is an ndarray."""
    sig = inspect.signature(FUNCTIONS[desc["func"]])
    names = list(sig.parameters)
    given = {name: (build(a), False) for name, a in zip(names, desc["args"])}
    given.update({name: (build(a), True) for name, a in desc["kwargs"].items()})
    varying = {}
    for name, (value, keyword) in given.items():
        default = sig.parameters[name].default
        if isinstance(value, (list, tuple)):
            if not (keyword and isinstance(default, (list, tuple))
                    and len(default) == len(value)):
                varying[name] = list(value)
        elif isinstance(value, np.ndarray) and not (keyword and isinstance(default, np.ndarray)):
            squeezed = value.squeeze()
            if squeezed.ndim == 1:
                varying[name] = [squeezed[i] for i in range(squeezed.size)]
    return given, varying


def model_calls(desc: dict) -> list[dict]:
    """The keyword arguments of every call by the documented rules (see
    :func:`split_arguments`); a ``taskID`` parameter gets the call index."""
    given, varying = split_arguments(desc)
    names = list(inspect.signature(FUNCTIONS[desc["func"]]).parameters)
    lengths = {len(v) for v in varying.values()}
    if desc["n_inputs"] == "auto":
        assert len(lengths) == 1, f"the description is ambiguous: {lengths}"
        n = lengths.pop()
    else:
        n = desc["n_inputs"]
        assert lengths <= {n}, f"the description is inconsistent: {lengths}, n={n}"
    calls = []
    for i in range(n):
        kwargs = {name: varying[name][i] if name in varying else value
                  for name, (value, _) in given.items()}
        if "taskID" in names and "taskID" not in given:
            kwargs["taskID"] = i
        calls.append(kwargs)
    return calls


def reference(desc: dict) -> list[tuple]:
    """Every call made directly here: ``("ok", value)`` or ``("raise", type name)``."""
    func = FUNCTIONS[desc["func"]]
    out = []
    for kwargs in model_calls(desc):
        try:
            out.append(("ok", func(**kwargs)))
        except Exception as exc:
            out.append(("raise", type(exc).__name__))
    return out


def hdf5_storable(value: Any) -> bool:
    """Whether acme stores this return value in HDF5 (else: pickled fallback)."""
    values = list(value) if isinstance(value, tuple) else [value]
    return all(v is not None and not isinstance(v, dict) for v in values)


def stored_arrays(value: Any, shaped: bool = False) -> list:
    """What result_0, result_1, ... hold for a return value, by esi-acme 2026.6.2's
    rule (results/result_handler.py): without result_shape, values that are all
    numbers (``numbers.Number``) or strings are one dataset (a lone scalar: shape
    (1,)); otherwise, and always with result_shape, one dataset per value, a scalar
    0-d in its own dtype."""
    import numbers
    values = list(value) if isinstance(value, tuple) else [value]
    if not shaped and all(isinstance(v, (numbers.Number, str)) for v in values):
        return [np.asarray(values)]
    # (h5py reads a 0-d dataset as a numpy scalar)
    return [np.asarray(v)[()] if np.ndim(v) == 0 else np.asarray(v) for v in values]


def pickled_values(held: Any) -> list:
    """What load_call gives for a pickled call: the list of its values."""
    return list(held) if isinstance(held, (list, tuple)) else [held]


# ================================================================== comparison
def difference(got: Any, want: Any, where: str = "value") -> Optional[str]:
    """None if ``got`` is ``want`` (same types, dtypes, shapes and values), else
    what differs."""
    if isinstance(want, np.ndarray) or isinstance(got, np.ndarray):
        if not (isinstance(want, np.ndarray) and isinstance(got, np.ndarray)):
            return f"{where}: {type(got).__name__} {got!r} instead of {type(want).__name__} {want!r}"
        return array_difference(got, want, where)
    if type(got) is not type(want):
        return f"{where}: {type(got).__name__} {got!r} instead of {type(want).__name__} {want!r}"
    if isinstance(want, (list, tuple)):
        if len(got) != len(want):
            return f"{where}: length {len(got)} instead of {len(want)}: {got!r} vs {want!r}"
        for k, (g, w) in enumerate(zip(got, want)):
            found = difference(g, w, f"{where}[{k}]")
            if found:
                return found
        return None
    if isinstance(want, dict):
        if sorted(got) != sorted(want):
            return f"{where}: keys {sorted(got)} instead of {sorted(want)}"
        for key in want:
            found = difference(got[key], want[key], f"{where}[{key!r}]")
            if found:
                return found
        return None
    if isinstance(want, np.generic):
        return None if got.dtype == want.dtype and (got == want or (got != got and want != want)) \
            else f"{where}: {got!r} ({got.dtype}) instead of {want!r} ({want.dtype})"
    return None if got == want else f"{where}: {got!r} instead of {want!r}"


def array_difference(got: np.ndarray, want: np.ndarray, where: str) -> Optional[str]:
    if got.shape != want.shape:
        return f"{where}: shape {got.shape} instead of {want.shape}"
    if got.dtype != want.dtype:
        return f"{where}: dtype {got.dtype} instead of {want.dtype}"
    if not np.array_equal(got, want, equal_nan=got.dtype.kind in "fc"):
        return f"{where}: values {got.ravel()[:8]!r} instead of {want.ravel()[:8]!r}"
    return None


def expected_stacked(desc: dict, values: list, length: Optional[int] = None) -> np.ndarray:
    """The documented stacked first return values (result_shape, result_dtype); an
    np.inf axis has the longest value's length (or ``length``), shorter values padded
    with NaN (floats) or 0."""
    shape = result_shape_of(desc)
    dtype = np.dtype(result_dtype_of(desc))
    axis = shape.index(None)
    firsts = [np.asarray(v[0] if isinstance(v, tuple) else v).astype(dtype) for v in values]
    if np.inf in shape:
        longest = length if length is not None else max(len(f) for f in firsts)
        fill = np.nan if dtype.kind in "fc" else 0
        firsts = [np.concatenate([f, np.full(longest - len(f), fill, dtype=dtype)])
                  for f in firsts]
    return np.moveaxis(np.stack(firsts), 0, axis)


def inf_length(desc: dict, ref: list) -> Optional[int]:
    """The length of an np.inf axis: the longest first value of the calls with a result."""
    if np.inf not in result_shape_of(desc):
        return None
    lengths = [len(np.asarray(r[1][0] if isinstance(r[1], tuple) else r[1]))
               for r in ref if r is not None and r[0] == "ok"]
    return max(lengths, default=0)


def expected_in_memory_shape(desc: dict, values: list) -> Any:
    """esi-acme's in-memory result with result_shape: the stacked array alone, or a
    list [stacked array, the other return values of call 0, of call 1, ...] when calls
    return several values (esi-acme's ``_collect_in_memory``)."""
    stacked = expected_stacked(desc, values)
    rest = [r for v in values if isinstance(v, tuple) for r in v[1:]]
    return [stacked] + rest if rest else stacked


# ================================================================== checking a run
def check_outcome(desc: dict, mode: str, out: dict, ref: list) -> list[str]:
    """Everything a run in ``mode`` produced, against the reference ``ref``.

    ``out`` is what ``confrun.run_map`` returned (possibly in another process). The
    files are read here with plain h5py/pickle and with acme's readers."""
    if out["status"] == "exception":
        return [f"raised {out['type']}: {out['message']}\n{out.get('traceback', '')}"]
    problems: list[str] = []
    failed = [i for i, r in enumerate(ref) if r[0] == "raise"]
    values = [r[1] if r[0] == "ok" else None for r in ref]
    if failed:
        if out["status"] != "failed":
            problems.append(f"calls {failed} raise, but compute() returned without a "
                            "ParallelMapError")
            results = out.get("value")
        else:
            if out["failed"] != failed:
                problems.append(f"ParallelMapError.failed is {out['failed']}, the "
                                f"raising calls are {failed}")
            if out["cause"] != "ValueError":
                problems.append(f"the error's cause is {out['cause']}, not ValueError")
            results = out["results"]
    else:
        if out["status"] != "ok":
            problems.append(f"no call raises, but compute() raised ParallelMapError "
                            f"(failed {out['failed']}): {out['message'][:2000]}")
        results = out.get("value") if out["status"] == "ok" else out["results"]
    if mode.startswith("memory"):
        problems += _check_memory(desc, mode, out, results, values, failed)
    else:
        problems += _check_returned_files(desc, mode, out, results, failed)
        problems += check_disk(desc, mode, out["output_dir"], ref)
    return problems


def _check_memory(desc, mode, out, results, values, failed) -> list[str]:
    n = len(values)
    if out["status"] == "ok" and mode == "memory_shape":
        found = difference(results, expected_in_memory_shape(desc, values), "compute()")
        return [found] if found else []
    if not isinstance(results, list) or len(results) != n:
        return [f"the results are not a list of {n} values: {results!r:.300}"]
    problems = []
    for i in range(n):
        if i in failed:
            if results[i] is not None:
                problems.append(f"call {i} failed, but its result is {results[i]!r:.200}")
            continue
        if mode == "memory":
            found = difference(results[i], values[i], f"call {i}")
        elif results[i] is None:
            found = f"call {i} returns a value, but its result is None"
        else:  # the error's per-call results: compare the first value as stored
            first = results[i][0] if isinstance(results[i], tuple) else results[i]
            want = expected_stacked(desc, [values[i]])
            got = np.asarray(first)
            found = None if got.size == want.size and np.array_equal(
                got.astype(want.dtype).ravel(), want.ravel()) else \
                f"call {i}: first value {got!r:.200} instead of {want!r:.200}"
        if found:
            problems.append(found)
    return problems


def layout_paths(desc: dict, output_dir: str) -> dict:
    stem = desc["func"]
    out = Path(output_dir)
    return {"container": out / f"{stem}.h5", "payload": out / f"{stem}_payload",
            "h5": lambda i: out / f"{stem}_payload" / f"{stem}_{i}.h5",
            "fallback": lambda i: out / f"{stem}_{i}.pickle",  # esi-acme's place
            "pickle": lambda i: out / f"{stem}_{i}.pickle"}


def _check_returned_files(desc, mode, out, results, failed) -> list[str]:
    paths = layout_paths(desc, out["output_dir"])
    n = len(model_calls(desc))
    if out["status"] == "ok" and mode.startswith("single"):
        return [] if results == [str(paths["container"])] else \
            [f"single_file: compute() returned {results!r}, not [{paths['container']}]"]
    if not isinstance(results, list) or len(results) != n:
        return [f"compute() did not return {n} result files: {results!r:.300}"]
    problems = []
    for i, got in enumerate(results):
        if i in failed:
            if got is not None:
                problems.append(f"call {i} failed, but its result is {got!r}")
            continue
        if mode.startswith("single"):
            continue
        want = {str(paths["pickle"](i))} if mode == "pickle" else \
            {str(paths["h5"](i)), str(paths["fallback"](i))}
        if got not in want:
            problems.append(f"call {i}: result file {got!r}, expected one of {sorted(want)}")
    return problems


def check_disk(desc: dict, mode: str, output_dir: str, ref: list) -> list[str]:
    """The output folder of a finished run (every call ran once) against ``ref``:
    plain h5py/pickle, then load_call, load_stacked and `acme status`."""
    problems = []
    if mode == "pickle":
        problems += _check_pickles(desc, output_dir, ref)
    else:
        problems += _check_container(desc, mode, output_dir, ref)
    problems += check_readers(desc, mode, output_dir, ref)
    problems += check_status(output_dir, ref)
    return problems


def _check_pickles(desc, output_dir, ref) -> list[str]:
    paths = layout_paths(desc, output_dir)
    problems = []
    for i, (kind, value) in enumerate(ref):
        path = paths["pickle"](i)
        if kind == "raise":
            if path.exists():
                problems.append(f"call {i} failed, but {path.name} exists")
            continue
        try:
            with open(path, "rb") as fh:
                got = pickle.load(fh)
        except Exception as exc:
            problems.append(f"call {i}: cannot read {path}: {exc!r}")
            continue
        found = difference(got, value, f"{path.name}")
        if found:
            problems.append(found)
    tops = sorted(p.name for p in Path(output_dir).glob("*.h5"))
    if tops:
        problems.append(f"write_pickle made HDF5 files {tops}")
    return problems


def _check_container(desc, mode, output_dir, ref) -> list[str]:
    """esi-acme's container: without result_shape ``comp_i`` for every call (an
    external link to the payload, dangling for a call without one; a group in
    single_file, empty for a failed call); with result_shape ``comp_i`` only when the
    calls returned several values, holding ``result_k`` (k >= 1) of each call."""
    import h5py
    paths = layout_paths(desc, output_dir)
    shaped = mode.endswith("_shape")
    single = mode.startswith("single")
    problems = []
    ok_h5 = [i for i, r in enumerate(ref) if r[0] == "ok" and hdf5_storable(r[1])]
    if not paths["container"].is_file():
        if ok_h5 or single:
            return [f"no container {paths['container']}"]
        return []
    dtype = np.dtype(result_dtype_of(desc)) if shaped else None
    n_others = max((len(stored_arrays(ref[i][1], True)) - 1 for i in ok_h5), default=0)
    with h5py.File(paths["container"], "r") as h5f:
        missing = {int(i) for i in h5f.attrs.get("acme_missing_calls", [])}
        for i, (kind, value) in enumerate(ref):
            problems += _check_comp(h5f, paths, i, kind, value, missing, shaped, single,
                                    n_others, desc)
        if shaped:
            problems += _check_stacked_dataset(desc, h5f, ref, single, dtype)
        elif "result_0" in h5f:
            problems.append("the container has a result_0 dataset without result_shape")
    return problems


def _check_comp(h5f, paths, i, kind, value, missing, shaped, single, n_others,
                desc) -> list[str]:
    name = f"comp_{i}"
    has_link = h5f.get(name, getlink=True) is not None
    if kind == "raise" or not hdf5_storable(value):
        problems = []
        if kind == "raise" and i not in missing:
            problems.append(f"failed call {i} is not in acme_missing_calls {sorted(missing)}")
        if kind == "raise" and (paths["h5"](i).exists() or paths["fallback"](i).exists()):
            problems.append(f"failed call {i} has a result file")
        if kind == "ok" and not paths["fallback"](i).is_file():
            problems.append(f"call {i}: no pickled fallback {paths['fallback'](i)}")
        elif kind == "ok":
            with open(paths["fallback"](i), "rb") as fh:  # esi-acme's: the list of values
                found = difference(pickle.load(fh), pickled_values(value),
                                   f"fallback pickle {i}")
            if found:
                problems.append(found)
        if single and not shaped:  # an empty group, as esi-acme leaves it
            if not has_link or len(h5f[name]) != 0:
                problems.append(f"call {i} ({kind}): {name} is not an empty group")
        elif single:
            if has_link:
                problems.append(f"call {i} ({kind}) has a {name} in the single file")
        elif shaped and not n_others:
            if has_link:
                problems.append(f"call {i} ({kind}) has a {name}, but no call returned "
                                "more than one value")
        else:  # a dangling link, so that index-based readers fail loudly
            target = name if not shaped else f"{name}/result_1"
            if h5f.get(target, getlink=True) is None:
                problems.append(f"call {i} ({kind}) has no {target} link")
            else:
                try:
                    h5f[target]
                    problems.append(f"call {i} ({kind}): {target} is not dangling")
                except KeyError:
                    pass  # (``in`` is True for a dangling link: it asks for the link)
        return problems
    problems = []
    if i in missing:
        problems.append(f"call {i} has a result but is in acme_missing_calls")
    if not single and not paths["h5"](i).is_file():
        problems.append(f"call {i}: no payload file {paths['h5'](i)}")
    want = stored_arrays(value, shaped)
    first = 1 if shaped else 0
    if shaped:
        want = want[1:]
        if not want and (single or not n_others):
            if has_link:
                problems.append(f"call {i}: {name} in the container, but it has one value")
            return problems
    try:
        group = h5f[name]
    except KeyError as exc:
        return problems + [f"call {i}: {name} cannot be opened: {exc}"]
    keys = sorted(k for k in group if k.startswith("result_"))
    expect_keys = sorted(f"result_{k}" for k in range(first, first + len(want)))
    if keys != expect_keys:
        return problems + [f"call {i}: {name} holds {keys}, expected {expect_keys}"]
    if shaped and not single:  # the payload's result_0: the value in its own dtype
        import h5py
        with h5py.File(paths["h5"](i), "r") as payload:
            found = difference(payload["result_0"][()],
                               stored_arrays(value, True)[0], f"payload {i} result_0")
        if found:
            problems.append(found)
    for k, arr in enumerate(want, start=first):
        found = difference(group[f"result_{k}"][()], arr, f"{name}/result_{k}")
        if found:
            problems.append(found)
    return problems


def _check_stacked_dataset(desc, h5f, ref, single, dtype) -> list[str]:
    if "result_0" not in h5f:
        return ["no stacked result_0 in the container"]
    dset = h5f["result_0"]
    if dset.is_virtual == single:
        return [f"result_0 is {'virtual' if dset.is_virtual else 'not virtual'}"]
    ok = [i for i, r in enumerate(ref) if r[0] == "ok"]
    shape = result_shape_of(desc)
    axis = shape.index(None)
    longest = inf_length(desc, ref)
    full = tuple(len(ref) if e is None else (longest if e == np.inf else e) for e in shape)
    if dset.shape != full or dset.dtype != dtype:
        return [f"result_0 has shape {dset.shape} dtype {dset.dtype}, expected {full} {dtype}"]
    data = np.moveaxis(dset[()], axis, 0)
    want = np.moveaxis(expected_stacked(desc, [ref[i][1] for i in ok]), axis, 0) if ok else None
    problems = []
    for row, i in enumerate(ok):
        found = difference(data[i], want[row], f"result_0 row {i}")
        if found:
            problems.append(found)
    return problems


def check_readers(desc: dict, mode: str, output_dir: str, ref: list,
                  calls: Optional[list] = None, stacked: bool = True) -> list[str]:
    """``acme.load_call`` for ``calls`` (default: every call) and, with result_shape
    (and ``stacked``), ``acme.load_stacked``: the reference values, or MissingResultError for a call
    without a result -- never anything else."""
    import acme
    problems = []
    shaped = mode.endswith("_shape")
    for i in (range(len(ref)) if calls is None else calls):
        kind, value = ref[i] if ref[i] is not None else ("missing", None)
        try:
            got = acme.load_call(output_dir, i)
        except acme.MissingResultError as exc:
            if kind == "ok":
                problems.append(f"load_call({i}) raised MissingResultError for a call with "
                                f"a result: {exc}")
            elif exc.calls != [i]:
                problems.append(f"load_call({i}): MissingResultError.calls is {exc.calls}")
            continue
        except Exception as exc:
            problems.append(f"load_call({i}) raised {type(exc).__name__} (not "
                            f"MissingResultError) for a call {kind}: {exc}")
            continue
        if kind != "ok":
            problems.append(f"load_call({i}) returned {got!r:.300} for a call without a "
                            f"result ({kind})")
            continue
        if mode == "pickle" or not hdf5_storable(value):
            want = pickled_values(value)  # load_call: always the list of values
        else:
            want = stored_arrays(value, shaped)
            if shaped and mode.startswith("single"):  # a row of the stacked dataset
                want[0] = expected_stacked(desc, [value], inf_length(desc, ref)).squeeze(
                    axis=result_shape_of(desc).index(None))
        if shaped and mode.startswith("single") and isinstance(got, list) and got:
            # the row of the stacked dataset: h5py gives a numpy scalar for a 0-d row
            got = [np.asarray(got[0])] + got[1:]
        found = difference(got, want, f"load_call({i})")
        if found:
            problems.append(found)
    if shaped and stacked:
        problems += _check_load_stacked(desc, output_dir, ref)
    return problems


def _check_load_stacked(desc, output_dir, ref) -> list[str]:
    import acme
    without = [i for i, r in enumerate(ref) if r is None or r[0] != "ok"]
    try:
        got = acme.load_stacked(output_dir)
    except acme.MissingResultError as exc:
        if not without:
            return [f"load_stacked raised MissingResultError {exc.calls} though every "
                    f"call has a result: {exc}"]
        if sorted(exc.calls) != without:
            return [f"load_stacked: MissingResultError.calls {exc.calls}, the calls "
                    f"without a result are {without}"]
        return []
    except Exception as exc:
        return [f"load_stacked raised {type(exc).__name__}: {exc}"]
    if without:
        return [f"load_stacked returned an array although calls {without} have no result"]
    found = difference(got, expected_stacked(desc, [r[1] for r in ref]), "load_stacked")
    return [found] if found else []


def check_status(output_dir: str, ref: list) -> list[str]:
    """``acme status --json``: done/failed/missing as the reference says, exit code
    0 only when every call is done (run as a real command)."""
    import json
    import subprocess
    proc = subprocess.run([sys.executable, "-m", "acme", "status", "--json", output_dir],
                          capture_output=True, text=True, timeout=60)
    want_done = [i for i, r in enumerate(ref) if r is not None and r[0] == "ok"]
    want_failed = [i for i, r in enumerate(ref) if r is not None and r[0] == "raise"]
    want_missing = [i for i, r in enumerate(ref) if r is None]
    try:
        status = json.loads(proc.stdout)
    except ValueError:
        return [f"acme status --json exited {proc.returncode}: {proc.stdout[-500:]} "
                f"{proc.stderr[-1500:]}"]
    problems = []
    got = (status["done"], sorted(int(i) for i in status["failed"]), status["missing"])
    if got != (want_done, want_failed, want_missing):
        problems.append(f"acme status: done/failed/missing {got}, expected "
                        f"{(want_done, want_failed, want_missing)}")
    want_code = 0 if len(want_done) == len(ref) else 1
    if proc.returncode != want_code:
        problems.append(f"acme status exited {proc.returncode}, expected {want_code}")
    return problems
