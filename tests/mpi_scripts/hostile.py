"""Scripts for the hostile-input tests under MPI (issue 6).

usage: hostile.py single_file_dtype DTYPE OUTDIR

Three calls stacked into one parallel-HDF5 file (single_file=True, result_shape) of
result_dtype DTYPE; prints the stacked values read back.
"""
import json
import sys

import numpy as np

import acme
from acme import ParallelMap


def filled(x, dtype):
    return np.full(2, x + 1, dtype=dtype)


def main(case, dtype, outdir):
    if case == "single_file_dtype":
        with ParallelMap(filled, [0, 1, 2], dtype, output_dir=outdir, single_file=True,
                         result_shape=(None, 2), result_dtype=dtype) as pmap:
            pmap.compute()
        values = acme.load_stacked(outdir)
        print("STACKED " + json.dumps({"dtype": values.dtype.str,
                                       "values": [[str(v) for v in row] for row in values]}))


if __name__ == "__main__":
    main(*sys.argv[1:])
