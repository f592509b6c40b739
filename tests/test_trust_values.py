"""Trust in values (issue 13): resume's fingerprint, result_dtype casts, in-memory
result_shape with several return values, values HDF5 cannot hold as they are, and
small input checks.

Resume tests are real runs in separate processes, each with its own PYTHONHASHSEED:
a first run in which some calls fail, then a resume with something changed (refused,
naming it, nothing touched), then the identical run (accepted; only the failed calls
run again).
"""
from __future__ import annotations

import json
import os
import re
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

import acme
from acme import ParallelMap, ParallelMapError

from conftest import run_script

pytestmark = pytest.mark.timeout(180)

N = 6

# ---------------------------------------------------------------- resume fingerprint
RESUME_SCRIPT = textwrap.dedent('''
    """One map of a variant of the function/arguments; version "b" changes one thing."""
    import functools, json, os, sys, threading, types
    import numpy as np
    from acme import ParallelMap, ParallelMapError

    out, flag, markers, variant, version, resume = sys.argv[1:7]
    B = version == "b"
    SCALE = 3.0 if (B and variant == "global") else 2.0

    def base(x, extra=0.0, offset=0.0):
        open(os.path.join(markers, f"{x}_{os.getpid()}_{os.urandom(4).hex()}"), "w").close()
        if os.path.exists(flag) and x % 2:
            raise RuntimeError("odd calls fail while the flag file exists")
        return np.array([x * SCALE + extra + offset, x])

    def make(k):
        def closure(x):
            return base(x, k)
        return closure

    class Adder:
        def __init__(self, offset, tags):
            self.offset, self.tags = offset, tags
        def __call__(self, x):
            return base(x, len(self.tags), self.offset)

    def with_tags(x, tags):
        return base(x, len(getattr(tags, "tags", tags)))

    def with_mask(x, m):
        return base(x, float(m.sum()))

    def with_lock(x, lock):
        return base(x)

    tags = {"alpha", "beta", "gamma", "delta", "epsilon"} | ({"zeta"} if B else set())
    xs = list(range(N_CALLS))
    args, backend = (xs,), "local"
    if variant == "lambda":
        func = (lambda x: base(x, 2.0)) if B else (lambda x: base(x, 1.0))
    elif variant == "closure":
        func = make(2.0 if B else 1.0)
    elif variant == "global":
        func = base
    elif variant == "partial":
        func = functools.partial(base, offset=2.0 if B else 1.0)
    elif variant == "callable":
        func = Adder(2.0 if B else 1.0, {"x", "y", "z"})
    elif variant == "set":
        func, args = with_tags, (xs, tags)
    elif variant == "set-in-object":  # pickled, a set's order depends on the hash seed
        func, args = with_tags, (xs, types.SimpleNamespace(tags=tags))
    elif variant == "masked":
        mask = [[0, 0, 1], [0, 0, 0]] if B else [[0, 1, 0], [0, 0, 0]]  # 2-D: not split
        func, args = with_mask, (xs, np.ma.masked_array([[1.0, 2.0, 4.0], [0, 0, 0]],
                                                        mask=mask))
    elif variant == "lock":
        func, args, backend = with_lock, (xs, threading.Lock()), "sequential"
    try:
        with ParallelMap(func, *args, output_dir=out, resume=resume == "1",
                         backend=backend, n_workers=2, verbose=False,
                         setup_interactive=False) as pmap:
            pmap.compute()
    except ParallelMapError as exc:
        print("FAILED")
    print("STATS " + json.dumps({"ran": pmap.stats["ran"], "resumed": pmap.stats["resumed"]}))
''').replace("N_CALLS", str(N))

#: what differs in version "b", and words the refusal must use for it
CHANGES = {
    "lambda": "the function",
    "closure": "the function",
    "global": "the function",
    "partial": "the function",
    "callable": "the function",
    "set": "positional argument 1 has changed",
    "set-in-object": "positional argument 1 has changed",
    "masked": "positional argument 1 has changed",
}


def _run(tmp_path, out, variant, version, resume, seed):
    script = tmp_path / "resume_variant.py"
    script.write_text(RESUME_SCRIPT)
    return run_script(script, timeout=90, args=[
        str(out), str(tmp_path / "flag"), str(tmp_path / "markers"), variant, version,
        "1" if resume else "0"], env={"PYTHONHASHSEED": str(seed)})


def _markers(tmp_path) -> list:
    return sorted(int(p.name.split("_")[0]) for p in (tmp_path / "markers").iterdir())


