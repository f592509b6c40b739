"""Fault suite (issue 13): kill the parent (SIGKILL) and a worker at random moments
(during calls, between batches, while the container is built and the single file is
merged), fill a real (tmpfs) disk, truncate or replace result files between runs; then
check that

* ``acme status`` is truthful: each call listed once, exit code 0 only when all are
  done, every call it calls done reads back as its reference value;
* the readers never return a non-result (MissingResultError for what is missing);
* ``resume=True`` finishes with exactly the reference results and re-runs only what
  was missing (each call appends its index to a log with O_APPEND: the calls that
  really ran are counted);
* no process is left (checked by PID).

Each scenario runs with several seeds (``ACME_CONFORMANCE_PROFILE=thorough``: more);
every problem of every seed is collected and reported together. Counts (scenarios,
seeds, kills) are printed as ``MEASURED`` lines (pytest -s).
"""
from __future__ import annotations

import copy
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import require
from fault_helpers import (SCRIPTS_DIR, Proc, check_outcome, check_truthful,
                           descendants, group_members, kill_pids, logged_calls, pid_alive,
                           record, reference, scaled, wait_for, wait_gone)

pytestmark = pytest.mark.timeout(scaled(600, 3600))

SEEDS = list(range(int(os.environ.get("ACME_FAULT_SEED_BASE", "0")),
                   int(os.environ.get("ACME_FAULT_SEED_BASE", "0")) + scaled(3, 12)))
FAULT_MODES = ["files", "files_shape", "single", "single_shape", "pickle"]
SCRIPT = SCRIPTS_DIR / "fault_run.py"


# ================================================================== the map
def fault_desc(n: int, seed: int, log: Path, sleep: float, size: int = 3,
               raise_pct: int = 0) -> dict:
    """f_plain over x = 0..n-1 (x is the call index, which it logs), returning
    (array of `size` floats, int)."""
    spec = {"salt": seed, "ret": ("tuple", (("array", "float64", (size,)), ("int",))),
            "raise_pct": raise_pct, "log": str(log), "sleep": sleep}
    return {"func": "f_plain", "args": [("list", list(range(n))), ("value", spec)],
            "kwargs": {}, "n_inputs": "auto", "spec": spec, "stack_axis": 0,
            "result_dtype": None}


def quiet_reference(desc: dict) -> list:
    """The reference, computed without writing to the map's call log."""
    quiet = copy.deepcopy(desc)
    spec = dict(quiet["args"][1][1], log=None, sleep=0)
    quiet["args"][1] = ("value", spec)
    return reference(quiet)


class Run:
    """One map of a scenario, run by tests/conformance_scripts/fault_run.py in its own
    session (``mpi``: under mpiexec -n 3 python -m acme.mpi_run)."""

    def __init__(self, base: Path, tag: str, desc: dict, mode: str, out: Path,
                 backend: str = "local", mpi: bool = False, **options):
        self.job = base / f"{tag}.job.pkl"
        self.result = base / f"{tag}.outcome.pkl"
        options.setdefault("n_workers", 2) if backend == "local" else None
        with open(self.job, "wb") as fh:
            pickle.dump({"desc": desc, "mode": mode, "output_dir": str(out),
                         "backend": backend, "options": options}, fh)
        cmd = [sys.executable, str(SCRIPT), str(self.job), str(self.result)]
        if mpi:
            cmd = ["mpiexec", "-n", "3", sys.executable, "-m", "acme.mpi_run"] + cmd[1:]
        self.proc = Proc(cmd, base, tag, cwd=str(base))

    def script_pid(self) -> int:
        """The PID of the process running the script (rank 0 under MPI)."""
        wait_for(lambda: "PID " in self.proc.out_path.read_text(), 30)
        for line in self.proc.out_path.read_text().splitlines():
            if line.startswith("PID "):
                return int(line.split()[1])
        raise AssertionError(f"the script did not start:\n{self.proc.output()}")

    def outcome(self, timeout: float = 180) -> dict:
        code = self.proc.wait(timeout)
        left = self.proc.kill_group()
        if code is None:
            raise AssertionError(f"the run did not end within {timeout} s (killed)\n"
                                 f"{self.proc.output()}")
        if not self.result.exists():
            return {"status": "exception", "type": f"exit code {code}",
                    "message": "the script wrote no outcome", "traceback": self.proc.output(),
                    "left": left}
        with open(self.result, "rb") as fh:
            outcome = pickle.load(fh)
        outcome["left"] = left
        return outcome


