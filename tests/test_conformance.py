"""Conformance suite (issue 13): Hypothesis generates maps -- functions returning
scalars, arrays of several dtypes and shapes, tuples, dicts or None, raising on some
calls, with arguments laid out by esi-acme's inference rules -- and runs each in every
result mode on every backend (sequential, local, a reused local pool, MPI under
mpiexec, a SLURM pool). Every value, every failure index and every file is compared
with the reference: the calls made directly in this process with the arguments the
documented rules give (fault_helpers.model_calls), which the sequential backend must
match too. Where esi-acme documents the output (scalars stored as shape (1,), the
in-memory result_shape list [stacked, other values...]) that is the expectation.

Profiles: ``ACME_CONFORMANCE_PROFILE=ci`` (default: fixed seed, bounded examples, about
4 minutes on 2 cores) or ``thorough`` (more and random examples).
Counts are printed as ``MEASURED`` lines (pytest -s).
"""
from __future__ import annotations

import itertools
import os
import pickle
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

import acme
from fault_helpers import (SCRIPTS_DIR, check_outcome, profile, record, reference,
                           scaled)
from confmodel import DTYPES, FUNCTIONS
from confrun import MODES, applicable, run_map

THOROUGH = profile() == "thorough"

pytestmark = pytest.mark.timeout(3600 if THOROUGH else 900)


def hyp_settings(ci: int, thorough: int, shrink: bool = True):
    """Fixed seed in CI; random examples, more of them, in the thorough profile."""
    phases = [Phase.explicit, Phase.reuse, Phase.generate] + ([Phase.shrink] if shrink else [])
    return settings(max_examples=scaled(ci, thorough), derandomize=not THOROUGH,
                    deadline=None, database=None, phases=phases, print_blob=True,
                    suppress_health_check=list(HealthCheck))


# ================================================================== strategies
LEAF_SCALARS = st.sampled_from([("int",), ("float",)]) | \
    st.sampled_from(DTYPES).map(lambda d: ("npscalar", d))
SHAPES = st.lists(st.integers(0, 3) if THOROUGH else st.integers(1, 3),
                  min_size=1, max_size=2).map(tuple)
LEAF_ARRAYS = st.tuples(st.just("array"), st.sampled_from(DTYPES), SHAPES)
LEAVES = LEAF_SCALARS | LEAF_ARRAYS
RAGGED = st.tuples(st.just("ragged"), st.sampled_from(["float64", "float32"]),
                   st.integers(1, 4))  # result_shape (None, np.inf) on disk
RETURNS = st.one_of(
    LEAVES, RAGGED,
    st.tuples(RAGGED, LEAVES).map(lambda items: ("tuple", items)),
    st.lists(LEAVES, min_size=1, max_size=3).map(lambda items: ("tuple", tuple(items))),
    st.just(("dict",)), st.just(("none",)))

ELEMENTS = st.one_of(st.integers(-50, 50),
                     st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
                     st.text("abc", max_size=3))
CONSTANTS = st.one_of(
    st.integers(-5, 5), st.floats(-10, 10, allow_nan=False), st.text("xyz", max_size=4),
    st.none(), st.dictionaries(st.sampled_from("ab"), st.integers(0, 3), max_size=2),
    st.integers(0, 9).map(lambda k: np.arange(6.0).reshape(2, 3) + k))


@st.composite
def split_arg(draw, n: int):
    """An argument split into n calls, in one of the forms the rules split."""
    # a length-1 array squeezes to 0-d (not split): arrays only for n >= 2
    form = draw(st.sampled_from(["list", "tuple"] + (["array", "array_1n", "array_n1",
                                                      "list_of_arrays"] if n > 1 else [])))
    if form in ("list", "tuple"):
        return (form, draw(st.lists(ELEMENTS, min_size=n, max_size=n)))
    if form == "list_of_arrays":
        return ("list", [np.full(2, draw(st.integers(0, 9)), dtype=float) for _ in range(n)])
    dtype = draw(st.sampled_from(["int64", "int32", "float64", "float32"]))
    values = draw(st.lists(st.integers(-100, 100), min_size=n, max_size=n))
    shape = {"array": (n,), "array_1n": (1, n), "array_n1": (n, 1)}[form]
    return ("array", dtype, shape, values)


