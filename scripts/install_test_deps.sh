#!/usr/bin/env bash
# Install everything the acme test suite needs on Debian 12 (run as root):
#   - Open MPI, parallel HDF5, SLURM and munge from apt;
#   - the Python test dependencies from PyPI (mpi4py as a binary wheel only);
#   - h5py built from source against parallel HDF5 (h5py.get_config().mpi is True).
# Idempotent and non-interactive: a re-run skips every step whose result is already there.
# Facts behind each step: /work/shared/ENVIRONMENT.md (Packages, Parallel h5py, Open MPI).
#
# Environment:
#   ACME_WHEEL_CACHE  where the MPI build of h5py is kept (default ~/.cache/acme-wheels);
#                     reinstalling from it takes seconds instead of a ~3.5 min build.
set -euo pipefail

start=$SECONDS
log() { printf '[install_test_deps] %s\n' "$*"; }
die() { printf '[install_test_deps] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (apt-get and the test SLURM cluster need it)"
command -v python3 >/dev/null || die "python3 not found"
# The interpreter itself, not a pyenv shim: mpiexec then starts the same Python quickly.
PY=$(python3 -c 'import sys; print(sys.executable)')
PIP=("$PY" -m pip --disable-pip-version-check --no-input)
export PIP_ROOT_USER_ACTION=ignore   # we are root on purpose; keep the log readable
WHEEL_CACHE=${ACME_WHEEL_CACHE:-$HOME/.cache/acme-wheels}

# ---------------------------------------------------------------- apt
APT_PACKAGES=(openmpi-bin libopenmpi-dev libhdf5-openmpi-dev slurm-wlm munge)
APT_BINARIES=(mpiexec mpicc slurmctld slurmd srun sbatch sinfo squeue scontrol munged)

apt_complete() {
    local p b
    for p in "${APT_PACKAGES[@]}"; do
        [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || return 1
    done
    for b in "${APT_BINARIES[@]}"; do
        command -v "$b" >/dev/null || return 1
    done
}

if apt_complete; then
    log "apt: ${APT_PACKAGES[*]} already installed, skipping apt"
else
    log "apt: installing ${APT_PACKAGES[*]}"
    # Keep the packages' maintainer scripts from starting munge/slurm services: the test
    # cluster is started by scripts/slurm_cluster.sh with its own files and sockets, and a
    # system daemon would hold the SLURM ports. Only added when the machine has no policy.
    added_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        added_policy=1
        trap '[ "$added_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get -q -o DPkg::Lock::Timeout=300 update
    apt-get -q -y -o DPkg::Lock::Timeout=300 install "${APT_PACKAGES[@]}" </dev/null
    if [ "$added_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; added_policy=0; fi
    apt_complete || die "apt finished but some packages/binaries are still missing"
    log "apt: done ($((SECONDS - start)) s so far)"
fi

# ---------------------------------------------------------------- pip
# mpi4py only ever as a binary wheel: a source build once grew past 20 GB of memory.
# setuptools/packaging/Cython/pkgconfig/numpy are h5py's build requirements: with
# --no-build-isolation they must already satisfy h5py's pyproject.toml (h5py 3.16 needs
# setuptools>=77.0.1 and packaging>=23; an older setuptools fails on `project.license`).
PIP_REQS=(numpy mpi4py 'Cython>=3,<4' 'pkgconfig>=1.5.5' 'setuptools>=77.0.1' 'packaging>=23'
          wheel pytest pytest-timeout hypothesis cloudpickle psutil pandas
          tqdm matplotlib sphinx numpydoc nbclient nbformat ipykernel)

pip_complete() {
    "$PY" - "${PIP_REQS[@]}" <<'PYEOF'
import sys
from importlib import metadata
from pip._vendor.packaging.requirements import Requirement
for line in sys.argv[1:]:
    req = Requirement(line)
    try:
        version = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        sys.exit(1)
    if not req.specifier.contains(version, prereleases=True):
        sys.exit(1)
PYEOF
}

if pip_complete; then
    log "pip: test dependencies already installed, skipping pip"
else
    log "pip: installing ${PIP_REQS[*]}"
    "${PIP[@]}" install -q --only-binary=mpi4py "${PIP_REQS[@]}"
fi

# ---------------------------------------------------------------- parallel h5py
h5py_has_mpi() {
    "$PY" -c "import h5py,sys; sys.exit(0 if h5py.get_config().mpi else 1)" >/dev/null 2>&1
}

newest_cached_wheel() {
    ls -t "$WHEEL_CACHE"/h5py-*.whl 2>/dev/null | head -n 1 || true
}

if h5py_has_mpi; then
    log "h5py: MPI build already installed, skipping"
else
    whl=$(newest_cached_wheel)
    if [ -n "$whl" ]; then
        log "h5py: reinstalling the MPI build from $whl"
        "${PIP[@]}" install -q --no-deps --force-reinstall "$whl" || true
    fi
    if ! h5py_has_mpi; then
        log "h5py: building from source against parallel HDF5 (2-4 minutes: 2 min 20 s measured on 2 cores)"
        # Without H5PY_SETUP_REQUIRES=0 and --no-build-isolation, h5py's build pins an old
        # mpi4py that has no wheel and compiles it from source (see ENVIRONMENT.md).
        build_dir=$(mktemp -d)
        HDF5_MPI=ON HDF5_PKGCONFIG_NAME=hdf5-openmpi CC=mpicc H5PY_SETUP_REQUIRES=0 \
            "${PIP[@]}" wheel -q --no-deps --no-binary=h5py --no-build-isolation \
            --no-cache-dir -w "$build_dir" h5py
        mkdir -p "$WHEEL_CACHE"
        built=$(ls "$build_dir"/h5py-*.whl)
        rm -f "$WHEEL_CACHE/$(basename "$built")"
        mv "$built" "$WHEEL_CACHE/"
        rm -rf "$build_dir"
        whl="$WHEEL_CACHE/$(basename "$built")"
        log "h5py: wheel kept in $whl"
        "${PIP[@]}" install -q --no-deps --force-reinstall "$whl"
    fi
    h5py_has_mpi || die "h5py is installed but h5py.get_config().mpi is not True"
fi

# ---------------------------------------------------------------- verify
log "verify: mpiexec -n 2 with mpi4py and h5py driver='mpio'"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
verify_dir=$(mktemp -d)
out=$(cd "$verify_dir" && timeout 120 mpiexec -n 2 --oversubscribe "$PY" -c '
from mpi4py import MPI
import h5py
comm = MPI.COMM_WORLD
with h5py.File("verify.h5", "w", driver="mpio", comm=comm) as f:
    ds = f.create_dataset("x", (comm.size,), dtype="i4")
    ds[comm.rank] = comm.rank + 1
comm.Barrier()
with h5py.File("verify.h5", "r", driver="mpio", comm=comm) as f:
    data = f["x"][()].tolist()
# One line from rank 0 (lines printed by several ranks can interleave).
seen = comm.gather("rank %d of %d read %s" % (comm.rank, comm.size, data))
if comm.rank == 0:
    print("mpio ok: " + "; ".join(seen), flush=True)
' 2>"$verify_dir/stderr") || {
    printf '%s\n' "$out" >&2; cat "$verify_dir/stderr" >&2; rm -rf "$verify_dir"
    die "mpiexec verification failed"
}
printf '%s\n' "$out"
cat "$verify_dir/stderr" >&2
rm -rf "$verify_dir"
expected="mpio ok: rank 0 of 2 read [1, 2]; rank 1 of 2 read [1, 2]"
printf '%s\n' "$out" | grep -qxF "$expected" \
    || die "mpiexec verification printed unexpected output (expected: $expected)"

# ---------------------------------------------------------------- esi-acme reference
# The real esi-acme in a virtual environment of its own (both packages import as `acme`),
# for the differential suite (tests/test_esi_parity.py) and benchmarks/bench_peers.py.
bash "$(dirname "${BASH_SOURCE[0]}")/esi_acme_env.sh"

log "versions:"
"$PY" - <<'PYEOF'
import sys
import numpy, mpi4py, h5py, pytest
from mpi4py import MPI
cfg = h5py.get_config()
print("  python     ", sys.version.split()[0], sys.executable)
print("  numpy      ", numpy.__version__)
print("  mpi4py     ", mpi4py.__version__, "-", MPI.Get_library_version().splitlines()[0].strip("\x00 ").rstrip(","))
print("  h5py       ", h5py.__version__, "HDF5", h5py.version.hdf5_version, "mpi =", cfg.mpi)
print("  pytest     ", pytest.__version__)
PYEOF
printf '  %-11s %s\n' "mpiexec" "$(mpiexec --version 2>/dev/null | head -n 1)"
printf '  %-11s %s\n' "slurm" "$(slurmd -V)"   # srun --version already needs a slurm.conf
printf '  %-11s %s\n' "munge" "$(munged --version 2>&1 | head -n 1)"
log "done in $((SECONDS - start)) s"
