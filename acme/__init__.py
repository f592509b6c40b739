"""acme: run one function many times in parallel and keep every result safe on disk."""
from .clusters import (cluster_cleanup, esi_cluster_setup, local_cluster_setup,
                       slurm_cluster_setup)
from .errors import ParallelMapError, RemoteTraceback, WorkerDied, CallTimeout
from .inputs import ArgumentMismatchError
from .parallel_map import ParallelMap
from .readers import MissingResultError, find_container, load_call, load_stacked
from .result_spec import ResultShapeError

__version__ = "0.1.0"

__all__ = ["ParallelMap", "ParallelMapError", "RemoteTraceback", "WorkerDied",
           "CallTimeout", "ArgumentMismatchError", "ResultShapeError", "MissingResultError", "find_container", "load_call",
           "load_stacked", "local_cluster_setup", "slurm_cluster_setup",
           "esi_cluster_setup", "cluster_cleanup", "__version__"]