class Tally:
    """Problems and counts of one scenario over all its seeds."""

    def __init__(self, name: str):
        self.name = name
        self.problems: list[str] = []
        self.counts: dict = {"seeds": 0, "kills": 0}

    def add(self, seed: int, what: str, problems: list) -> None:
        for p in problems:
            self.problems.append(f"[{self.name} seed {seed}] {what}: {p}")

    def done(self) -> None:
        record(f"faults {self.name}: " + ", ".join(f"{k} {v}" for k, v in self.counts.items())
               + f", problems {len(self.problems)}")
        if os.environ.get("ACME_FAULT_PROBLEMS"):  # every problem, for a report
            with open(os.environ["ACME_FAULT_PROBLEMS"], "a", encoding="utf-8") as fh:
                fh.write("".join(p + "\n" for p in self.problems))
        assert not self.problems, summary(self.problems)


def summary(problems: list[str]) -> str:
    """Problems that differ only in numbers, shown once with a count."""
    import re
    groups: dict = {}
    for p in problems:
        groups.setdefault(re.sub(r"\d+", "N", p.split("\n")[0])[:160], []).append(p)
    return f"{len(problems)} problems:\n" + "\n".join(
        f"({len(v)}x) {v[0][:1500]}" for v in groups.values())


def no_process_left(pids, seconds: float = 10.0) -> list[str]:
    left = wait_gone(pids, seconds)
    if left:
        kill_pids(left)
        return [f"processes {left} still ran {seconds:.0f} s after the kill (killed now)"]
    return []


def resume_and_check(tally: Tally, seed: int, base: Path, desc: dict, mode: str,
                     out: Path, ref: list, log: Path, done_before: list, mpi=False,
                     backend="local") -> None:
    """Resume, then: the reference everywhere, and exactly the calls that were not
    done ran again (each once)."""
    before = len(logged_calls(log))
    run = Run(base, f"resume{seed}", desc, mode, out, backend=backend, mpi=mpi,
              resume=True)
    outcome = run.outcome()
    tally.add(seed, "resume", check_outcome(desc, mode, outcome, ref))
    if outcome.get("left"):
        tally.add(seed, "resume", [f"processes left after the resumed run: {outcome['left']}"])
    ran = sorted(logged_calls(log)[before:])
    want = sorted(set(range(len(ref))) - set(done_before))
    if ran != want:
        tally.add(seed, "resume re-ran", [f"calls {ran}, but the calls without a result "
                                          f"were {want}"])
    tally.counts["resumed calls"] = tally.counts.get("resumed calls", 0) + len(ran)


def after_fault(tally: Tally, seed: int, base: Path, desc, mode, out, ref, log, **kw):
    """The checks after a fault: status and readers truthful, then resume."""
    problems, done = check_truthful(desc, mode, str(out), ref,
                                    allowed_failures=kw.pop("allowed_failures", ("ValueError",)))
    tally.add(seed, f"after the fault ({mode})", problems)
    resume_and_check(tally, seed, base, desc, mode, out, ref, log, done, **kw)


# ================================================================== kill the parent
@pytest.mark.parametrize("moment", ["during_calls", "at_the_end"])
def test_parent_killed(moment, tmp_path):
    """SIGKILL of the process running the map: during the calls (between and inside
    batches), or once every call ran (while the container is built, the single file
    merged, or just after)."""
    tally = Tally(f"parent killed {moment}")
    for seed in SEEDS:
        rng = random.Random(f"parent-{moment}-{seed}")
        base = tmp_path / f"s{seed}"
        base.mkdir()
        log, out = base / "calls.log", base / "out"
        if moment == "during_calls":
            mode, n = rng.choice(FAULT_MODES), rng.randint(12, 30)
            desc = fault_desc(n, seed, log, sleep=0.03)
            target = rng.randint(1, n - 2)
        else:
            mode, n = rng.choice(["files", "files_shape", "single", "single_shape"]), 200
            desc = fault_desc(n, seed, log, sleep=0.0)
            target = n
        ref = quiet_reference(desc)
        run = Run(base, f"run{seed}", desc, mode, out)
        pid = run.script_pid()
        reached = wait_for(lambda: len(logged_calls(log)) >= target, 60, interval=0.002)
        if moment == "at_the_end":
            time.sleep(rng.uniform(0, 0.3))
        family = descendants(pid)
        try:
            os.kill(pid, signal.SIGKILL)
            tally.counts["kills"] += 1
        except ProcessLookupError:  # the run had ended already: check it all the same
            tally.counts["ended before the kill"] = tally.counts.get("ended before the kill", 0) + 1
        tally.counts["seeds"] += 1
        if not reached:
            tally.add(seed, "run", [f"only {len(logged_calls(log))} calls ran in 60 s"])
        tally.add(seed, "workers after the parent's kill", no_process_left(family))
        run.proc.kill_group()
        after_fault(tally, seed, base, desc, mode, out, ref, log)
    tally.done()


