"""tests/mpi_scripts/modes.py submitted with the slurm backend, on 3 worker ranks.

usage: modes_on_slurm.py MODE OUTDIR SUMMARY.pkl
"""
import sys

import modes

if __name__ == "__main__":
    mode, outdir, summary = sys.argv[1:4]
    func, options = modes.MODES[mode]
    modes.MODES[mode] = (func, dict(options, n_workers=3))
    modes.main(mode, outdir, summary, "slurm")
