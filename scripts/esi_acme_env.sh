#!/usr/bin/env bash
# The real esi-acme 2026.6.2 (from PyPI) in a virtual environment of its own, for the
# differential suite (tests/test_esi_parity.py) and benchmarks/bench_peers.py.
# Both packages import as `acme`, so esi-acme must never be installed next to ours.
#
# Also writes $VENV/nosl/: failing stubs (exit 127) of the SLURM commands. esi-acme
# treats any host where `sinfo --version` runs as a SLURM cluster; with $VENV/nosl first
# on PATH it starts its local Dask cluster instead, as on a laptop.
#
# Idempotent and non-interactive: skips the venv when it already imports esi-acme 2026.6.2.
#
# Environment:
#   ACME_ESI_VENV  where the venv lives (default ~/.cache/acme-test/esi-acme)
#   PYTHON         the interpreter the venv is made from (default python3)
set -euo pipefail

ESI_VERSION=2026.6.2
VENV=${ACME_ESI_VENV:-$HOME/.cache/acme-test/esi-acme}
log() { printf '[esi_acme_env] %s\n' "$*"; }
die() { printf '[esi_acme_env] ERROR: %s\n' "$*" >&2; exit 1; }

has_esi_acme() {
    # Run outside any checkout of ours: from there `import acme` could find our tree.
    [ -x "$VENV/bin/python" ] && (cd / && "$VENV/bin/python" -I - "$ESI_VERSION" <<'PYEOF'
import sys
from importlib import metadata
try:
    ok = metadata.version("esi-acme") == sys.argv[1]
    import acme, h5py, numpy  # noqa: F401  (the venv imports, not just lists them)
except Exception:
    ok = False
sys.exit(0 if ok else 1)
PYEOF
    ) >/dev/null 2>&1
}

if has_esi_acme; then
    log "venv: $VENV already has esi-acme $ESI_VERSION, skipping"
else
    start=$SECONDS
    log "venv: creating $VENV with esi-acme==$ESI_VERSION h5py numpy from PyPI (about a minute)"
    "${PYTHON:-python3}" -m venv "$VENV"
    PIP_ROOT_USER_ACTION=ignore "$VENV/bin/python" -m pip --disable-pip-version-check \
        --no-input install -q "esi-acme==$ESI_VERSION" h5py numpy </dev/null
    has_esi_acme || die "$VENV was built but does not import esi-acme $ESI_VERSION"
    log "venv: done in $((SECONDS - start)) s"
fi

# The SLURM stubs (rewritten each time: cheap, and a stale folder cannot linger).
mkdir -p "$VENV/nosl"
for cmd in sinfo squeue srun sbatch scancel scontrol sacct salloc; do
    printf '#!/bin/sh\n# esi-acme must not see SLURM here (scripts/esi_acme_env.sh)\nexit 127\n' \
        > "$VENV/nosl/$cmd"
    chmod 755 "$VENV/nosl/$cmd"
done
log "stubs: $VENV/nosl (put it first on PATH when running esi-acme)"
