"""acme: run one function many times in parallel and keep every result safe on disk."""
from pathlib import Path as _Path

from ._checkout import map_checkout_backends as _map_checkout_backends
from ._install_guard import refuse_mixed_tree as _refuse_mixed_tree

# Before anything else: refuse a folder that esi-acme's files are mixed into, and in a
# source checkout make acme.backends the checkout's backends/ (an install maps it).
_refuse_mixed_tree(str(_Path(__file__).resolve().parent))
_map_checkout_backends(_Path(__file__).resolve().parent)
del _Path, _map_checkout_backends, _refuse_mixed_tree

from .clusters import (bic_cluster_setup, cluster_cleanup, esi_cluster_setup,
                       local_cluster_setup, slurm_cluster_setup)
from .errors import ParallelMapError, RemoteTraceback, WorkerDied, CallTimeout
from .inputs import ArgumentMismatchError
from .parallel_map import ParallelMap
from .readers import MissingResultError, find_container, load_call, load_stacked
from .result_spec import ResultShapeError

__version__ = "0.1.0"

__all__ = ["ParallelMap", "ParallelMapError", "RemoteTraceback", "WorkerDied",
           "CallTimeout", "ArgumentMismatchError", "ResultShapeError", "MissingResultError",
           "find_container", "load_call", "load_stacked", "local_cluster_setup",
           "slurm_cluster_setup", "esi_cluster_setup", "bic_cluster_setup",
           "cluster_cleanup", "__version__"]