@st.composite
def map_descs(draw, max_n: int = 6):
    """A map description (see confrun): function, arguments, return kind, failures."""
    n = draw(st.integers(1, max_n))
    func = draw(st.sampled_from(sorted(FUNCTIONS)))
    spec = {"salt": draw(st.integers(0, 2 ** 32)), "ret": draw(RETURNS),
            "raise_pct": draw(st.sampled_from([0, 0, 25, 60]))}
    named = {"x": draw(split_arg(n)) if draw(st.integers(0, 4)) else
             ("value", draw(CONSTANTS))}
    if func == "f_two":
        named["y"] = draw(st.one_of(split_arg(n), CONSTANTS.map(lambda c: ("value", c))))
    named["spec"] = ("value", spec)
    extra = {}
    if func == "f_two" and draw(st.booleans()):
        extra["scale"] = draw(st.one_of(split_arg(n), st.floats(0, 2).map(lambda c: ("value", c))))
    if func == "f_kwdef":
        choice = draw(st.sampled_from(["absent", "const", "list_n"]))
        if choice == "const":
            extra["w"] = ("value", draw(st.integers(0, 9)))
        elif choice == "list_n":  # with n == 3 the tuple default makes it a constant
            extra["w"] = ("list", draw(st.lists(st.integers(0, 9), min_size=n, max_size=n)))
        if draw(st.booleans()):  # ndarray default: an array keyword is never split
            size = draw(st.sampled_from([n, 4]))
            extra["arr"] = ("array", "float64", (size,), list(range(size)))
    if draw(st.booleans()):  # everything by keyword (a keyword naming a positional)
        args, kwargs = [], {**named, **extra}
    else:
        args, kwargs = list(named.values()), extra
    desc = {"func": func, "args": args, "kwargs": kwargs, "n_inputs": "auto", "spec": spec,
            "stack_axis": draw(st.integers(0, 2)),
            "result_dtype": draw(st.sampled_from([None, "float64"]))}
    if desc["result_dtype"] and "complex" in repr(spec["ret"][:2]):
        desc["result_dtype"] = None
    desc["n_inputs"] = n if (draw(st.booleans()) or not _varies(desc, n)) else "auto"
    return desc


def _varies(desc: dict, n: int) -> bool:
    """Whether some argument is split (else n_inputs has to be given)."""
    from fault_helpers import split_arguments
    return bool(split_arguments(desc)[1])


# ================================================================== running & checking
_counter = itertools.count()
COUNTS: dict = {}


def count(key: str, k: int = 1) -> None:
    COUNTS[key] = COUNTS.get(key, 0) + k


def new_dir(base) -> str:
    path = os.path.join(str(base), f"run{next(_counter)}")
    return path


def assert_conforms(desc, mode, out, ref, backend: str) -> None:
    problems = check_outcome(desc, mode, out, ref)
    count(f"{backend}:maps")
    if problems and os.environ.get("ACME_CONFORMANCE_COLLECT"):
        # a development aid: collect every failing example instead of stopping
        with open(os.environ["ACME_CONFORMANCE_COLLECT"], "a", encoding="utf-8") as fh:
            fh.write(f"=== backend {backend}, mode {mode}, map {desc!r}\nreference: "
                     f"{ref!r:.1500}\n  " + "\n  ".join(problems[:12]) + "\n")
        count(f"{backend}:failures")
        return
    if problems:
        count(f"{backend}:failures")
        text = "\n  ".join(problems[:12])
        raise AssertionError(f"backend {backend}, mode {mode}, map {desc!r}\n"
                             f"reference: {ref!r:.2000}\n  {text}")


def modes_for(desc) -> list:
    return [m for m in MODES if applicable(desc, m)]


def run_and_check(desc, backend, tmp_path, label: str, modes=None) -> None:
    ref = reference(desc)
    for mode in modes or modes_for(desc):
        out = run_map(desc, mode, backend, new_dir(tmp_path))
        assert_conforms(desc, mode, out, ref, label)


# ================================================================== in this process
@pytest.mark.parametrize("backend", ["sequential", "local"])
def test_every_mode_matches_the_reference(backend, tmp_path):
    """sequential: in this process; local: worker processes started per map."""
    start = time.perf_counter()

    # shrinking re-runs maps: cheap in this process, too slow with worker processes
    @hyp_settings(ci=25 if backend == "sequential" else 10, thorough=200,
                  shrink=backend == "sequential")
    @given(desc=map_descs())
    def check(desc):
        count(f"{backend}:examples")
        options = {"n_workers": 2} if backend == "local" else {}
        ref = reference(desc)
        for mode in modes_for(desc):
            out = run_map(desc, mode, backend, new_dir(tmp_path), **options)
            assert_conforms(desc, mode, out, ref, backend)

    check()
    record(f"conformance {backend}: {COUNTS.get(backend + ':examples', 0)} examples, "
           f"{COUNTS.get(backend + ':maps', 0)} maps, {time.perf_counter() - start:.1f} s")