def _first_run(tmp_path, variant):
    """Odd calls fail; returns the output folder and its files' mtimes."""
    out = tmp_path / "out"
    (tmp_path / "markers").mkdir()
    (tmp_path / "flag").touch()
    first = _run(tmp_path, out, variant, "a", resume=False, seed=1)
    assert first.returncode == 0 and "FAILED" in first.stdout, str(first)
    assert _markers(tmp_path) == list(range(N)), str(first)
    os.remove(tmp_path / "flag")
    return out, {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


def _check_resumed(tmp_path, out, variant, ran_before):
    again = _run(tmp_path, out, variant, "a", resume=True, seed=2)
    assert again.returncode == 0 and "FAILED" not in again.stdout, str(again)
    stats = json.loads(again.stdout.split("STATS ", 1)[1])
    assert stats == {"ran": N // 2, "resumed": N // 2}, str(again)
    assert _markers(tmp_path) == sorted(ran_before + [1, 3, 5]), "resume re-ran done calls"
    extra = {"lambda": 1.0, "closure": 1.0, "global": 0.0, "partial": 1.0,
             "callable": 3.0 + 1.0, "set": 5.0, "set-in-object": 5.0, "masked": 5.0}[variant]
    for i in range(N):
        np.testing.assert_array_equal(acme.load_call(str(out), i)[0], [i * 2.0 + extra, i])


@pytest.mark.parametrize("variant", sorted(CHANGES))
def test_resume_refuses_a_change_and_accepts_the_identical_run_in_new_processes(
        tmp_path, variant):
    out, before = _first_run(tmp_path, variant)
    # changed, in a new process with another hash seed: refused, naming the change
    changed = _run(tmp_path, out, variant, "b", resume=True, seed=3)
    assert changed.returncode != 0, str(changed)
    assert "resume=True refused" in changed.stderr, str(changed)
    assert CHANGES[variant] in changed.stderr, str(changed)
    assert "cannot be compared" not in changed.stderr, str(changed)
    assert _markers(tmp_path) == list(range(N)), "a refused resume ran calls"
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert after == before, "a refused resume changed the output folder"
    # identical, another process and hash seed: accepted, only the failed calls run
    _check_resumed(tmp_path, out, variant, list(range(N)))


def test_resume_is_refused_when_an_argument_cannot_be_fingerprinted(tmp_path):
    """A lock has no content acme can digest: "unknown" is never taken as equal."""
    out, before = _first_run(tmp_path, "lock")
    same = _run(tmp_path, out, "lock", "a", resume=True, seed=2)
    assert same.returncode != 0 and "resume=True refused" in same.stderr, str(same)
    assert re.search(r"positional argument 1 cannot be compared.*_thread\.lock",
                     same.stderr), str(same)
    assert _markers(tmp_path) == list(range(N))
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


# ---------------------------------------------------------------- result_dtype casts
CASTS = {  # result_dtype: (a value it holds, a value it cannot hold, how that one would end)
    "int8": (100, 1000, "-24"),
    "float32": (0.1, 1e300, "inf"),
    "S3": (b"abc", b"abcd", "b'abc'"),
}


def two_values(x, dtype):
    """Call 1 returns a value ``dtype`` cannot hold; the others one it can."""
    good, bad, _ = CASTS[dtype]
    return np.array([good, bad if x == 1 else good])


def _mode_options(mode: str, out) -> dict:
    if mode == "memory":
        return {"write_worker_results": False}
    return {"output_dir": str(out), "single_file": mode == "single_file"}


@pytest.mark.parametrize("mode", ["memory", "files", "single_file"])
@pytest.mark.parametrize("dtype", sorted(CASTS))
def test_a_value_result_dtype_cannot_hold_fails_its_call(tmp_path, dtype, mode):
    good, bad, became = CASTS[dtype]
    out = tmp_path / "out"
    with pytest.raises(ParallelMapError) as info:
        with ParallelMap(two_values, list(range(4)), dtype, result_shape=(None, 2),
                         result_dtype=dtype, backend="local", n_workers=2, verbose=False,
                         **_mode_options(mode, out)) as pmap:
            pmap.compute()
    assert info.value.failed == [1], str(info.value)
    message = str(info.value)
    assert "call 1 " in message and repr(bad) in message and dtype in message, message
    assert became in message, message
    if mode == "memory":
        return
    for i in (0, 2, 3):  # the other calls are stored exactly as returned (cast)
        stored = acme.load_call(str(out), i)[0]
        np.testing.assert_array_equal(stored, np.array([good, good], dtype=dtype))
        assert stored.dtype == np.dtype(dtype)
    with pytest.raises(acme.MissingResultError):
        acme.load_call(str(out), 1)


def test_lower_precision_floats_are_what_result_dtype_float32_is_for(tmp_path):
    """0.1 is not exact in float32, but finite: stored rounded, no error."""
    with ParallelMap(two_values, [0, 2, 3], "float32", result_shape=(None, 2),
                     result_dtype="float32", write_worker_results=False,
                     backend="local", n_workers=2, verbose=False) as pmap:
        values = pmap.compute()
    np.testing.assert_array_equal(values, np.full((3, 2), 0.1, dtype="float32"))


def test_an_integer_that_float64_cannot_hold_exactly_is_refused():
    with pytest.raises(ParallelMapError, match=r"9007199254740993.*9007199254740992"):
        ParallelMap(lambda x: x, [1, 2 ** 53 + 1], result_shape=(None,),
                    write_worker_results=False, backend="sequential",
                    verbose=False).compute()


def test_a_structured_result_dtype_is_refused_up_front():
    with pytest.raises(TypeError, match="result_dtype.*structured"):
        ParallelMap(lambda x: x, [1, 2], result_shape=(None,),
                    result_dtype=[("a", "f8"), ("b", "i4")])