# ================================================================== kill a worker
def test_worker_killed_during_calls(tmp_path):
    """SIGKILL of one or two local worker processes at random moments (inside a call,
    between calls and batches), as the OOM killer would: only the calls running on a
    killed worker may fail (WorkerDied); the run goes on; then resume."""
    tally = Tally("worker killed")
    for seed in SEEDS + [s + 100 for s in SEEDS]:
        rng = random.Random(f"worker-{seed}")
        base = tmp_path / f"s{seed}"
        base.mkdir()
        log, out = base / "calls.log", base / "out"
        mode, n = rng.choice(FAULT_MODES), rng.randint(20, 60)
        desc = fault_desc(n, seed, log, sleep=rng.choice([0.0, 0.005, 0.03]))
        ref = quiet_reference(desc)
        run = Run(base, f"run{seed}", desc, mode, out)
        pid = run.script_pid()
        for target in sorted(rng.sample(range(n // 2), rng.randint(1, 2))):
            wait_for(lambda: len(logged_calls(log)) >= target, 60, 0.001)
            workers = [p for p in descendants(pid) if pid_alive(p)]
            if workers and run.proc.proc.poll() is None:
                try:
                    os.kill(rng.choice(workers), signal.SIGKILL)
                    tally.counts["kills"] += 1
                except ProcessLookupError:  # it ended in the meantime
                    pass
        tally.counts["seeds"] += 1
        outcome = run.outcome()
        if outcome["status"] == "exception":
            tally.add(seed, "run", [f"the run aborted: {outcome['type']}: "
                                    f"{outcome['message']}\n{outcome.get('traceback', '')[-1500:]}"])
        elif outcome["status"] == "failed" and outcome["cause"] != "WorkerDied":
            tally.add(seed, "run", [f"calls {outcome['failed']} failed with "
                                    f"{outcome['cause']}: {outcome['message'][:500]}"])
        if outcome.get("left"):
            tally.add(seed, "run", [f"processes left: {outcome['left']}"])
        after_fault(tally, seed, base, desc, mode, out, ref, log)
    tally.done()


def test_worker_killed_while_idle(tmp_path):
    """SIGKILL of a worker that waits for work (as the OOM killer would pick it):
    between two maps on a reused local pool, or at the end of a map while another
    worker still runs a long call. Nothing may be lost: the next map (or the rest of
    this one) completes; only a call running on the killed worker may fail."""
    tally = Tally("idle worker killed")
    for seed in SEEDS:
        rng = random.Random(f"idle-{seed}")
        base = tmp_path / f"s{seed}"
        base.mkdir()
        log = base / "calls.log"
        mode = rng.choice(FAULT_MODES + ["memory"])
        n = rng.randint(6, 12)
        descs = [fault_desc(n, seed * 10 + k, log, sleep=0.0) for k in range(2)]
        descs[1]["spec"].update(slow_x=n - 1, slow_s=1.0)
        descs[1]["args"][1] = ("value", descs[1]["spec"])
        outs = [base / f"out{k}" for k in range(2)]
        job = base / "job.pkl"
        result = base / "outcome.pkl"
        with open(job, "wb") as fh:
            pickle.dump({"pool": 2, "maps": [{"desc": d, "mode": mode, "output_dir": str(o)}
                                             for d, o in zip(descs, outs)]}, fh)
        proc = Proc([sys.executable, str(SCRIPT), str(job), str(result)], base, "pool",
                    cwd=str(base))
        tally.counts["seeds"] += 1
        killed_at_end, code = False, None
        try:
            wait_for(lambda: "PID " in proc.out_path.read_text(), 30)
            pid = int(proc.out_path.read_text().split()[1])
            Path(f"{result}.go0").touch()
            wait_for(lambda: Path(f"{result}.0").exists(), 60)
            workers = descendants(pid)
            if workers:  # between maps: every pool worker is idle
                os.kill(rng.choice(workers), signal.SIGKILL)
                tally.counts["kills between maps"] = tally.counts.get("kills between maps", 0) + 1
            Path(f"{result}.go1").touch()
            # at the end of map 1: every call started, the slow one still runs
            wait_for(lambda: len(logged_calls(log)) >= 2 * n, 60, 0.002)
            workers = [p for p in descendants(pid) if pid_alive(p)]
            killed_at_end = bool(workers) and rng.random() < 0.5
            if killed_at_end:
                os.kill(rng.choice(workers), signal.SIGKILL)
                tally.counts["kills at the end"] = tally.counts.get("kills at the end", 0) + 1
            code = proc.wait(90)
        finally:
            left = proc.kill_group()
        if code != 0 or left:
            tally.add(seed, "pool script", [f"exit {code}, processes left {left}\n"
                                            f"{proc.output()}"])
        for k, desc in enumerate(descs):
            path = Path(f"{result}.{k}")
            if not path.exists():
                tally.add(seed, f"map {k}", ["no outcome"])
                continue
            with open(path, "rb") as fh:
                outcome = pickle.load(fh)
            ref = quiet_reference(desc)
            if k == 1 and killed_at_end and outcome["status"] == "failed" and \
                    outcome["cause"] == "WorkerDied" and outcome["failed"] == [n - 1]:
                # the slow call ran on the worker that was killed: it alone may fail
                tally.counts["calls lost with their worker"] = \
                    tally.counts.get("calls lost with their worker", 0) + 1
                ref = [("raise", "WorkerDied") if i in outcome["failed"] else r
                       for i, r in enumerate(ref)]
                outcome = dict(outcome, cause="ValueError")  # check the rest as usual
            tally.add(seed, f"map {k} ({mode})", check_outcome(desc, mode, outcome, ref))
    tally.done()


# ================================================================== MPI
def test_mpi_rank_killed(tmp_path):
    """SIGKILL of rank 0 (the script) or of a worker rank during the calls of a run
    under mpiexec: every rank ends, status is truthful, resume under MPI finishes."""
    from mpi_helpers import require_mpi
    require_mpi()
    tally = Tally("MPI rank killed")
    for seed in SEEDS:
        rng = random.Random(f"mpi-{seed}")
        base = tmp_path / f"s{seed}"
        base.mkdir()
        log, out = base / "calls.log", base / "out"
        mode, n = rng.choice(FAULT_MODES), rng.randint(12, 24)
        desc = fault_desc(n, seed, log, sleep=0.05)
        ref = quiet_reference(desc)
        run = Run(base, f"run{seed}", desc, mode, out, backend="auto", mpi=True)
        rank0 = run.script_pid()
        target = rng.randint(1, n - 2)
        wait_for(lambda: len(logged_calls(log)) >= target, 60, 0.002)
        ranks = [p for p in group_members(run.proc.pid)
                 if p != run.proc.pid and "acme.mpi_run" in _cmdline(p)]
        victim = rank0 if rng.random() < 0.5 or len(ranks) < 2 else rng.choice(
            [p for p in ranks if p != rank0])
        try:
            os.kill(victim, signal.SIGKILL)
            tally.counts["kills"] += 1
        except ProcessLookupError:  # that rank had ended already: check it all the same
            tally.counts["ended before the kill"] = tally.counts.get("ended before the kill", 0) + 1
        tally.counts["seeds"] += 1
        code = run.proc.wait(30)
        if code is None:
            tally.add(seed, "mpiexec", [f"still running 30 s after rank "
                                        f"{'0' if victim == rank0 else 'k>0'} was killed"])
        left = run.proc.kill_group()
        if left and code is not None:
            tally.add(seed, "mpiexec", [f"processes left after it ended: {left}"])
        after_fault(tally, seed, base, desc, mode, out, ref, log, mpi=True, backend="auto",
                    allowed_failures=("ValueError",))
    tally.done()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


# ================================================================== damaged files
def _damage(path: Path, how: str, rng: random.Random) -> None:
    data = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(data[:rng.randint(1, max(1, len(data) - 1))])
    elif how == "garbage":
        path.write_bytes(bytes(rng.getrandbits(8) for _ in range(len(data))))
    elif how == "empty_hdf5":
        import h5py
        path.unlink()
        h5py.File(path, "w").close()
    elif how == "deleted":
        path.unlink()


def test_result_files_damaged_between_runs(tmp_path):
    """After a complete run, result files are truncated, emptied, overwritten with
    garbage, replaced by an empty HDF5 file or deleted: status must not call them done,
    readers must not return them, and resume recomputes exactly those calls."""
    tally = Tally("damaged files")
    for seed in SEEDS + [s + 100 for s in SEEDS]:
        rng = random.Random(f"damage-{seed}")
        base = tmp_path / f"s{seed}"
        base.mkdir()
        log, out = base / "calls.log", base / "out"
        mode, n = rng.choice(FAULT_MODES), rng.randint(4, 12)
        desc = fault_desc(n, seed, log, sleep=0.0)
        ref = quiet_reference(desc)
        outcome = Run(base, f"run{seed}", desc, mode, out).outcome()
        tally.add(seed, "first run", check_outcome(desc, mode, outcome, ref))
        how = rng.choice(["empty", "truncated", "garbage", "empty_hdf5", "deleted"])
        stem = desc["func"]
        if mode.startswith("single"):
            victims = [out / f"{stem}.h5"]
        elif mode == "pickle":
            victims = [out / f"{stem}_{i}.pickle" for i in rng.sample(range(n), rng.randint(1, 3))]
            how = "empty_hdf5" and "garbage" if how == "empty_hdf5" else how
        else:
            victims = [out / f"{stem}_payload" / f"{stem}_{i}.h5"
                       for i in rng.sample(range(n), rng.randint(1, 3))]
        for victim in victims:
            _damage(victim, how, rng)
        tally.counts["seeds"] += 1
        tally.counts[f"damaged ({how})"] = tally.counts.get(f"damaged ({how})", 0) + len(victims)
        after_fault(tally, seed, base, desc, mode, out, ref, log)
    tally.done()


# ================================================================== full disk
@pytest.fixture
def small_disk(tmp_path):
    """A real 8 MB tmpfs (needs root; filled up by the test); unmounted after the test."""
    target = tmp_path / "disk"
    target.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(target)],
                          capture_output=True, text=True, timeout=30)
    require(proc.returncode == 0, f"cannot mount a tmpfs ({proc.stderr.strip()}); the "
            "full-disk scenario needs root")
    yield target
    if subprocess.run(["umount", str(target)], capture_output=True, timeout=30).returncode:
        subprocess.run(["umount", "-l", str(target)], capture_output=True, timeout=30)


def _fill(path: Path, leave: int) -> None:
    """Fill the file system of ``path`` until only about ``leave`` bytes are free."""
    with open(path, "wb") as fh:
        while True:
            free = os.statvfs(path.parent).f_bavail * os.statvfs(path.parent).f_frsize
            if free <= leave:
                break
            try:
                fh.write(b"\0" * min(65536, free - leave))
                fh.flush()
            except OSError:
                break


def test_full_disk_then_resume(tmp_path, small_disk):
    """The disk fills up while results are written (a real tmpfs): the calls that
    could not be written fail (or the run stops) -- nothing half-written counts as
    done -- and once there is space again, resume finishes with the reference."""
    tally = Tally("full disk")
    for seed in SEEDS:
        rng = random.Random(f"disk-{seed}")
        base = tmp_path / f"s{seed}"
        base.mkdir()
        out = small_disk / f"out{seed}"
        log = base / "calls.log"
        mode, n = rng.choice(FAULT_MODES), rng.randint(20, 40)
        backend = rng.choice(["local", "sequential"])
        desc = fault_desc(n, seed, log, sleep=0.0, size=2000)  # about 16 kB per call
        ref = quiet_reference(desc)
        filler = small_disk / "filler"
        _fill(filler, leave=rng.randint(60, 300) * 1024)
        outcome = Run(base, f"run{seed}", desc, mode, out, backend=backend).outcome()
        tally.counts["seeds"] += 1
        if outcome["status"] == "exception" and not outcome["type"].startswith(("OSError",)):
            tally.add(seed, f"run on a full disk ({backend})",
                      [f"{outcome['type']}: {outcome['message'][:300]}\n"
                       f"{outcome.get('traceback', '')[-1500:]}"])
        if outcome["status"] == "ok":
            tally.counts["runs that fit"] = tally.counts.get("runs that fit", 0) + 1
        filler.unlink()
        stat = os.statvfs(small_disk)
        used = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        tally.counts.setdefault("free kB before resume (min)", 10 ** 9)
        tally.counts["free kB before resume (min)"] = min(
            tally.counts["free kB before resume (min)"], stat.f_bavail * stat.f_frsize // 1024)
        print(f"full disk seed {seed} ({mode}, {backend}, {n} calls): the run left "
              f"{used // 1024} kB; {stat.f_bavail * stat.f_frsize // 1024} kB free for the resume")
        after_fault(tally, seed, base, desc, mode, out, ref, log, backend=backend,
                    allowed_failures=())
        import shutil
        shutil.rmtree(out, ignore_errors=True)
    tally.done()