def test_a_local_pool_reused_by_many_maps(tmp_path):
    """One pool (acme.local_cluster_setup) runs maps of different functions, constants
    and folders one after another: each must get its own function and arguments."""
    start = time.perf_counter()
    pool = acme.local_cluster_setup(n_workers=2, interactive=False)
    try:
        @hyp_settings(ci=8, thorough=80, shrink=False)
        @given(descs=st.lists(map_descs(), min_size=3, max_size=3),
               via_auto=st.booleans())
        def check(descs, via_auto):
            count("pool:examples")
            for desc in descs:
                ref = reference(desc)
                for mode in modes_for(desc):
                    # "auto" runs on the current pool, the one started above
                    out = run_map(desc, mode, "auto" if via_auto else pool,
                                  new_dir(tmp_path))
                    assert_conforms(desc, mode, out, ref, "local pool")
            assert not pool.closed

        check()
    finally:
        acme.cluster_cleanup(pool)
    record(f"conformance local pool: {COUNTS.get('pool:examples', 0)} examples, "
           f"{COUNTS.get('local pool:maps', 0)} maps on one pool, "
           f"{time.perf_counter() - start:.1f} s")


# ================================================================== MPI and SLURM
def test_mpi_maps_under_mpiexec(tmp_path):
    """Batches of maps, every mode, in one ``mpiexec -n 3 python -m acme.mpi_run``
    start each (a start costs 1-2 s), compared with the reference here."""
    from mpi_helpers import require_mpi
    from fault_helpers import child_env, run_group
    require_mpi()
    start = time.perf_counter()
    script = SCRIPTS_DIR / "mpi_batch.py"

    @hyp_settings(ci=4, thorough=25, shrink=False)
    @given(descs=st.lists(map_descs(), min_size=4, max_size=4))
    def check(descs):
        count("mpi:starts")
        job = [(d, m, new_dir(tmp_path)) for d in descs for m in modes_for(d)]
        job_path = tmp_path / f"job{next(_counter)}.pkl"
        out_path = tmp_path / f"outcomes{next(_counter)}.pkl"
        with open(job_path, "wb") as fh:
            pickle.dump(job, fh)
        code, stdout, stderr, left = run_group(
            ["mpiexec", "-n", "3", sys.executable, "-m", "acme.mpi_run", str(script),
             str(job_path), str(out_path)], timeout=240, cwd=str(tmp_path), env=child_env())
        outcomes = []
        if out_path.exists():
            with open(out_path, "rb") as fh:
                outcomes = pickle.load(fh)
        for (desc, mode, _), out in zip(job, outcomes):
            assert_conforms(desc, mode, out, reference(desc), "mpi")
        assert code == 0 and len(outcomes) == len(job), (
            f"mpiexec exited {code} after {len(outcomes)} of {len(job)} maps\n"
            f"--- stdout ---\n{stdout[-3000:]}\n--- stderr ---\n{stderr[-5000:]}")
        assert not left, f"processes left after mpiexec ended: {left}"

    check()
    record(f"conformance mpi: {COUNTS.get('mpi:starts', 0)} mpiexec starts, "
           f"{COUNTS.get('mpi:maps', 0)} maps, {time.perf_counter() - start:.1f} s")


def test_a_slurm_pool_reused_by_many_maps(tmp_path):
    """One SLURM job (acme.slurm_cluster_setup) runs maps of every mode, functions,
    constants and folders one after another; the job is cancelled at the end."""
    from mpi_helpers import require_slurm
    require_slurm()
    start = time.perf_counter()
    pool = acme.slurm_cluster_setup(partition="small", n_workers=2, timeout=120,
                                    interactive=False)
    job_id = pool.job_id
    try:
        @hyp_settings(ci=3, thorough=25, shrink=False)
        @given(descs=st.lists(map_descs(), min_size=2, max_size=2))
        def check(descs):
            count("slurm:examples")
            for desc in descs:
                ref = reference(desc)
                for mode in modes_for(desc):
                    out = run_map(desc, mode, pool, new_dir(tmp_path))
                    assert_conforms(desc, mode, out, ref, "slurm pool")
                    pool.check()  # still running

        check()
    finally:
        acme.cluster_cleanup(pool)
        if _job_listed(job_id):
            subprocess.run(["scancel", job_id], capture_output=True, timeout=30)
        deadline = time.monotonic() + 30
        while _job_listed(job_id) and time.monotonic() < deadline:
            time.sleep(0.5)
    assert not _job_listed(job_id), f"SLURM job {job_id} is still listed after cleanup"
    record(f"conformance slurm pool: {COUNTS.get('slurm:examples', 0)} examples, "
           f"{COUNTS.get('slurm pool:maps', 0)} maps on job {job_id}, "
           f"{time.perf_counter() - start:.1f} s")


def _job_listed(job_id: str) -> bool:
    proc = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%i"], capture_output=True,
                          text=True, timeout=30)
    return job_id in proc.stdout.split()
