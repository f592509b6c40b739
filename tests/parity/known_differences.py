"""Differences from esi-acme 2026.6.2 that the parity suite accepts, each with its reason.

An entry covers the differences whose case, path and field match its ``case``, ``path``
and ``field`` (shell patterns, as in :mod:`fnmatch`; see tests/parity/compare.py for
what paths and fields are). tests/test_esi_parity.py fails on any difference no entry
covers, and on any entry that covers no difference (so this list cannot go stale).
Only differences where esi-acme is wrong (its known defects, ../shared/DESIGN.md §2) or
where acme deliberately adds to the layout belong here; the README's "differences from
esi-acme" says the same to users.
"""
from __future__ import annotations

# ---------------------------------------------------------------- esi-acme's defects
_SHAPES_UNCHECKED = (
    "esi-acme does not check a call's return value against result_shape: it writes a "
    "container whose virtual dataset does not match its sources. acme refuses such a call "
    "with a ResultShapeError that names it, and writes no container for it.")
_ROW_ARRAY = (
    "esi-acme gives every call the whole (1, N) array instead of one element per call; "
    "acme squeezes it and splits it into N elements, as it does for a 1-D array.")
_EMPTY = (
    "acme refuses empty inputs (no calls to make) with a ValueError before anything starts; "
    "esi-acme starts its workers and returns an empty list.")
_MANGLED = (
    "esi-acme names a fallback pickle with file_name.rstrip('.h5'), which also strips the "
    "call index's trailing 5s: call 5 becomes f_.pickle (call 15 would become f_1.pickle, "
    "call 1's name). acme writes f_5.pickle.")
_LOSSY_CAST = (
    "A result_dtype that would lose information (floats with fractions stored as int32) is "
    "refused with an error naming the call; esi-acme silently truncates (0.25 becomes 0). "
    "Casts that lose nothing (whole-number floats) are made, as in esi-acme.")
_TASK_ID = (
    "acme passes taskID to a function that has the parameter in every mode and still "
    "collects the return values in memory; esi-acme drops taskID when it writes results (the "
    "function sees its default) and returns None from compute() in memory.")
_KW_DEFAULT = (
    "A list keyword whose default is a list or tuple of the same length is one value for "
    "every call in acme; esi-acme splits it, so each call silently gets one element of a "
    "vector whose length happens to equal the number of calls.")
_SINGLE_FALLBACK = (
    "With single_file=True and values HDF5 cannot hold (dict, None, objects), esi-acme fails "
    "every call and keeps nothing; acme pickles each value to f_i.pickle next to the file, so "
    "nothing computed is lost.")
# ---------------------------------------------------------------- acme's deliberate choices
_NAN_FILL = (
    "Stacked float results (result_shape) use NaN as fill value, so the row of a failed or "
    "missing call (and the padding of an np.inf axis) reads as NaN through plain h5py, not as "
    "valid-looking zeros; esi-acme uses 0.")
_RELATIVE_VDS = (
    "The virtual dataset names its source files relative to the container, so a results "
    "folder can be moved or copied and still read; esi-acme stores absolute paths.")
_ATTRS = (
    "acme adds the attributes acme_n_calls and acme_missing_calls to the container (and "
    "acme_stack_axis to a single file's stacked dataset): its readers use them to refuse "
    "incomplete results. Readers written for esi-acme ignore them.")
_FALLBACK_KEPT = (
    "When some values must be pickled (dict, None, objects), acme writes esi-acme's "
    "f_i.pickle next to the container but keeps the container (its comp_i of a pickled call "
    "dangles) and the calls stored in HDF5 in f_payload/. esi-acme deletes the container and "
    "moves every call's file up into the output folder: the HDF5 results lose their one-file "
    "access, and files moved after the run no longer match the run's record, which resume "
    "and acme's readers rely on. compute() returns every call's file in both.")
_DEFAULT_DIR = (
    "Without output_dir, acme makes ACME_<time> in the current directory; esi-acme (off its "
    "own clusters) makes it next to the function's source file, which may be a read-only or "
    "shared code folder, an installed package or a notebook's temporary cell file.")

KNOWN: list[dict[str, str]] = [
    {"case": "shape_mismatch", "path": "<return>", "field": "*", "reason": _SHAPES_UNCHECKED},
    {"case": "shape_mismatch", "path": "out/*", "field": "exists", "reason": _SHAPES_UNCHECKED},
    {"case": "split_1xN_array", "path": "<return>", "field": "value", "reason": _ROW_ARRAY},
    {"case": "empty_input", "path": "<return>", "field": "*", "reason": _EMPTY},
    {"case": "fallback_six_calls", "path": "out/gives_dict_.pickle", "field": "exists",
     "reason": _MANGLED},
    {"case": "fallback_six_calls", "path": "out/gives_dict_5.pickle", "field": "exists",
     "reason": _MANGLED},
    {"case": "fallback_six_calls", "path": "<return>", "field": "value", "reason": _MANGLED},
    {"case": "*_shape_dtype", "path": "<return>", "field": "*", "reason": _LOSSY_CAST},
    {"case": "shape_dtype_int32", "path": "<return>", "field": "*", "reason": _LOSSY_CAST},
    {"case": "*shape_dtype*", "path": "out/row3_mixed*", "field": "exists",
     "reason": _LOSSY_CAST},
    {"case": "task_id", "path": "out/with_task_id_payload/*.h5:/result_0", "field": "values",
     "reason": _TASK_ID},
    {"case": "task_id_memory", "path": "<return>", "field": "value", "reason": _TASK_ID},
    {"case": "kw_default_*list_kept", "path": "<return>", "field": "value",
     "reason": _KW_DEFAULT},
    {"case": "single_fallback_dict", "path": "<return>", "field": "*",
     "reason": _SINGLE_FALLBACK},
    {"case": "single_fallback_dict", "path": "out/gives_dict_*.pickle", "field": "exists",
     "reason": _SINGLE_FALLBACK},
    {"case": "*", "path": "*.h5:/result_0", "field": "fillvalue", "reason": _NAN_FILL},
    {"case": "shape_inf_axis", "path": "out/ragged.h5:/result_0", "field": "values",
     "reason": _NAN_FILL},
    {"case": "fail_shape", "path": "out/*.h5:/result_0", "field": "values", "reason": _NAN_FILL},
    {"case": "*", "path": "out/*.h5:/result_0", "field": "sources", "reason": _RELATIVE_VDS},
    {"case": "*", "path": "*.h5:/", "field": "attrs", "reason": _ATTRS},
    {"case": "single_shape*", "path": "out/*.h5:/result_0", "field": "attrs", "reason": _ATTRS},
    {"case": "fallback_*", "path": "<return>", "field": "results_container",
     "reason": _FALLBACK_KEPT},
    {"case": "fallback_one_call", "path": "<return>", "field": "value",
     "reason": _FALLBACK_KEPT},
    {"case": "fallback_*", "path": "out/*.h5*", "field": "exists", "reason": _FALLBACK_KEPT},
    {"case": "fallback_*", "path": "out/*_payload", "field": "exists",
     "reason": _FALLBACK_KEPT},
    {"case": "single_shape_dtype", "path": "out/row3_mixed.h5:/result_0", "field": "values",
     "reason": _LOSSY_CAST},
    {"case": "default_output_dir", "path": "<return>", "field": "auto_folder_in",
     "reason": _DEFAULT_DIR},
]
